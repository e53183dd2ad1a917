"""Reference labelling through the daemon on a real SLURM computer reached over SSH (scripts/cluster.sh)."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm

from aiida_mlpes.core.reference.xtb import run_xtb
from aiida_mlpes.workflows.reference import ReferenceWorkChain
from tests.integration.conftest import JOB_ENV, calcjobs_of, molecules, sacct_jobs

pytestmark = pytest.mark.cluster


def test_reference_work_chain_runs_on_slurm_through_the_daemon(slurm_codes, submit_and_await):
    """6 structures (H2O, CH4, HCN) in 3 batches: 3 SLURM jobs that sacct lists as COMPLETED, and the labels
    equal xtb's run directly."""
    structures = molecules(6)
    node = submit_and_await(
        ReferenceWorkChain,
        timeout=180,
        code=slurm_codes["xtb"],
        structures=structures,
        batch_size=orm.Int(2),
        options=orm.Dict({"environment_variables": JOB_ENV, "max_wallclock_seconds": 600}),
    )
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    jobs = calcjobs_of(node)
    assert len(jobs) == 3 and all(job.is_finished_ok for job in jobs)
    assert {job.computer.label for job in jobs} == {"slurm-ssh"}
    job_ids = [job.get_job_id() for job in jobs]
    assert all(job_ids) and len(set(job_ids)) == 3
    assert sacct_jobs(job_ids) == dict.fromkeys(job_ids, "COMPLETED")

    labelled = node.outputs.dataset.get_arrays()
    assert len(labelled) == 6
    assert set(labelled.source) == {job.uuid for job in jobs}  # lineage: each conformation names its job
    inputs = structures.get_arrays()
    for k in range(len(labelled)):
        positions = labelled.positions[labelled.atom_slice(k)]
        matches = [
            i for i in range(len(inputs)) if np.array_equal(inputs.positions[inputs.atom_slice(i)], positions)
        ]
        assert len(matches) == 1
        direct = run_xtb(labelled.atomic_numbers[labelled.atom_slice(k)], positions)
        assert labelled.energy[k] == pytest.approx(direct.energy, abs=1e-6)
