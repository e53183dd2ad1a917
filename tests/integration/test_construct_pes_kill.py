"""A short ConstructPESWorkChain on the SLURM computer through the daemon, with the daemon SIGKILLed while the
sampled structures are being labelled: after the restart the loop finishes with one job per labelling batch,
as an uninterrupted run has. Built on the work chain's public inputs only."""

from __future__ import annotations

import math
import time

import pytest
from aiida import orm
from aiida.engine import submit
from ase.build import molecule

from aiida_mlpes.calculations.reference import n_structures
from aiida_mlpes.workflows.construct_pes import ConstructPESWorkChain
from tests.integration.conftest import (
    calcjobs_of,
    kill_daemon,
    restart_daemon,
    sacct_jobs,
    superseded_of,
    wait_for,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
N_SAMPLES = 30
BATCH = 10


def _builder(codes: dict[str, orm.InstalledCode]):
    overrides = {
        "settings": {
            "max_iterations": 1,
            "min_iterations": 1,
            "committee_size": 2,
            "n_candidates": 2,
            "validate_frequencies": False,
        },
        "sample": {
            "parameters": {
                "n_samples": N_SAMPLES,
                "temperature": 600.0,
                "optimize": True,
                "low_temperature_samples": 0,
            },
            "seed": 0,
        },
        "train": {
            "model": {"n_features": 16, "n_rbf": 8, "n_blocks": 1, "cutoff": 4.0},
            "training": {"max_epochs": 10, "batch_size": 8, "progress_bar": False, "threads": 1},
            # at least two validation and test conformations
            "split": {"fractions": [0.6, 0.2, 0.2], "seed": 0},
        },
        "characterize": {
            "tasks": {
                "optimize": {"fmax": 0.001},
                "frequencies": {},
                "dmc": {"nwalkers": 50, "nsteps": 40, "eqsteps": 10, "seed": 0, "uncertainty_threshold": 0.1},
                "explore": {"md_steps": 20},
            }
        },
    }
    builder = ConstructPESWorkChain.get_builder_from_protocol(
        {"reference": codes["xtb"], "runner": codes["aiida-mlpes-run"]},
        orm.StructureData(ase=molecule("H2O")),
        protocol="fast",
        overrides=overrides,
        options={"max_wallclock_seconds": 1800},  # within the test partition's MaxTime
    )
    builder.reference.parameters = orm.Dict({"method": "GFN2-xTB"})
    builder.reference.batch_size = orm.Int(BATCH)
    return builder


def test_construct_pes_survives_a_daemon_kill_during_labelling(slurm_codes, fresh_daemon):
    node = submit(_builder(slurm_codes))

    def labelling() -> bool:
        return any(j.process_label == "XtbCalculation" for j in calcjobs_of(node)) or node.is_terminated

    start = time.monotonic()
    while not labelling():
        assert time.monotonic() - start < 240, f"no labelling started: {node.process_state}"
        time.sleep(0.2)
    assert not node.is_terminated, (node.exit_status, node.exit_message)
    kill_daemon(fresh_daemon)
    time.sleep(2)
    restart_daemon(fresh_daemon)
    wait_for(node, 900, fresh_daemon)

    superseded = superseded_of(node)  # stored but never started when the daemon died: launched again
    failed = [
        (n.process_label, n.pk, n.process_state.value, n.exit_status, n.exit_message or n.exception)
        for n in node.called_descendants
        if not n.is_finished_ok and n not in superseded
    ]
    logs = [log.message for n in node.called_descendants for log in orm.Log.collection.get_logs_for(n)]
    assert node.exit_status in (0, 410, 411), (node.exit_status, node.exit_message, failed, logs[-10:])
    xtb_jobs = [j for j in calcjobs_of(node) if j.process_label == "XtbCalculation"]
    batches = [
        n
        for n in node.called_descendants
        if n.process_label == "ReferenceBaseWorkChain" and n not in superseded
    ]
    # an uninterrupted run has one job per labelling batch: none repeated after the restart, none lost
    callers = [(j.pk, j.caller.process_label, j.caller.pk) for j in xtb_jobs]
    assert len(xtb_jobs) == len(batches) >= math.ceil(N_SAMPLES / BATCH), callers
    for batch in batches:
        jobs = [c for c in batch.called if isinstance(c, orm.CalcJobNode) and c not in superseded]
        assert len(jobs) == 1 and jobs[0].is_finished_ok, (batch.pk, [j.pk for j in jobs])
        wanted = (
            len(batch.inputs.indices.get_list())
            if "indices" in batch.inputs
            else n_structures(batch.inputs.structures)
        )
        assert jobs[0].outputs.dataset.n_conformations == wanted
    job_ids = [j.get_job_id() for j in calcjobs_of(node)]
    assert len(set(job_ids)) == len(job_ids)
    assert set(sacct_jobs(job_ids).values()) == {"COMPLETED"}
