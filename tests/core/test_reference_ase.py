"""PySCF calculator adapter, the ASE-calculator batch driver and the ``reference_ase`` runner task."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import molecule

from aiida_mlpes.core.dataset import read_arrays, write_dataset
from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.core.reference import common
from aiida_mlpes.core.reference.ase_driver import (
    CALCULATORS,
    classify_exception,
    label_arrays,
    make_calculator,
)
from aiida_mlpes.core.reference.pyscf_calculator import PySCFCalculator, SCFNotConvergedError
from aiida_mlpes.core.reference.task import read_progress, recover_from_progress, run_ase_label_task
from aiida_mlpes.core.runner import run_task
from aiida_mlpes.core.units import BOHR, HARTREE


@pytest.fixture
def nh3_batch() -> RaggedArrays:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(4):
        atoms = molecule("NH3")
        atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
        images.append(atoms)
    return RaggedArrays.from_atoms(images)


def test_pyscf_energy_matches_pyscf_directly():
    from pyscf import gto, scf

    atoms = molecule("NH3")
    atoms.calc = PySCFCalculator(method="HF", basis="sto-3g")
    mol = gto.M(
        atom=[(int(z), tuple(p)) for z, p in zip(atoms.numbers, atoms.positions, strict=True)],
        basis="sto-3g",
        verbose=0,
    )
    e_ref = scf.RHF(mol).kernel()
    assert atoms.get_potential_energy() == pytest.approx(e_ref * HARTREE, abs=1e-7)
    # HF/STO-3G NH3 is about -55.45 Eh
    assert atoms.get_potential_energy() / HARTREE == pytest.approx(-55.45, abs=0.05)


@pytest.mark.parametrize(("method", "basis"), [("HF", "sto-3g"), ("PBE", "sto-3g"), ("MP2", "sto-3g")])
def test_pyscf_forces_are_minus_energy_gradient(method, basis):
    """Analytic forces against a central difference of the energy (one displaced hydrogen coordinate; the
    displaced SCFs start from the converged density, which does not change the converged energy)."""
    atoms = molecule("NH3")
    atoms.positions[1] += [0.05, -0.02, 0.03]
    settings = {"method": method, "basis": basis, "grid_level": 2, "conv_tol": 1e-10}
    atoms.calc = PySCFCalculator(**settings)
    forces = atoms.get_forces()
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-3)
    h = 1e-3
    displaced = atoms.copy()
    displaced.calc = PySCFCalculator(**settings, reuse_density=True)
    energies = []
    for step in (h, -h):
        displaced.positions = atoms.positions.copy()
        displaced.positions[1, 0] += step
        energies.append(displaced.get_potential_energy())
    assert forces[1, 0] == pytest.approx(-(energies[0] - energies[1]) / (2 * h), abs=2e-3)
    assert abs(forces[1, 0]) > 0.1  # the displaced hydrogen feels a real force


def test_pyscf_dipole_charges_open_shell_and_errors():
    atoms = molecule("NH3")
    atoms.calc = PySCFCalculator(method="HF", basis="sto-3g")
    atoms.get_potential_energy()
    dipole = atoms.calc.results["dipole"]
    # NH3 dipole along the C3 axis (z in ase.build), magnitude ~0.7 D at HF/STO-3G; units e*Angstrom
    assert abs(dipole[2]) > 0.1 and np.allclose(dipole[:2], 0.0, atol=1e-4)
    assert atoms.calc.results["charges"].sum() == pytest.approx(0.0, abs=1e-6)
    cation = molecule("NH3")
    cation.info.update(charge=1, multiplicity=2)
    cation.calc = PySCFCalculator(method="HF", basis="sto-3g")
    assert cation.get_potential_energy() > atoms.get_potential_energy() + 5.0  # ionisation energy > 5 eV
    assert cation.calc.results["charges"].sum() == pytest.approx(1.0, abs=1e-6)
    bad = molecule("NH3")
    bad.calc = PySCFCalculator(method="HF", basis="sto-3g", multiplicity=2)
    with pytest.raises(ValueError, match="multiplicity 2"):
        bad.get_potential_energy()
    stubborn = molecule("NH3")
    stubborn.calc = PySCFCalculator(method="HF", basis="sto-3g", max_cycle=1, reuse_density=False)
    with pytest.raises(SCFNotConvergedError) as info:
        stubborn.get_potential_energy()
    assert classify_exception(info.value) == common.SCF_NOT_CONVERGED


def test_registry_refuses_unknown_names_and_code():
    with pytest.raises(ValueError, match=r"unknown calculator 'os\.system'"):
        make_calculator({"calculator": "os.system"})
    with pytest.raises(ValueError, match="'calculator' name"):
        make_calculator({"method": "GFN2-xTB"})
    with pytest.raises(ValueError, match="must be a string"):
        make_calculator({"calculator": "tblite", "method": {"__import__": "os"}})
    assert all(":" in target for target, *_ in CALCULATORS.values())


def test_label_with_tblite_matches_direct_calls(nh3_batch):
    from tblite.ase import TBLite

    result = label_arrays(nh3_batch, {"calculator": "tblite", "method": "GFN2-xTB", "verbosity": 0})
    assert result.indices == [0, 1, 2, 3] and not result.failures
    labelled = result.arrays
    for i in range(len(nh3_batch)):
        atoms = nh3_batch.to_atoms(i)
        atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
        assert labelled.energy[i] == pytest.approx(atoms.get_potential_energy(), abs=1e-8)
        np.testing.assert_allclose(labelled.forces[labelled.atom_slice(i)], atoms.get_forces(), atol=1e-7)
    assert labelled.dipole.shape == (4, 3) and labelled.atomic_charges.shape == (16,)
    np.testing.assert_allclose(labelled.positions, nh3_batch.positions)
    assert -4.5 < labelled.energy.mean() / HARTREE < -4.3


def test_label_reports_failures_and_keeps_the_rest(nh3_batch):
    """A structure on which the calculator raises is reported; the others are labelled."""
    nh3_batch.positions[nh3_batch.atom_slice(2)] *= 0.0  # all atoms at one point: pyscf refuses/NaN
    records = {}
    result = label_arrays(
        nh3_batch,
        {"calculator": "pyscf", "method": "HF", "basis": "sto-3g"},
        on_result=lambda i, rec: records.setdefault(i, rec),
    )
    assert result.indices == [0, 1, 3]
    assert list(result.failures) == [2] and result.failures[2]["category"] in common.CATEGORIES
    assert sorted(records) == [0, 1, 2, 3] and records[2]["status"] != common.OK
    assert len(result.arrays) == 3


def test_runner_task_writes_dataset_and_progress(nh3_batch, tmp_path):
    write_dataset(tmp_path / "structures.h5", nh3_batch)
    settings = {
        "dataset": "structures.h5",
        "indices": [3, 1],
        "calculator": {"calculator": "tblite", "method": "GFN2-xTB", "verbosity": 0},
        "charge": 0,
        "multiplicity": 1,
        "level_of_theory": "GFN2-xTB (tblite)",
    }
    (tmp_path / "input.json").write_text(json.dumps(settings))
    result = run_task("reference_ase", tmp_path / "input.json")
    assert result["status"] == "ok", result
    assert result["completed"] == [3, 1] and result["failures"] == {}
    labelled = read_arrays(tmp_path / "labelled.h5")
    np.testing.assert_allclose(labelled.positions, nh3_batch.select([3, 1]).positions)
    assert labelled.charge.tolist() == [0.0, 0.0]
    # progress survives a kill: recovering from it gives the same numbers as the final file
    assert sorted(read_progress(tmp_path / "progress.jsonl")) == [1, 3]
    recovered = recover_from_progress(tmp_path / "structures.h5", tmp_path / "progress.jsonl")
    assert recovered.indices == [1, 3]
    np.testing.assert_allclose(recovered.arrays.energy, labelled.energy[::-1], rtol=0, atol=1e-12)
    # a half-written last line (killed while writing) is ignored
    with (tmp_path / "progress.jsonl").open("a") as f:
        f.write('{"index": 0, "status": "ok", "ener')
    assert sorted(read_progress(tmp_path / "progress.jsonl")) == [1, 3]


def test_runner_task_rejects_bad_input(nh3_batch, tmp_path):
    write_dataset(tmp_path / "structures.h5", nh3_batch)
    from aiida_mlpes.core.runner import TaskError

    with pytest.raises(TaskError, match="multiplicity 2"):
        run_ase_label_task(
            {"dataset": "structures.h5", "calculator": {"calculator": "tblite"}, "multiplicity": 2}, tmp_path
        )
    with pytest.raises(TaskError, match="unknown calculator"):
        run_ase_label_task({"dataset": "structures.h5", "calculator": {"calculator": "nope"}}, tmp_path)


def test_units_bohr_hartree_sanity():
    """The conversions used by all parsers: 1 Eh/bohr = 51.42 eV/Angstrom."""
    assert pytest.approx(51.422, abs=1e-3) == HARTREE / BOHR


def test_labels_repeat_bitwise_on_a_multicore_job(tmp_path):
    """Two runs of the reference task on a job given 2 cores label bitwise alike: multithreaded tblite would
    not (its OpenMP reductions differ in the last bits from call to call), so the task runs it on one thread
    unless `threads` is set, and a seeded loop repeats."""
    import os
    import subprocess
    import sys

    pytest.importorskip("tblite")
    rng = np.random.default_rng(1)
    images = []
    for _ in range(20):
        atoms = molecule("CH3OH")
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        images.append(atoms)
    settings = {
        "dataset": "structures.h5",
        "calculator": {"calculator": "tblite", "method": "GFN2-xTB", "verbosity": 0},
        "level_of_theory": "GFN2-xTB (tblite)",
    }
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK")}
    labels = []
    for run in range(2):
        folder = tmp_path / f"run{run}"
        folder.mkdir()
        write_dataset(folder / "structures.h5", RaggedArrays.from_atoms(images))
        (folder / "input.json").write_text(json.dumps(settings))
        command = [sys.executable, "-m", "aiida_mlpes.core.runner", "reference_ase", "input.json"]
        subprocess.run(command, cwd=folder, env=env, check=True, capture_output=True, timeout=300)
        arrays = read_arrays(folder / "labelled.h5")
        labels.append(np.concatenate([arrays.energy, arrays.forces.ravel()]))
    assert labels[0].tobytes() == labels[1].tobytes()
