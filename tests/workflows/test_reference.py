"""``ReferenceWorkChain``: real xtb labelling of NH3 through the engine, healing of injected failures
(SCC failure, walltime kill mid-batch, a structure that always fails) without losing any structure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.build import molecule

from aiida_mlpes.calculations.xtb import XtbCalculation
from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.core.reference import common
from aiida_mlpes.core.reference.xtb import run_xtb
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.workflows.reference import ReferenceBaseWorkChain, ReferenceWorkChain
from tests.data.stand_ins import install_stand_in

XTB = shutil.which("xtb")
pytestmark = pytest.mark.usefixtures("require_xtb")  # fails loudly if xtb is missing
ENV = {"OMP_NUM_THREADS": "1"}


def nh3_arrays(n: int, seed: int = 0) -> RaggedArrays:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        atoms = molecule("NH3")
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        images.append(atoms)
    return RaggedArrays.from_atoms(images)


def direct(arrays: RaggedArrays, i: int):
    sl = arrays.atom_slice(i)
    return run_xtb(arrays.atomic_numbers[sl], arrays.positions[sl])


def by_position(labelled: RaggedArrays, arrays: RaggedArrays) -> dict[int, int]:
    """Map each input conformation to its row in the (reordered) output, by exact positions."""
    out = {}
    for i in range(len(arrays)):
        for j in range(len(labelled)):
            if np.array_equal(
                labelled.positions[labelled.atom_slice(j)], arrays.positions[arrays.atom_slice(i)]
            ):
                out[i] = j
    return out


@pytest.fixture
def xtb_code(aiida_code_installed):
    return aiida_code_installed(
        filepath_executable=str(Path(XTB).resolve()), default_calc_job_plugin="mlpes.xtb"
    )


@pytest.mark.slow
def test_real_xtb_nh3_end_to_end(xtb_code):
    """6 NH3 structures in 2 parallel batches through run(): energies/forces equal xtb run directly."""
    arrays = nh3_arrays(6)
    dataset = PESDataset.from_arrays(arrays).store()
    results, node = run_get_node(
        ReferenceWorkChain,
        code=xtb_code,
        structures=dataset,
        batch_size=3,
        options={"environment_variables": ENV},
    )
    assert node.is_finished_ok, node.exit_message
    assert "excluded" not in results  # only present when something was excluded
    labelled = results["dataset"].get_arrays()
    assert len(labelled) == 6 and results["dataset"].level_of_theory == "GFN2-xTB"
    rows = by_position(labelled, arrays)
    assert sorted(rows) == list(range(6))
    for i, j in rows.items():
        ref = direct(arrays, i)
        assert labelled.energy[j] == pytest.approx(ref.energy, abs=1e-8)
        np.testing.assert_allclose(labelled.forces[labelled.atom_slice(j)], ref.forces, atol=1e-8)
    jobs = [n for n in node.called_descendants if isinstance(n, orm.CalcJobNode)]
    assert len(jobs) == 2 and all(j.is_finished_ok for j in jobs)
    assert set(labelled.source) == {j.uuid for j in jobs}


@pytest.mark.slow
@pytest.mark.parametrize("driver", [False, True], ids=["codeinfo-per-structure", "driver-mode"])
def test_failures_are_healed_and_nothing_is_lost(xtb_code, aiida_code_installed, tmp_path, driver):
    """Stand-in xtb: structure 1 needs >= 1000 SCC iterations, structure 2 kills its job script the first
    time (walltime mid-batch: structure 3 never starts), structure 6 always fails. Everything except 6
    is labelled exactly as xtb does it directly; 6 is excluded after 1 + 2 retries with its reason.
    In driver mode the kill hits the aiida-mlpes-run process that runs the calls: same outcome."""
    config = {
        "xtb": str(Path(XTB).resolve()),
        "state_dir": str(tmp_path),
        "scf": {"1": 1000},
        "kill": [2],
        "error": [6],
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    stand_in = install_stand_in("xtb_flaky.py", tmp_path)
    code = aiida_code_installed(filepath_executable=str(stand_in), default_calc_job_plugin="mlpes.xtb")
    arrays = nh3_arrays(8, seed=1)
    extra = {}
    if driver:
        runner = str(Path(shutil.which("aiida-mlpes-run")).resolve())
        extra["driver_code"] = aiida_code_installed(
            filepath_executable=runner, default_calc_job_plugin="mlpes.sample"
        )
    results, node = run_get_node(
        ReferenceWorkChain,
        code=code,
        structures=PESDataset.from_arrays(arrays),
        batch_size=4,
        options={"environment_variables": {**ENV, "MLPES_STANDIN_CONFIG": str(tmp_path / "config.json")}},
        **extra,
    )
    assert node.is_finished_ok, node.exit_message
    excluded = results["excluded"].get_dict()
    assert list(excluded) == ["6"]
    assert excluded["6"]["category"] == common.ERROR and excluded["6"]["attempts"] == 3
    assert "injected failure" in excluded["6"]["message"]
    labelled = results["dataset"].get_arrays()
    rows = by_position(labelled, arrays)
    assert sorted(rows) == [0, 1, 2, 3, 4, 5, 7] and len(labelled) == 7
    for i, j in rows.items():
        ref = direct(arrays, i)
        assert labelled.energy[j] == pytest.approx(ref.energy, abs=1e-8)
        np.testing.assert_allclose(labelled.forces[labelled.atom_slice(j)], ref.forces, atol=1e-8)

    batches = sorted((n for n in node.called if isinstance(n, orm.WorkflowNode)), key=lambda n: n.pk)
    first_jobs = sorted((n for n in batches[0].called if isinstance(n, orm.CalcJobNode)), key=lambda n: n.pk)
    # batch 0: the kill stopped job 1 (exit 400), the retry ran structures 1, 2, 3 with the SCF fix
    assert first_jobs[0].exit_status == XtbCalculation.exit_codes.ERROR_OUT_OF_WALLTIME.status
    failures = first_jobs[0].outputs.failures.get_dict()
    assert failures["1"]["category"] == common.SCF_NOT_CONVERGED
    assert failures["2"]["category"] == common.WALLTIME and failures["3"]["category"] == common.NOT_RUN
    assert first_jobs[0].outputs.dataset.n_conformations == 1  # structure 0 was kept from the killed job
    assert first_jobs[1].inputs.indices.get_list() == [1, 2, 3]
    assert first_jobs[1].inputs.parameters["scf_fix_level"] == 1 and first_jobs[1].is_finished_ok
    # batch 1: structure 6 alone is retried twice more
    second_jobs = sorted((n for n in batches[1].called if isinstance(n, orm.CalcJobNode)), key=lambda n: n.pk)
    assert [j.inputs.indices.get_list() for j in second_jobs] == [[4, 5, 6, 7], [6], [6]]


def test_base_work_chain_on_a_batch(xtb_code):
    """The restart work chain alone on a sub-set given by indices."""
    arrays = nh3_arrays(3, seed=4)
    results, node = run_get_node(
        ReferenceBaseWorkChain,
        code=xtb_code,
        structures=PESDataset.from_arrays(arrays),
        indices=[2, 0],
        options={"environment_variables": ENV},
    )
    assert node.is_finished_ok, node.exit_message
    np.testing.assert_allclose(results["dataset"].get_arrays().positions, arrays.select([2, 0]).positions)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"multiplicity": 2}, "does not fit multiplicity 2"), ({"parameters": {"method": "GFN7"}}, "unknown")],
)
def test_bad_input_rejected_before_submission(xtb_code, kwargs, message):
    arrays = nh3_arrays(2)
    with pytest.raises(ValueError, match=message):
        run_get_node(ReferenceWorkChain, code=xtb_code, structures=PESDataset.from_arrays(arrays), **kwargs)
    arrays.positions[5] = arrays.positions[4]
    with pytest.raises(ValueError, match=r"conformation 1: atoms 0 \(N\) and 1 \(H\) are 0\.000 Angstrom"):
        run_get_node(ReferenceWorkChain, code=xtb_code, structures=PESDataset.from_arrays(arrays))


def test_code_must_name_a_reference_plugin(aiida_code_installed):
    code = aiida_code_installed(
        filepath_executable=str(Path(XTB).resolve()), default_calc_job_plugin="core.arithmetic.add"
    )
    with pytest.raises(ValueError, match="default_calc_job_plugin"):
        run_get_node(ReferenceWorkChain, code=code, structures=PESDataset.from_arrays(nh3_arrays(1)))
