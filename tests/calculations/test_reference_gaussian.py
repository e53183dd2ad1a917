"""``mlpes.gaussian`` end to end with a stand-in ``g16`` that replays real Gaussian logs from shared/realdata."""

from __future__ import annotations

import json

import numpy as np
import pytest
from aiida.engine import run_get_node

from aiida_mlpes.calculations.gaussian import GaussianCalculation
from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.core.reference import common
from aiida_mlpes.core.reference.gaussian import parse_gaussian_output
from aiida_mlpes.core.units import BOHR, HARTREE
from aiida_mlpes.data.dataset import PESDataset
from tests.data.stand_ins import install_stand_in

FORCE = HARTREE / BOHR


@pytest.fixture
def dvb(realdata) -> RaggedArrays:
    """Divinylbenzene at the geometry of the real dvb_ir.out (Input orientation)."""
    r = parse_gaussian_output((realdata / "gaussian/cclib_g16/dvb_ir.out").read_text())
    return RaggedArrays(n_atoms=[20], atomic_numbers=r.numbers, positions=r.positions)


@pytest.fixture
def replay(realdata, tmp_path, aiida_code_installed):
    stand_in = install_stand_in("replay.py", tmp_path)
    code = aiida_code_installed(filepath_executable=str(stand_in), default_calc_job_plugin="mlpes.gaussian")
    (tmp_path / "inputs").mkdir()

    def configure(outputs: dict[int, str], truncate=()):
        config = {
            "outputs": {str(k): str(realdata / "gaussian" / v) for k, v in outputs.items()},
            "truncate": list(truncate),
            "inputs_dir": str(tmp_path / "inputs"),
        }
        (tmp_path / "config.json").write_text(json.dumps(config))
        return {"environment_variables": {"MLPES_STANDIN_CONFIG": str(tmp_path / "config.json")}}

    return code, configure, tmp_path / "inputs"


def test_gaussian_batch_replays_real_logs(replay, dvb, realdata):
    """One real Force run (G16 dvb_ir), three real failures and a truncated log in one job."""
    code, configure, _inputs_dir = replay
    options = configure(
        {
            0: "cclib_g16/dvb_ir.out",
            1: "arc_g16/l9999_ub3lyp_opt_error.out",
            2: "arc_g09/inaccurate_quadrature_convergence_failure.out",
            3: "cclib_g16/dvb_ir.out",
            4: "cclib_g16/water_mp2.log",
        },
        truncate=[3],
    )
    structures = PESDataset.from_arrays(RaggedArrays.concatenate([dvb] * 5))
    results, node = run_get_node(
        GaussianCalculation, code=code, structures=structures, metadata={"options": options}
    )
    assert node.is_finished_ok, node.exit_message
    failures = results["failures"].get_dict()
    assert {k: v["category"] for k, v in failures.items()} == {
        "1": common.ERROR,
        "2": common.SCF_NOT_CONVERGED,
        "3": common.WALLTIME,
        "4": common.MISSING_OUTPUT,
    }
    labelled = results["dataset"].get_arrays()
    assert len(labelled) == 1 and labelled.source[0] == node.uuid
    assert labelled.energy[0] / HARTREE == pytest.approx(-382.308266602, abs=1e-9)
    forces = labelled.forces / FORCE
    np.testing.assert_allclose(forces[0], [-0.000020974, 0.0, -0.000043825], atol=1e-12)
    assert np.abs(forces).max() == pytest.approx(0.000045163, abs=1e-9)
    assert np.sqrt(np.mean(forces**2)) == pytest.approx(0.000016087, abs=1e-9)
    np.testing.assert_allclose(labelled.dipole, 0.0, atol=1e-12)
    assert labelled.atomic_charges.sum() == pytest.approx(0.0, abs=1e-5)
    assert results["dataset"].level_of_theory == "PBEPBE/Def2SVP/W06 EmpiricalDispersion=GD3BJ"


def test_generated_input_is_what_gaussian_reads(replay, dvb, realdata):
    """The input received on stdin has the sections of the real dvb_gopt.gjf: Link0, route, title, charge and
    multiplicity, atoms, trailing blank line; plus Force NoSymm and the SCF fix."""
    code, configure, inputs_dir = replay
    options = configure({0: "cclib_g16/dvb_ir.out"})
    parameters = {"route": "B3LYP/STO-3G", "nprocs": 2, "memory": "400MB", "scf_fix_level": 1}
    _, node = run_get_node(
        GaussianCalculation,
        code=code,
        structures=PESDataset.from_arrays(dvb),
        parameters=parameters,
        metadata={"options": options},
    )
    assert node.is_finished_ok, node.exit_message
    text = (inputs_dir / "stdin_0.com").read_text()
    lines = text.split("\n")
    real = (realdata / "gaussian/cclib_g16/dvb_gopt.gjf").read_text().splitlines()
    assert lines[:2] == ["%nprocshared=2", "%mem=400MB"] and real[1] == "%mem=400MB"
    assert lines[2] == "#P B3LYP/STO-3G SCF=(XQC,MaxCycle=512) Force NoSymm"
    assert real[3].startswith("#p b3lyp/sto-3g")
    assert lines[3] == "" and lines[4] == "aiida-mlpes structure 0" and lines[5] == ""
    assert lines[6] == "0 1" == real[7]
    atoms = [ln.split() for ln in lines[7:27]]
    real_atoms = [ln.split() for ln in real[8:28]]
    assert [a[0] for a in atoms] == [a[0] for a in real_atoms]
    np.testing.assert_allclose([[float(x) for x in a[1:]] for a in atoms], dvb.positions, atol=1e-12)
    assert text.endswith("\n\n")


def test_all_structures_failed(replay, dvb):
    code, configure, _ = replay
    options = configure({0: "arc_g09/inaccurate_quadrature_convergence_failure.out"})
    results, node = run_get_node(
        GaussianCalculation, code=code, structures=PESDataset.from_arrays(dvb), metadata={"options": options}
    )
    assert node.exit_status == GaussianCalculation.exit_codes.ERROR_SCF_NOT_CONVERGED.status
    assert "dataset" not in results


def test_bad_gaussian_parameters_rejected(replay, dvb):
    code, _, _ = replay
    for parameters, message in [
        ({"route": "B3LYP\n--Link1--"}, "one line"),
        ({"memory": "2GB; rm"}, "memory"),
        ({"charge_scheme": "loewdin"}, "charge_scheme"),
    ]:
        with pytest.raises(ValueError, match=message):
            run_get_node(
                GaussianCalculation, code=code, structures=PESDataset.from_arrays(dvb), parameters=parameters
            )
