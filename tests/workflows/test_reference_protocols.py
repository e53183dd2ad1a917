"""Protocols of ReferenceWorkChain and the aiida-shell ``xtb --hess`` reference frequencies."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from ase.build import molecule

from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.core.reference.xtb import parse_vibspectrum
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.workflows.reference import ReferenceWorkChain, run_xtb_frequencies

XTB = shutil.which("xtb")


@pytest.fixture
def dataset():
    return PESDataset.from_arrays(RaggedArrays.from_atoms([molecule("NH3")]))


@pytest.mark.parametrize(
    ("plugin", "key", "value"),
    [
        ("mlpes.xtb", "method", "GFN2-xTB"),
        ("mlpes.orca", "keywords", "RI PBE D3BJ def2-SVP def2/J EnGrad"),
        ("mlpes.gaussian", "route", "PBEPBE/Def2SVP/W06 EmpiricalDispersion=GD3BJ Int=UltraFine"),
        ("mlpes.ase", "calculator", "tblite"),
    ],
)
def test_default_protocol_per_program(aiida_code_installed, dataset, plugin, key, value):
    code = aiida_code_installed(filepath_executable="/bin/true", default_calc_job_plugin=plugin)
    builder = ReferenceWorkChain.get_builder_from_protocol(code, dataset)
    assert builder.parameters[key] == value
    assert builder.code.uuid == code.uuid and builder.structures.uuid == dataset.uuid
    assert builder.options["resources"] == {"num_machines": 1, "num_mpiprocs_per_machine": 1}
    assert builder.max_structure_retries.value == 2


def test_protocols_overrides_and_options(aiida_code_installed, dataset):
    code = aiida_code_installed(filepath_executable="/bin/true", default_calc_job_plugin="mlpes.xtb")
    assert set(ReferenceWorkChain.get_available_protocols("xtb")) == {"fast", "moderate", "precise"}
    assert all(p["description"] for p in ReferenceWorkChain.get_available_protocols("orca").values())
    builder = ReferenceWorkChain.get_builder_from_protocol(
        code,
        dataset,
        protocol="precise",
        overrides={"parameters": {"solvent": "water"}, "batch_size": 7},
        options={"max_wallclock_seconds": 60, "environment_variables": {"OMP_NUM_THREADS": "2"}},
        charge=1,
        multiplicity=2,
    )
    assert builder.parameters.get_dict() == {"method": "GFN2-xTB", "accuracy": 0.1, "solvent": "water"}
    assert builder.batch_size.value == 7 and builder.charge.value == 1 and builder.multiplicity.value == 2
    assert builder.options["max_wallclock_seconds"] == 60
    assert builder.options["environment_variables"] == {"OMP_NUM_THREADS": "2", "OMP_STACKSIZE": "1G"}
    with pytest.raises(ValueError, match="protocol 'ultra' unknown"):
        ReferenceWorkChain.get_builder_from_protocol(code, dataset, protocol="ultra")


def test_every_protocol_passes_the_calcjob_validation(aiida_code_installed, dataset):
    """All protocol parameters are accepted by the CalcJobs' own checks (keywords, routes, settings)."""
    from aiida.plugins import CalculationFactory

    for program in ("xtb", "orca", "gaussian", "ase"):
        cls = CalculationFactory(f"mlpes.{program}")
        for protocol in ReferenceWorkChain.get_available_protocols(program):
            parameters = ReferenceWorkChain.get_protocol_inputs(program, protocol)["parameters"]
            cls.check_parameters(parameters)
            for level in (1, 2):
                cls.check_parameters(cls.apply_scf_fix(parameters, level))
            assert cls.level_of_theory(cls.apply_scf_fix(parameters, 2)) == cls.level_of_theory(parameters)


def test_unknown_code_plugin(aiida_code_installed, dataset):
    code = aiida_code_installed(
        filepath_executable="/bin/true", default_calc_job_plugin="core.arithmetic.add"
    )
    with pytest.raises(ValueError, match="default_calc_job_plugin"):
        ReferenceWorkChain.get_builder_from_protocol(code, dataset)


VIBSPECTRUM = """$vibrational spectrum
#  mode     symmetry     wave number   IR intensity    selection rules
#                         cm**(-1)      (km*mol⁻¹)       IR     RAMAN
     1                      -0.00         0.00000        -       -
     2                       0.00         0.00000        -       -
     3        a           1355.57       165.59999       YES     YES
     4        a          -120.10         1.00000       YES     YES
$end
"""


def test_parse_vibspectrum():
    np.testing.assert_allclose(parse_vibspectrum(VIBSPECTRUM), [0.0, 0.0, 1355.57, -120.10])


@pytest.mark.usefixtures("require_xtb")
def test_xtb_hess_through_aiida_shell(aiida_localhost):
    """xtb --hess on NH3 as a ShellJob: 6 zero modes, umbrella, bends and N-H stretches where GFN2 puts them."""
    code = orm.InstalledCode(
        computer=aiida_localhost,
        filepath_executable=str(Path(XTB).resolve()),
        default_calc_job_plugin="core.shell",
    ).store()
    frequencies, node = run_xtb_frequencies(code, orm.StructureData(ase=molecule("NH3")))
    assert node.is_finished_ok
    nu = np.sort(frequencies.get_array("frequencies"))
    assert nu.shape == (12,)
    np.testing.assert_allclose(nu[:6], 0.0, atol=1.0)
    assert 800 < nu[6] < 1400 and 1500 < nu[7] <= nu[8] < 1800 and 3100 < nu[9] < 3700
    with pytest.raises(ValueError, match="multiplicity 2"):
        run_xtb_frequencies(code, orm.StructureData(ase=molecule("NH3")), multiplicity=2)


def test_pbe_d3bj_protocol_is_pyscf_with_d3(aiida_code_installed, dataset):
    """The paper's level with free software: PySCF PBE/def2-SVP (RI-J) plus D3(BJ), labelled as such."""
    from aiida_mlpes.core.reference.ase_driver import make_calculator

    code = aiida_code_installed(default_calc_job_plugin="mlpes.ase", filepath_executable="/bin/true")
    builder = ReferenceWorkChain.get_builder_from_protocol(code, dataset, protocol="pbe-d3bj")
    parameters = builder.parameters.get_dict()
    assert parameters["calculator"] == "pyscf" and parameters["dispersion"] == "d3bj"
    assert parameters["method"] == "PBE" and parameters["basis"] == "def2-svp" and parameters["density_fit"]
    from aiida.plugins import CalculationFactory

    assert CalculationFactory("mlpes.ase").level_of_theory(parameters) == "PBE-D3BJ/def2-SVP"
    settings = {k: v for k, v in parameters.items() if k != "level_of_theory"}
    calc = make_calculator(settings)
    assert calc.parameters["dispersion"] == "d3bj" and "verbosity" not in calc.parameters
