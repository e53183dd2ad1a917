"""``mlpes.ase``: any registered ASE calculator through ``aiida-mlpes-run reference_ase`` (tblite GFN2-xTB,
PySCF), checked against direct calls; recovery of finished structures after the job is killed."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.build import molecule

from aiida_mlpes.calculations.ase import AseCalculation
from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.core.reference import common
from aiida_mlpes.core.reference.ase_driver import label_arrays
from aiida_mlpes.data.dataset import PESDataset

TBLITE = {"calculator": "tblite", "method": "GFN2-xTB", "verbosity": 0}


@pytest.fixture
def runner_code(aiida_code_installed):
    beside_python = Path(sys.executable).parent / "aiida-mlpes-run"
    executable = shutil.which("aiida-mlpes-run") or (str(beside_python) if beside_python.exists() else None)
    assert executable, "aiida-mlpes-run is not on PATH: install the package (pip install -e .)"
    return aiida_code_installed(
        filepath_executable=str(Path(executable).resolve()), default_calc_job_plugin="mlpes.ase"
    )


def nh3_arrays(n: int, seed: int = 0) -> RaggedArrays:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        atoms = molecule("NH3")
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        images.append(atoms)
    return RaggedArrays.from_atoms(images)


OPTIONS = {"environment_variables": {"OMP_NUM_THREADS": "1"}}


def test_tblite_through_the_engine_matches_direct(runner_code):
    arrays = nh3_arrays(3)
    results, node = run_get_node(
        AseCalculation,
        code=runner_code,
        structures=PESDataset.from_arrays(arrays),
        indices=[2, 0],
        parameters=TBLITE,
        metadata={"options": OPTIONS},
    )
    assert node.is_finished_ok, node.exit_message
    labelled = results["dataset"].get_arrays()
    direct = label_arrays(arrays, TBLITE, indices=[2, 0]).arrays
    np.testing.assert_allclose(labelled.energy, direct.energy, atol=1e-9)
    np.testing.assert_allclose(labelled.forces, direct.forces, atol=1e-9)
    np.testing.assert_allclose(labelled.dipole, direct.dipole, atol=1e-9)
    assert set(labelled.source) == {node.uuid} and results["failures"].get_dict() == {}
    assert results["dataset"].level_of_theory == "tblite GFN2-xTB"


def test_pyscf_on_a_structure_data(runner_code):
    """PySCF HF/STO-3G on one StructureData: energy of NH3 ~ -55.45 Eh, forces sum to zero."""
    atoms = molecule("NH3")
    results, node = run_get_node(
        AseCalculation,
        code=runner_code,
        structures=orm.StructureData(ase=atoms),
        parameters={"calculator": "pyscf", "method": "HF", "basis": "sto-3g"},
        metadata={"options": OPTIONS},
    )
    assert node.is_finished_ok, node.exit_message
    labelled = results["dataset"].get_arrays()
    assert labelled.energy[0] / 27.211386 == pytest.approx(-55.45, abs=0.05)
    np.testing.assert_allclose(labelled.forces.sum(axis=0), 0.0, atol=1e-4)


def test_unknown_calculator_and_bad_structures_rejected(runner_code):
    arrays = nh3_arrays(2)
    with pytest.raises(ValueError, match="'calculator' must be one of"):
        run_get_node(
            AseCalculation,
            code=runner_code,
            structures=PESDataset.from_arrays(arrays),
            parameters={"calculator": "builtins.exec"},
        )
    with pytest.raises(ValueError, match="does not fit multiplicity 2"):
        run_get_node(
            AseCalculation,
            code=runner_code,
            structures=PESDataset.from_arrays(arrays),
            parameters=TBLITE,
            multiplicity=2,
        )


def test_scf_failures_reported_and_fixed_settings(runner_code):
    """PySCF with one SCF cycle fails for every structure -> exit 410; the SCF fix raises max_cycle."""
    arrays = nh3_arrays(1)
    parameters = {"calculator": "pyscf", "method": "HF", "basis": "sto-3g", "max_cycle": 1}
    results, node = run_get_node(
        AseCalculation,
        code=runner_code,
        structures=PESDataset.from_arrays(arrays),
        parameters=parameters,
        metadata={"options": OPTIONS},
    )
    assert node.exit_status == AseCalculation.exit_codes.ERROR_SCF_NOT_CONVERGED.status
    assert results["failures"]["0"]["category"] == common.SCF_NOT_CONVERGED
    fixed = AseCalculation.apply_scf_fix(parameters, 1)
    assert fixed["max_cycle"] == 300 and AseCalculation.level_of_theory(fixed) == "pyscf HF sto-3g"


@pytest.mark.slow
def test_killed_job_keeps_finished_structures_and_work_chain_finishes_the_rest(
    aiida_code_installed, tmp_path
):
    """A walltime-like kill after 2 of 4 structures: the parser recovers those 2 from progress.jsonl (exit 400)
    and ReferenceWorkChain resubmits only the other 2; all 4 equal direct tblite results."""
    from aiida_mlpes.workflows.reference import ReferenceWorkChain
    from tests.data.stand_ins import install_stand_in

    stand_in = install_stand_in("runner_killed.py", tmp_path)
    code = aiida_code_installed(filepath_executable=str(stand_in), default_calc_job_plugin="mlpes.ase")
    arrays = nh3_arrays(4, seed=3)
    env = {**OPTIONS["environment_variables"], "MLPES_STANDIN_STATE": str(tmp_path), "MLPES_KILL_AFTER": "2"}
    results, node = run_get_node(
        ReferenceWorkChain,
        code=code,
        structures=PESDataset.from_arrays(arrays),
        parameters=TBLITE,
        options={"environment_variables": env},
    )
    assert node.is_finished_ok, node.exit_message
    jobs = sorted((n for n in node.called_descendants if isinstance(n, orm.CalcJobNode)), key=lambda n: n.pk)
    assert jobs[0].exit_status == AseCalculation.exit_codes.ERROR_OUT_OF_WALLTIME.status
    assert jobs[0].outputs.dataset.n_conformations == 2
    assert {k: v["category"] for k, v in jobs[0].outputs.failures.get_dict().items()} == {
        "2": common.NOT_RUN,
        "3": common.NOT_RUN,
    }
    assert jobs[1].inputs.indices.get_list() == [2, 3] and jobs[1].is_finished_ok
    labelled = results["dataset"].get_arrays()
    direct = label_arrays(arrays, TBLITE).arrays
    order = [
        int(
            np.flatnonzero(
                [
                    np.array_equal(
                        labelled.positions[labelled.atom_slice(j)], arrays.positions[arrays.atom_slice(i)]
                    )
                    for j in range(4)
                ]
            )[0]
        )
        for i in range(4)
    ]
    np.testing.assert_allclose(labelled.energy[order], direct.energy, atol=1e-9)
