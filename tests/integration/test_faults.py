"""Faults on the SLURM computer: each gets a clear report, and the run goes on once the fault is fixed.

AiiDA retries a failed transport task (upload, submit, update, retrieve) with exponential backoff and then
pauses the job with the error as its process status; after the fix, ``verdi process play`` resumes it. The
module shortens the backoff to 1 s and 2 attempts (``verdi config set transport.task_*``) to stay fast.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
from aiida import orm
from aiida.engine import submit
from aiida.engine.processes.control import play_processes

from aiida_mlpes.calculations.xtb import XtbCalculation
from aiida_mlpes.workflows.reference import ReferenceWorkChain
from tests.integration.conftest import JOB_ENV, calcjobs_of, molecules, wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module", autouse=True)
def quick_transport_retries(daemon_profile):
    """Retry a failed transport task once after 1 s, then pause (set before the module's daemon starts)."""
    from aiida.manage.configuration import get_config

    config = get_config()
    config.set_option("transport.task_retry_initial_interval", 1, scope=daemon_profile.name)
    config.set_option("transport.task_maximum_attempts", 2, scope=daemon_profile.name)
    config.store()


def _wait_paused(node: orm.CalcJobNode, timeout: float = 120) -> str:
    """Wait until ``node`` paused; return its process status and its log (``verdi process report``)."""
    start = time.monotonic()
    while not node.paused:
        assert not node.is_terminated, (node.exit_status, node.exit_message)
        if time.monotonic() - start > timeout:
            pytest.fail(f"{node.process_label}<{node.pk}> did not pause: {node.process_status}")
        time.sleep(0.5)
    logs = "\n".join(log.message for log in orm.Log.collection.get_logs_for(node))
    return f"{node.process_status}\n{logs}"


def _xtb_job(code: orm.AbstractCode, **options) -> orm.CalcJobNode:
    return submit(
        XtbCalculation,
        code=code,
        structures=molecules(1, seed=3),
        metadata={
            "options": {"environment_variables": JOB_ENV, "max_wallclock_seconds": 600, **options},
        },
    )


def test_bad_partition_pauses_with_slurms_reason_and_resumes_after_fix(slurm_codes, fresh_daemon):
    """sbatch rejects an unknown partition: the job pauses saying so; once the partition exists, play it."""
    partition = f"mlpes{uuid.uuid4().hex[:6]}"
    node = _xtb_job(slurm_codes["xtb"], queue_name=partition)
    status = _wait_paused(node)
    assert "submit_calculation failed" in status and "invalid partition" in status.lower(), status
    node_name = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(
        ["scontrol", "create", f"PartitionName={partition}", f"Nodes={node_name}", "MaxTime=10"], check=True
    )
    try:
        play_processes([node])
        wait_for(node, 120, fresh_daemon)
    finally:
        subprocess.run(["scontrol", "delete", f"PartitionName={partition}"], check=False)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert node.outputs.dataset.n_conformations == 1


def test_over_limit_walltime_is_rejected_with_a_clear_report(slurm_codes, fresh_daemon):
    """A walltime over the partition's MaxTime is rejected by sbatch (EnforcePartLimits): the job pauses with
    SLURM's message instead of pending forever; killing it ends it cleanly, and the same inputs with a walltime
    under the limit run."""
    from aiida.engine.processes.control import kill_processes

    node = _xtb_job(slurm_codes["xtb"], max_wallclock_seconds=7 * 24 * 3600)
    status = _wait_paused(node)
    assert "submit_calculation failed" in status and "time limit is invalid" in status.lower(), status
    kill_processes([node])
    wait_for(node, 60, fresh_daemon)
    assert node.is_killed
    # the fix: the same inputs with a walltime under the partition's limit
    again = node.get_builder_restart()
    again.metadata.options.max_wallclock_seconds = 600
    again = wait_for(submit(again), 120, fresh_daemon)
    assert again.is_finished_ok, (again.exit_status, again.exit_message)


def test_missing_code_is_reported_and_resumes_once_installed(
    slurm_computer, require_xtb, fresh_daemon, tmp_path
):
    """A code whose executable does not exist on the computer: the job fails naming the path (the program
    error, not a walltime kill); once the program is installed there, the same inputs succeed."""
    executable = tmp_path / "bin" / "xtb"
    code = orm.InstalledCode(
        label="xtb-missing",
        computer=slurm_computer,
        filepath_executable=str(executable),
        default_calc_job_plugin="mlpes.xtb",
    ).store()
    node = _xtb_job(code)
    wait_for(node, 120, fresh_daemon)
    assert node.exit_status == XtbCalculation.exit_codes.ERROR_PROGRAM_FAILED.status, node.exit_message
    assert str(executable) in node.exit_message and "No such file" in node.exit_message
    executable.parent.mkdir()
    executable.symlink_to(require_xtb)
    again = wait_for(submit(node.get_builder_restart()), 120, fresh_daemon)
    assert again.is_finished_ok, (again.exit_status, again.exit_message)


def test_unreachable_computer_pauses_and_resumes_after_reconfiguration(
    slurm_codes, slurm_computer, fresh_daemon
):
    """SSH to the computer fails (nothing listens there): the job pauses with the connection error; after the
    computer is configured with the right host, play resumes it."""
    user = orm.User.collection.get_default()
    authinfo = slurm_computer.get_authinfo(user)
    good = authinfo.get_auth_params()
    authinfo.set_auth_params({**good, "host": "127.0.0.9"})  # sshd listens on 127.0.0.1 only
    try:
        node = _xtb_job(slurm_codes["xtb"])
        status = _wait_paused(node)
    finally:
        authinfo.set_auth_params(good)
    assert "upload_calculation" in status or "connect" in status.lower(), status
    play_processes([node])
    wait_for(node, 120, fresh_daemon)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)


def test_missing_code_in_a_labelling_work_chain_fails_once_naming_the_path(
    slurm_computer, require_xtb, fresh_daemon, tmp_path
):
    """In a ReferenceWorkChain a missing program is not retried (another job would fail the same way): one
    job, the structures excluded with the shell's message, exit 403; once installed, the same inputs label."""
    executable = tmp_path / "opt" / "xtb"
    code = orm.InstalledCode(
        label="xtb-missing-wc",
        computer=slurm_computer,
        filepath_executable=str(executable),
        default_calc_job_plugin="mlpes.xtb",
    ).store()
    builder = ReferenceWorkChain.get_builder_from_protocol(
        code, molecules(3, seed=5), options={"environment_variables": JOB_ENV, "max_wallclock_seconds": 600}
    )
    node = wait_for(submit(builder), 180, fresh_daemon)
    assert node.exit_status == ReferenceWorkChain.exit_codes.ERROR_ALL_STRUCTURES_EXCLUDED.status
    assert len(calcjobs_of(node)) == 1
    excluded = node.outputs.excluded.get_dict()
    assert len(excluded) == 3
    assert all(f"{executable}: No such file or directory" in e["message"] for e in excluded.values()), (
        excluded
    )
    executable.parent.mkdir()
    executable.symlink_to(require_xtb)
    again = wait_for(submit(node.get_builder_restart()), 180, fresh_daemon)
    assert again.is_finished_ok and again.outputs.dataset.n_conformations == 3, again.exit_message


def test_labelling_work_chain_waits_on_a_paused_job_and_finishes_after_play(
    slurm_codes, slurm_computer, fresh_daemon
):
    """A fault inside a ReferenceWorkChain (SSH unreachable) pauses the job, not the labelling: the work chain
    waits on it and finishes, with every structure, once the job is played after the fix."""
    user = orm.User.collection.get_default()
    authinfo = slurm_computer.get_authinfo(user)
    good = authinfo.get_auth_params()
    authinfo.set_auth_params({**good, "host": "127.0.0.9"})
    try:
        builder = ReferenceWorkChain.get_builder_from_protocol(
            slurm_codes["xtb"],
            molecules(4, seed=6),
            overrides={"batch_size": 4},
            options={"environment_variables": JOB_ENV, "max_wallclock_seconds": 600},
        )
        node = submit(builder)
        start = time.monotonic()
        while not calcjobs_of(node):
            assert time.monotonic() - start < 120 and not node.is_terminated, node.process_state
            time.sleep(0.5)
        job = calcjobs_of(node)[0]
        status = _wait_paused(job)
    finally:
        authinfo.set_auth_params(good)
    assert "upload_calculation" in status or "connect" in status.lower(), status
    assert not node.is_terminated and not node.paused  # the labelling waits; only the job paused
    play_processes([job])
    wait_for(node, 180, fresh_daemon)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert node.outputs.dataset.n_conformations == 4 and len(calcjobs_of(node)) == 1


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MB tmpfs, unmounted at the end."""
    mountpoint = tmp_path / "tinydisk"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)], check=True)
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_full_remote_disk_pauses_and_resumes_after_cleanup(
    slurm_cluster, require_xtb, tiny_disk, fresh_daemon
):
    """The computer's work directory is on a full disk: the upload fails and the job pauses, naming the file
    it could not upload; once space is freed, play resumes it."""
    computer = orm.Computer(
        label=f"slurm-full-{uuid.uuid4().hex[:6]}",
        hostname="localhost",
        transport_type="core.ssh_async",
        scheduler_type="core.slurm",
        workdir=str(tiny_disk / "work"),
    ).store()
    computer.set_minimum_job_poll_interval(1.0)
    computer.set_default_mpiprocs_per_machine(1)
    computer.configure(host=slurm_cluster, backend="asyncssh", safe_interval=0.0, max_io_allowed=8)
    code = orm.InstalledCode(
        label="xtb", computer=computer, filepath_executable=require_xtb, default_calc_job_plugin="mlpes.xtb"
    ).store()
    filler = tiny_disk / "filler"
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={filler}", "bs=4k", "count=1024"], capture_output=True, check=False
    )
    node = _xtb_job(code)
    status = _wait_paused(node)
    # SFTP (protocol 3) has no "disk full" status: the report names the failed upload and the file, not ENOSPC
    assert "upload_calculation failed" in status and "Error while uploading file" in status, status
    filler.unlink()
    play_processes([node])
    wait_for(node, 120, fresh_daemon)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
