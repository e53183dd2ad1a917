"""``mlpes.xtb``: generated inputs, bad input rejected before submission, and real NH3 labelling through ``run``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from aiida.common.datastructures import CodeRunMode
from aiida.common.folders import SandboxFolder
from aiida.engine import run_get_node
from ase.build import molecule

from aiida_mlpes.calculations.xtb import XtbCalculation
from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.core.reference import common
from aiida_mlpes.core.reference.xtb import run_xtb
from aiida_mlpes.data.dataset import PESDataset

XTB = shutil.which("xtb")
needs_xtb = pytest.mark.usefixtures("require_xtb")  # fails loudly if xtb is missing
OPTIONS = {"environment_variables": {"OMP_NUM_THREADS": "1"}, "withmpi": False}


def nh3_arrays(n: int = 4, seed: int = 0, scale: float = 0.05) -> RaggedArrays:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        atoms = molecule("NH3")
        atoms.positions += rng.normal(scale=scale, size=atoms.positions.shape)
        images.append(atoms)
    return RaggedArrays.from_atoms(images)


@pytest.fixture
def xtb_code(aiida_code_installed):
    return aiida_code_installed(
        filepath_executable=str(Path(XTB or "/usr/bin/xtb").resolve()), default_calc_job_plugin="mlpes.xtb"
    )


def test_prepare_for_submission(xtb_code):
    dataset = PESDataset.from_arrays(nh3_arrays(3)).store()
    builder = XtbCalculation.get_builder()
    builder.code = xtb_code
    builder.structures = dataset
    builder.indices = orm.List([2, 0])
    builder.charge = orm.Int(1)
    builder.multiplicity = orm.Int(2)
    builder.parameters = orm.Dict({"method": "GFN2-xTB", "accuracy": 0.5, "scf_fix_level": 1})
    process = XtbCalculation(inputs=dict(builder._inputs(prune=True)))
    with SandboxFolder() as folder:
        calcinfo = process.prepare_for_submission(folder)
        names = sorted(folder.get_content_list())
        xyz = Path(folder.get_abs_path("s00000.xyz")).read_text().splitlines()
    assert names == ["s00000.xyz", "s00001.xyz", "structures.xyz"]
    # the per-structure files are not stored twice: one multi-frame structures.xyz is kept for provenance
    assert calcinfo.provenance_exclude_list == ["s00000.xyz", "s00001.xyz"]
    # structure k=0 of the job is conformation 2 of the dataset
    assert xyz[0] == "4" and xyz[1] == "aiida-mlpes structure 2"
    np.testing.assert_allclose([float(x) for x in xyz[2].split()[1:]], nh3_arrays(3).positions[8], atol=1e-11)
    assert calcinfo.codes_run_mode == CodeRunMode.SERIAL and len(calcinfo.codes_info) == 2
    info = calcinfo.codes_info[1]
    args = info.cmdline_params
    assert args[0] == "s00001.xyz" and args[args.index("--namespace") + 1] == "s00001"
    assert args[args.index("--chrg") + 1] == "1" and args[args.index("--uhf") + 1] == "1"
    assert args[args.index("--iterations") + 1] == "1000" and args[args.index("--acc") + 1] == "0.5"
    assert (info.stdout_name, info.stderr_name) == ("s00001.out", "s00001.err")
    assert "s*.gradient" in calcinfo.retrieve_temporary_list and calcinfo.retrieve_list == []


def _launch(code, structures, **kwargs):
    inputs = {"code": code, "structures": structures, "metadata": {"options": OPTIONS}}
    inputs.update(kwargs)
    return run_get_node(XtbCalculation, **inputs)


@pytest.mark.parametrize(
    ("mutate", "kwargs", "message"),
    [
        (
            lambda a: a.positions.__setitem__(5, a.positions[4] + 0.2),
            {},
            "conformation 1: atoms 0 \\(N\\) and 1",
        ),
        (lambda a: a.atomic_numbers.__setitem__(0, 92), {}, "Z <= 86"),
        (lambda a: None, {"multiplicity": 2}, "10 electrons \\(even\\), which does not fit multiplicity 2"),
        (lambda a: None, {"charge": 1}, "9 electrons \\(odd\\)"),
        (lambda a: None, {"parameters": {"method": "GFN9-xTB"}}, "method 'GFN9-xTB' is unknown"),
        (lambda a: None, {"parameters": {"solvent": "water; rm -rf ~"}}, "solvent"),
        (lambda a: None, {"parameters": {"bogus": 1}}, "unknown xtb parameters"),
        (lambda a: None, {"indices": [0, 7]}, "not valid conformation numbers"),
    ],
)
def test_bad_input_rejected_before_submission(xtb_code, mutate, kwargs, message):
    arrays = nh3_arrays(2)
    mutate(arrays)
    dataset = PESDataset.from_arrays(arrays)
    with pytest.raises(ValueError, match=message):
        _launch(xtb_code, dataset, **kwargs)


def test_unknown_element_rejected_before_submission(xtb_code):
    """A dataset cannot even hold an unknown element; a trajectory with a dummy atom 'X' is rejected."""
    trajectory = orm.TrajectoryData()
    trajectory.set_trajectory(
        symbols=["X", "H", "H", "H"], positions=nh3_arrays(2).positions.reshape(2, 4, 3)
    )
    with pytest.raises(ValueError, match="atom 0 has atomic number 0, not a known element"):
        _launch(xtb_code, trajectory)


@needs_xtb
def test_real_xtb_labels_nh3_like_direct_runs(xtb_code):
    """End to end through the engine: 4 NH3 structures in one job, checked against xtb run directly."""
    arrays = nh3_arrays(4)
    dataset = PESDataset.from_arrays(arrays).store()
    results, node = _launch(xtb_code, dataset)
    assert node.is_finished_ok, node.exit_message
    assert results["failures"].get_dict() == {}
    labelled = results["dataset"].get_arrays()
    assert len(labelled) == 4
    assert results["dataset"].level_of_theory == "GFN2-xTB"
    assert set(labelled.source) == {node.uuid}
    np.testing.assert_allclose(labelled.positions, arrays.positions)
    for i in range(4):
        sl = arrays.atom_slice(i)
        direct = run_xtb(arrays.atomic_numbers[sl], arrays.positions[sl])
        assert labelled.energy[i] == pytest.approx(direct.energy, abs=1e-8)
        np.testing.assert_allclose(labelled.forces[sl], direct.forces, atol=1e-8)
        np.testing.assert_allclose(labelled.dipole[i], direct.dipole, atol=1e-8)
        np.testing.assert_allclose(labelled.atomic_charges[sl], direct.atomic_charges, atol=1e-8)
    assert labelled.charge.tolist() == [0.0] * 4
    # raw outputs are parsed from the temporary folder, not stored twice
    assert not [n for n in node.outputs.retrieved.base.repository.list_object_names() if n.startswith("s0")]


@needs_xtb
def test_structure_and_trajectory_inputs(xtb_code):
    atoms = molecule("NH3")
    results, node = _launch(xtb_code, orm.StructureData(ase=atoms), keep_raw_outputs=True)
    assert node.is_finished_ok, node.exit_message
    assert "s00000.out" in node.outputs.retrieved.base.repository.list_object_names()
    single = results["dataset"].get_arrays()
    arrays = nh3_arrays(3, seed=2)
    trajectory = orm.TrajectoryData()
    trajectory.set_trajectory(symbols=["N", "H", "H", "H"], positions=arrays.positions.reshape(3, 4, 3))
    results, node = _launch(xtb_code, trajectory, indices=[2, 1])
    assert node.is_finished_ok, node.exit_message
    labelled = results["dataset"].get_arrays()
    np.testing.assert_allclose(labelled.positions, arrays.select([2, 1]).positions)
    assert single.energy[0] < labelled.energy.min() + 1.0  # the unperturbed geometry is near the minimum


@needs_xtb
def test_per_structure_failures_do_not_fail_the_job(xtb_code):
    """Overlapping atoms let through (min_distance=0): xtb refuses structure 1 (two atoms on one spot) and
    gives a blown-up gradient for structure 2 (0.05 Angstrom apart); the others are labelled, exit 0."""
    arrays = nh3_arrays(4)
    arrays.positions[5] = arrays.positions[4]
    arrays.positions[9] = arrays.positions[8] + [0.05, 0.0, 0.0]
    results, node = _launch(xtb_code, PESDataset.from_arrays(arrays), min_distance=0.0)
    assert node.is_finished_ok, node.exit_message
    failures = results["failures"].get_dict()
    assert sorted(failures) == ["1", "2"]
    assert failures["1"]["category"] == failures["2"]["category"] == common.UNPHYSICAL
    assert "short distance" in failures["1"]["message"]
    assert "gradient component" in failures["2"]["message"]
    np.testing.assert_allclose(results["dataset"].get_arrays().positions, arrays.select([0, 3]).positions)


@needs_xtb
def test_all_structures_fail_gives_category_exit_code(xtb_code):
    """Two SCC iterations never converge: every structure fails -> exit 410 (recoverable), no dataset."""
    results, node = _launch(xtb_code, PESDataset.from_arrays(nh3_arrays(2)), parameters={"iterations": 2})
    assert node.exit_status == XtbCalculation.exit_codes.ERROR_SCF_NOT_CONVERGED.status == 410
    assert "dataset" not in results
    assert {f["category"] for f in results["failures"].get_dict().values()} == {common.SCF_NOT_CONVERGED}
