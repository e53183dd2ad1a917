"""Fixtures of the integration tests: a profile with aiida-core's ZeroMQ broker and a daemon, a real one-node
SLURM cluster reached over SSH (``scripts/cluster.sh``), and helpers to kill the daemon and ask SLURM.

Tests marked ``cluster`` need SLURM (slurmctld, slurmd, slurmdbd, munge) and sshd. They skip, saying so, when
those are not installed and ``MLPES_REQUIRE_CLUSTER`` is unset; with ``MLPES_REQUIRE_CLUSTER=1`` (CI) a
missing or broken cluster is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from aiida import orm
from ase.build import molecule

from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.workflows.replay import SUPERSEDED

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = ROOT / "scripts" / "cluster.sh"
#: The ``Host`` entry of ~/.ssh/config written by scripts/cluster.sh.
SSH_HOST = "aiida-mlpes-slurm"
REQUIRED = bool(os.environ.get("MLPES_REQUIRE_CLUSTER"))
#: Environment of every job: xtb on tiny molecules is fastest single-threaded.
JOB_ENV = {"OMP_NUM_THREADS": "1"}


def _cluster_missing() -> str | None:
    """Why the cluster cannot run here (None if its programs are installed)."""
    missing = [
        name for name in ("slurmctld", "slurmd", "slurmdbd", "munged", "sbatch") if not shutil.which(name)
    ]
    if not Path("/usr/sbin/sshd").exists():
        missing.append("sshd")
    return f"not installed: {', '.join(missing)}" if missing else None


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """Start (idempotently) the local SLURM cluster and sshd with scripts/cluster.sh; return the SSH host."""
    problem = _cluster_missing()
    if problem and not REQUIRED:
        pytest.skip(
            f"local SLURM cluster {problem}; run `bash scripts/cluster.sh` as root, or set "
            "MLPES_REQUIRE_CLUSTER=1 to make this a failure"
        )
    if os.geteuid() != 0:
        pytest.fail("the cluster tests start system services: run them as root (scripts/cluster.sh)")
    done = subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), "--services-only"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"scripts/cluster.sh failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return SSH_HOST


@pytest.fixture(scope="module")
def daemon_profile(aiida_config, aiida_profile_factory, run_aiida_broker_service_for_profile):
    """A temporary profile with the ZeroMQ broker (run for the module), loaded while the module runs."""
    os.environ["PATH"] = (
        f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # the daemon runs verdi
    )
    with (
        aiida_profile_factory(aiida_config, broker_backend="core.zeromq") as profile,
        run_aiida_broker_service_for_profile(profile),
    ):
        yield profile


@pytest.fixture(scope="module")
def daemon_client(daemon_profile):
    """The daemon client of the module's profile (overrides aiida-core's session fixture); stopped at the end."""
    from aiida.engine.daemon.client import DaemonException, get_daemon_client

    client = get_daemon_client(daemon_profile.name)
    yield client
    with contextlib.suppress(DaemonException):
        client.stop_daemon(wait=True)


def daemon_processes(client) -> list[psutil.Process]:
    """circusd of the daemon and all its children (workers, ``circus stats``), before anything is killed."""
    pid = client.get_daemon_pid()
    if pid is None:
        return []
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def kill_daemon(client) -> int:
    """SIGKILL the daemon: circusd, its workers and its ``circus stats`` child (which would be left orphaned),
    each by PID, as a crash of the machine would. Returns how many processes were killed."""
    processes = daemon_processes(client)
    assert processes, "the daemon is not running"
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=10)
    for path in (client.daemon_pid_file,):
        Path(path).unlink(missing_ok=True)  # what a crashed daemon leaves behind
    return len(processes)


def restart_daemon(client) -> None:
    client.start_daemon()
    assert client.is_daemon_running


def wait_for(node: orm.ProcessNode, timeout: float, client=None) -> orm.ProcessNode:
    """Wait until ``node`` terminated; on timeout, fail with the daemon log's tail."""
    start = time.monotonic()
    while not node.is_terminated:
        if time.monotonic() - start > timeout:
            log = Path(client.daemon_log_file).read_text()[-4000:] if client else ""
            pytest.fail(
                f"{node.process_label}<{node.pk}> not terminated after {timeout} s: {node.process_state}\n{log}"
            )
        time.sleep(0.5)
    return node


@pytest.fixture(scope="module")
def slurm_computer(slurm_cluster, daemon_profile, tmp_path_factory) -> orm.Computer:
    """Computer ``slurm-ssh`` (core.ssh_async + core.slurm) of the module's profile, work dir under /tmp."""
    computer = orm.Computer(
        label="slurm-ssh",
        hostname="localhost",
        description="one-node SLURM on this machine, over SSH",
        transport_type="core.ssh_async",
        scheduler_type="core.slurm",
        workdir=str(tmp_path_factory.mktemp("slurm-work")),
    ).store()
    computer.set_minimum_job_poll_interval(1.0)
    computer.set_default_mpiprocs_per_machine(1)
    computer.configure(host=slurm_cluster, backend="asyncssh", safe_interval=0.0, max_io_allowed=8)
    return computer


@pytest.fixture(scope="module")
def slurm_codes(slurm_computer, require_xtb) -> dict[str, orm.InstalledCode]:
    """The codes ``xtb`` and ``aiida-mlpes-run`` on the SLURM computer."""
    runner = Path(sys.executable).with_name("aiida-mlpes-run")
    return {
        "xtb": orm.InstalledCode(
            label="xtb",
            computer=slurm_computer,
            filepath_executable=str(Path(require_xtb).resolve()),
            default_calc_job_plugin="mlpes.xtb",
        ).store(),
        "aiida-mlpes-run": orm.InstalledCode(
            label="aiida-mlpes-run", computer=slurm_computer, filepath_executable=str(runner)
        ).store(),
    }


def slow_program(directory: Path, program: str, delay: float) -> Path:
    """An executable that waits ``delay`` s and then runs ``program`` (a slow reference program, so that a
    batch job can be killed while it runs)."""
    path = directory / f"slow-{Path(program).name}"
    path.write_text(f'#!/bin/sh\nsleep {delay}\nexec "{program}" "$@"\n')
    path.chmod(0o755)
    return path


def molecules(n: int, names: tuple[str, ...] = ("H2O", "CH4", "HCN"), seed: int = 0) -> PESDataset:
    """``n`` displaced small molecules (cycling through ``names``) as an unlabelled, stored PESDataset."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        atoms = molecule(names[i % len(names)])
        atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
        images.append(atoms)
    return PESDataset.from_arrays(RaggedArrays.from_atoms(images)).store()


def sacct_jobs(job_ids: list[str]) -> dict[str, str]:
    """{job id: State} of the allocations ``job_ids`` as SLURM's accounting knows them (waits for slurmdbd)."""
    states: dict[str, str] = {}
    for _ in range(40):
        done = subprocess.run(
            ["sacct", "-X", "-n", "-P", "--format=JobID,State", "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
            check=True,
        )
        states = dict(line.split("|", 1) for line in done.stdout.split())
        if set(job_ids) <= set(states):
            break
        time.sleep(0.5)
    return states


def calcjobs_of(node: orm.ProcessNode) -> list[orm.CalcJobNode]:
    """Every CalcJob called (directly or through sub-workflows) by ``node``, oldest first; without those that a
    replayed step superseded because they never started (see ``superseded_of``)."""
    found = [
        d
        for d in node.called_descendants
        if isinstance(d, orm.CalcJobNode) and not d.base.extras.get(SUPERSEDED, False)
    ]
    return sorted(found, key=lambda n: n.pk)


def superseded_of(node: orm.ProcessNode) -> list[orm.ProcessNode]:
    """The children that a replayed step superseded (killed before they started, then launched again); each is
    checked to have never reached the scheduler: nothing of it ran, so nothing was repeated."""
    found = [d for d in node.called_descendants if d.base.extras.get(SUPERSEDED, False)]
    for child in found:
        assert child.is_killed, (child.pk, child.process_state)
        if isinstance(child, orm.CalcJobNode):
            assert child.get_job_id() is None and child.get_remote_workdir() is None, child.pk
    return found


SubmitAndWait = Callable[..., orm.ProcessNode]


@pytest.fixture
def fresh_daemon(started_daemon_client) -> Iterator:
    """A running daemon for the test (restarted if a previous test killed it)."""
    if not started_daemon_client.is_daemon_running:
        restart_daemon(started_daemon_client)
    yield started_daemon_client
