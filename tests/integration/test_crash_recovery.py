"""Crash recovery on the SLURM computer: a SIGKILLed daemon, a job cancelled mid-batch by the scheduler and a
training job killed at its walltime all continue where they stopped, without repeating or losing work."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import torch
from aiida import orm
from aiida.engine import submit

from aiida_mlpes.calculations.train import TrainCalculation, checkpoint_epoch
from aiida_mlpes.calculations.xtb import XtbCalculation
from aiida_mlpes.core.reference import common
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.workflows.reference import ReferenceWorkChain
from tests.core.test_training import morse_molecules
from tests.integration.conftest import (
    JOB_ENV,
    calcjobs_of,
    kill_daemon,
    molecules,
    restart_daemon,
    sacct_jobs,
    slow_program,
    superseded_of,
    wait_for,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _slow_xtb(slurm_computer, require_xtb, tmp_path, delay: float) -> orm.InstalledCode:
    """An xtb code on the SLURM computer that takes ``delay`` s per structure."""
    return orm.InstalledCode(
        label=f"xtb-slow-{tmp_path.name}",
        computer=slurm_computer,
        filepath_executable=str(slow_program(tmp_path, str(Path(require_xtb).resolve()), delay)),
        default_calc_job_plugin="mlpes.xtb",
    ).store()


def _wait_until(condition, timeout: float, what: str) -> None:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def _slurm_jobs_in(workdirs: list[str]) -> list[str]:
    """Every SLURM allocation (of the last day) that ran in one of the folders ``workdirs``; a CalcJob's
    working directory is unique, so a job submitted twice would appear twice."""
    done = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-S", "now-1days", "--format=JobID,WorkDir"],
        capture_output=True,
        text=True,
        check=True,
    )
    wanted = {str(Path(w)) for w in workdirs}
    rows = (line.split("|", 1) for line in done.stdout.splitlines() if "|" in line)
    return [job for job, workdir in rows if str(Path(workdir)) in wanted]


def test_daemon_sigkill_during_labelling_batches(
    slurm_codes, slurm_computer, require_xtb, fresh_daemon, tmp_path
):
    """SIGKILL the daemon (circusd, workers, circus stats) while 3 batches run, restart it: the work chain
    finishes with one job per batch, as an uninterrupted run (see test_slurm), each submitted to SLURM once."""
    code = _slow_xtb(slurm_computer, require_xtb, tmp_path, delay=2.0)
    node = submit(
        ReferenceWorkChain,
        code=code,
        structures=molecules(6, seed=1),
        batch_size=orm.Int(2),
        options=orm.Dict({"environment_variables": JOB_ENV, "max_wallclock_seconds": 600}),
    )

    def one_done_one_running() -> bool:
        jobs = calcjobs_of(node)
        return any(j.is_finished_ok for j in jobs) and any(not j.is_terminated for j in jobs)

    _wait_until(one_done_one_running, 150, "one finished and one running batch job")
    assert kill_daemon(fresh_daemon) >= 2
    time.sleep(3)  # SLURM goes on while the daemon is dead
    restart_daemon(fresh_daemon)
    wait_for(node, 240, fresh_daemon)

    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    superseded_of(node)  # any job stored but not started when the daemon died never reached SLURM
    jobs = calcjobs_of(node)
    assert len(jobs) == 3 and all(j.is_finished_ok for j in jobs)  # none repeated, none lost
    labelled = node.outputs.dataset
    assert labelled.n_conformations == 6
    assert sum(j.outputs.dataset.n_conformations for j in jobs) == 6
    job_ids = _slurm_jobs_in([j.get_remote_workdir() for j in jobs])
    assert sorted(job_ids) == sorted(j.get_job_id() for j in jobs)  # each job submitted to SLURM once
    assert set(sacct_jobs(job_ids).values()) == {"COMPLETED"}


def test_job_cancelled_mid_batch_keeps_finished_structures(
    slurm_computer, require_xtb, fresh_daemon, tmp_path
):
    """``scancel`` of a running batch job: the structures it finished are kept, only the rest is relabelled."""
    code = _slow_xtb(slurm_computer, require_xtb, tmp_path, delay=2.0)
    node = submit(
        ReferenceWorkChain,
        code=code,
        structures=molecules(5, seed=2),
        batch_size=orm.Int(5),
        options=orm.Dict({"environment_variables": JOB_ENV, "max_wallclock_seconds": 600}),
    )

    def first_job_running() -> bool:
        jobs = calcjobs_of(node)
        if not jobs or not jobs[0].get_job_id():
            return False
        state = subprocess.run(
            ["squeue", "-h", "-j", jobs[0].get_job_id(), "-o", "%T"], capture_output=True, text=True
        ).stdout.strip()
        return state == "RUNNING"

    _wait_until(first_job_running, 120, "the batch job to run")
    time.sleep(5.0)  # two structures of five done
    first = calcjobs_of(node)[0]
    subprocess.run(["scancel", first.get_job_id()], check=True)
    wait_for(node, 240, fresh_daemon)

    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert first.exit_status == XtbCalculation.exit_codes.ERROR_OUT_OF_WALLTIME.status
    kept = first.outputs.dataset.n_conformations
    assert 1 <= kept < 5
    failures = first.outputs.failures.get_dict()
    assert common.NOT_RUN in {f["category"] for f in failures.values()}
    jobs = calcjobs_of(node)
    rerun = sorted(i for j in jobs[1:] for i in j.inputs.indices.get_list())
    assert rerun == sorted(int(i) for i in failures)  # only the unfinished structures are relabelled
    assert sum(j.outputs.dataset.n_conformations for j in jobs if "dataset" in j.outputs) == 5
    assert node.outputs.dataset.n_conformations == 5


TINY = {"n_features": 16, "n_rbf": 8, "n_blocks": 1, "cutoff": 4.0}


def test_training_killed_at_walltime_resumes_from_its_checkpoint(slurm_codes, fresh_daemon):
    """SLURM kills a training job at its 1-minute limit; the restarted job (get_builder_restart +
    restart_folder) continues at the last checkpoint's epoch with its optimizer and EMA state."""
    dataset = PESDataset.from_arrays(morse_molecules([[8, 1, 1]], 24), level_of_theory="morse").store()
    training = {
        "batch_size": 8,
        "progress_bar": False,
        "device": "cpu",
        "max_epochs": 100000,
        "early_stopping_patience": None,
        "wall_time_limit": 3600,  # the user's budget: only the scheduler stops this job
        "checkpoint_interval": 2,
        "checkpoint_min_seconds": 0,
    }
    builder = TrainCalculation.get_builder()
    builder.code = slurm_codes["aiida-mlpes-run"]
    builder.dataset = dataset
    builder.threads = orm.Int(1)
    builder.settings = orm.Dict({"model": TINY, "training": training})
    builder.metadata.options = {"max_wallclock_seconds": 60, "resources": {"num_machines": 1}}
    killed = wait_for(submit(builder), 240, fresh_daemon)

    # SLURM's State TIMEOUT gives exit 120 (ERROR_SCHEDULER_OUT_OF_WALLTIME); the task wrote no result.json,
    # and the parser keeps 120 instead of its own 300 (killed or crashed), naming the checkpoint's epoch
    assert killed.exit_status == TrainCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME.status, (
        killed.exit_status,
        killed.exit_message,
    )
    assert sacct_jobs([killed.get_job_id()]) == {killed.get_job_id(): "TIMEOUT"}
    workdir = Path(killed.outputs.remote_folder.get_remote_path())  # the cluster is this machine
    checkpoint = torch.load(workdir / "checkpoint.pt", weights_only=True)
    epoch = checkpoint["state"]["epoch"]
    assert epoch >= 2 and checkpoint["optimizer"]["state"] and checkpoint["ema"] is not None
    assert checkpoint_epoch(killed) == epoch
    logs = " ".join(log.message for log in orm.Log.collection.get_logs_for(killed))
    assert f"checkpoint of epoch {epoch}" in logs, logs
    curve = (workdir / "learning_curve.csv").read_text().splitlines()

    restart = killed.get_builder_restart()
    restart.restart_folder = killed.outputs.remote_folder
    restart.settings = orm.Dict({"model": TINY, "training": {**training, "max_epochs": epoch + 2}})
    restart.metadata.options.max_wallclock_seconds = 600
    resumed = wait_for(submit(restart), 240, fresh_daemon)

    assert resumed.is_finished_ok, (resumed.exit_status, resumed.exit_message)
    assert resumed.outputs.result["epochs"] == epoch + 2
    rows = resumed.outputs.learning_curve.get_content().splitlines()
    assert len(rows) == 1 + epoch + 2
    # the epochs before the checkpoint are the killed run's rows, unchanged: training went on, not over
    assert rows[: 1 + epoch] == curve[: 1 + epoch]
    log = resumed.outputs.retrieved.base.repository.get_object_content("aiida.out")
    assert f"at epoch {epoch}" in log or rows[1 + epoch].split(",")[0] == str(epoch + 1)
