"""``mlpes.orca`` end to end with a stand-in ``orca`` that replays real ORCA outputs from shared/realdata."""

from __future__ import annotations

import json

import numpy as np
import pytest
from aiida.engine import run_get_node

from aiida_mlpes.calculations.orca import OrcaCalculation
from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.core.reference import common
from aiida_mlpes.core.reference.orca import parse_orca_output
from aiida_mlpes.core.units import BOHR, HARTREE
from aiida_mlpes.data.dataset import PESDataset
from tests.data.stand_ins import install_stand_in

GRAD = HARTREE / BOHR
H2 = ([1, 1], [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # geometry of autode's h2_grad_orca.inp
H2O2 = ([1, 8, 8, 1], [[0.0, -1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 1.0]])  # test_orca.log


def arrays_of(*molecules) -> RaggedArrays:
    return RaggedArrays(
        n_atoms=[len(z) for z, _ in molecules],
        atomic_numbers=np.concatenate([z for z, _ in molecules]),
        positions=np.concatenate([p for _, p in molecules]),
    )


@pytest.fixture
def replay(realdata, tmp_path, aiida_code_installed):
    """Stand-in orca + a function writing its replay configuration."""
    stand_in = install_stand_in("replay.py", tmp_path)
    code = aiida_code_installed(filepath_executable=str(stand_in), default_calc_job_plugin="mlpes.orca")
    (tmp_path / "inputs").mkdir()

    def configure(outputs: dict[int, str], truncate=()):
        config = {
            "outputs": {str(k): str(realdata / "orca" / v) for k, v in outputs.items()},
            "truncate": list(truncate),
            "inputs_dir": str(tmp_path / "inputs"),
        }
        (tmp_path / "config.json").write_text(json.dumps(config))
        return {"environment_variables": {"MLPES_STANDIN_CONFIG": str(tmp_path / "config.json")}}

    return code, configure, tmp_path / "inputs"


def test_orca_batch_replays_real_outputs(replay, realdata):
    """Two real successes (H2 EnGrad ORCA 4.2.1, H2O2 ORCA 4.0) and four real failures in one job."""
    code, configure, _inputs_dir = replay
    options = configure(
        {
            0: "autode_orca4/h2_grad_orca.out",
            1: "schnetpack_orca4.0/test_orca.log",
            2: "arc_failed/orca_GTOInt_error.log",
            3: "nomad_orca3.0/FeMgO_ci_orca3.2713636.out",
            4: "arc_orca/orca_scf_blow_up_error.log",
            5: "autode_orca4/h2_grad_orca.out",
        },
        truncate=[5],
    )
    structures = PESDataset.from_arrays(arrays_of(H2, H2O2, H2, H2O2, H2, H2))
    results, node = run_get_node(
        OrcaCalculation,
        code=code,
        structures=structures,
        parameters={"charge_scheme": "mulliken"},
        metadata={"options": options},
    )
    assert node.is_finished_ok, node.exit_message
    failures = results["failures"].get_dict()
    assert {k: v["category"] for k, v in failures.items()} == {
        "2": common.ERROR,
        "3": common.SCF_NOT_CONVERGED,
        "4": common.UNPHYSICAL,
        "5": common.WALLTIME,
    }
    assert "GTOInt" in failures["2"]["message"]

    labelled = results["dataset"].get_arrays()
    assert results["dataset"].level_of_theory == "RI PBE D3BJ def2-SVP def2/J"
    assert len(labelled) == 2 and set(labelled.source) == {node.uuid}
    # MANIFEST numbers: energies to 1e-9 Eh, gradient rows, norms
    np.testing.assert_allclose(labelled.energy / HARTREE, [-1.139851613272, -151.102023737985], atol=1e-9)
    h2, h2o2 = labelled.forces[:2] / GRAD, labelled.forces[2:] / GRAD
    np.testing.assert_allclose(-h2, [[-0.085347768, 0.0, 0.0], [0.085347768, 0.0, 0.0]], atol=1e-9)
    assert np.linalg.norm(h2) == pytest.approx(0.1206999711, abs=1e-9)
    np.testing.assert_allclose(-h2o2[0], [0.123759454, 0.020942186, 0.007322938], atol=1e-9)
    assert np.linalg.norm(h2o2) == pytest.approx(1.5401440846, abs=1e-9)
    np.testing.assert_allclose(labelled.dipole[1] / BOHR, [0.0, -0.52901, 0.52901], atol=1e-9)
    np.testing.assert_allclose(labelled.atomic_charges[2:], [0.255336, -0.255336, -0.255337, 0.255336])


def test_generated_inputs_are_what_orca_reads(replay, realdata):
    """The input the stand-in received has the layout of the real h2_grad_orca.inp, keywords, charge,
    multiplicity, SCF-fix settings and the exact coordinates."""
    code, configure, inputs_dir = replay
    options = configure({0: "autode_orca4/h2_grad_orca.out"})
    parameters = {
        "keywords": "EnGrad PBE0 RIJCOSX D3BJ def2-SVP AutoAux",
        "nprocs": 4,
        "maxcore": 4000,
        "scf_fix_level": 2,
    }
    results, node = run_get_node(
        OrcaCalculation,
        code=code,
        structures=PESDataset.from_arrays(arrays_of(H2)),
        parameters=parameters,
        metadata={"options": options},
    )
    assert node.is_finished_ok, node.exit_message
    text = (inputs_dir / "s00000.inp").read_text()
    real = (realdata / "orca/autode_orca4/h2_grad_orca.inp").read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "! EnGrad PBE0 RIJCOSX D3BJ def2-SVP AutoAux VerySlowConv"
    assert real.splitlines()[0].startswith("! EnGrad PBE0 RIJCOSX D3BJ def2-SVP AutoAux")
    assert "%pal nprocs 4 end" in lines and "%maxcore 4000" in lines
    scf = lines[lines.index("%scf") + 1 : lines.index("end", lines.index("%scf"))]
    assert {"MaxIter 1500", "DIISMaxEq 15", "directresetfreq 1"} == {s.strip() for s in scf}
    start = next(i for i, ln in enumerate(lines) if ln.replace(" ", "").startswith("*xyz"))
    assert lines[start].split() == ["*", "xyz", "0", "1"] and lines[-1] == "*"
    real_atoms = [ln.split() for ln in real.splitlines()[-3:-1]]
    atoms = [ln.split() for ln in lines[start + 1 : -1]]
    assert [a[0] for a in atoms] == [a[0] for a in real_atoms] == ["H", "H"]
    np.testing.assert_allclose(
        [[float(x) for x in a[1:]] for a in atoms],
        [[float(x) for x in a[1:]] for a in real_atoms],
        atol=1e-12,
    )
    # the level of theory ignores the SCF convergence aids
    assert results["dataset"].level_of_theory == "PBE0 RIJCOSX D3BJ def2-SVP AutoAux"


def test_orca_all_failed_and_wrong_geometry(replay):
    """Every structure unconverged -> exit 410; an output for another geometry is not accepted."""
    code, configure, _ = replay
    options = configure(
        {
            0: "nomad_orca3.0/FeMgO_ci_orca3.2713636.out",
            1: "arc_failed/orca_wavefunction_not_converge_error.log",
        }
    )
    _, node = run_get_node(
        OrcaCalculation,
        code=code,
        structures=PESDataset.from_arrays(arrays_of(H2, H2)),
        metadata={"options": options},
    )
    assert node.exit_status == OrcaCalculation.exit_codes.ERROR_SCF_NOT_CONVERGED.status
    shifted = ([1, 1], [[0.0, 0.0, 0.0], [1.2, 0.0, 0.0]])
    options = configure({0: "autode_orca4/h2_grad_orca.out"})
    results, node = run_get_node(
        OrcaCalculation,
        code=code,
        structures=PESDataset.from_arrays(arrays_of(shifted)),
        metadata={"options": options},
    )
    assert node.exit_status == OrcaCalculation.exit_codes.ERROR_PROGRAM_FAILED.status
    assert "differs from the input by 0.2" in results["failures"]["0"]["message"]


def test_bad_orca_parameters_rejected(replay):
    code, _configure, _ = replay
    for parameters, message in [
        ({"keywords": "PBE\n* xyz 0 1"}, "one line"),
        ({"charge_scheme": "bader"}, "charge_scheme"),
        ({"blocks": {"scf": {"MaxIter": "1; rm"}}}, "plain word"),
    ]:
        with pytest.raises(ValueError, match=message):
            run_get_node(
                OrcaCalculation,
                code=code,
                structures=PESDataset.from_arrays(arrays_of(H2)),
                parameters=parameters,
            )


def test_parsed_values_equal_pure_parser(realdata):
    """The CalcJob parser uses the same pure functions: sanity check of the shared numbers."""
    r = parse_orca_output((realdata / "orca/autode_orca4/h2_grad_orca.out").read_text())
    assert r.energy / HARTREE == pytest.approx(-1.139851613272, abs=1e-12)
