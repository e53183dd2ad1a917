"""Packing many small reference jobs into few SLURM allocations: what it saves in queue time and wall time.

    sudo bash scripts/cluster.sh --services-only           # the local one-node SLURM + sshd (docs/cluster.md)
    .venv/bin/python benchmarks/packing.py [--structures 60] [--batches 4] [--repeats 1] [--poll 1]

Labels the same ``--structures`` displaced NH3 geometries with GFN2-xTB (the ``xtb`` executable) through a
``ReferenceWorkChain`` on the SLURM computer over SSH, three ways:

- ``single``: one structure per job (``batch_size`` 1): as many SLURM jobs as structures;
- ``batches``: ``--batches`` jobs, each running its structures as lines of the job script;
- ``driver``: ``--batches`` jobs in driver mode (``driver_code``: one ``aiida-mlpes-run`` process per job runs
  every xtb call and parses it there, returning one results file).

For each: the wall time from launch to the last result (what the user waits), the SLURM jobs, and from SLURM's
accounting (``sacct``) the sum and the longest of the queue waits (Start - Submit) and the sum of the
allocations' elapsed times. The engine runs in this process (a temporary SQLite profile, no daemon) with the
computer's job poll interval ``--poll`` s (AiiDA's default is 10 s; 1 s here favours many small jobs). The
machine may be shared: times are noisy, so repeat and read best and median.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: The ``Host`` entry of ~/.ssh/config written by scripts/cluster.sh.
SSH_HOST = "aiida-mlpes-slurm"
MODES = ("single", "batches", "driver")


def make_profile(folder: Path):
    """A throw-away SQLite profile (no broker) in the configuration of ``folder``, loaded."""
    import os

    os.environ["AIIDA_PATH"] = str(folder)
    from aiida import load_profile
    from aiida.manage.configuration import create_profile, get_config

    config = get_config(create=True)
    create_profile(
        config,
        storage_backend="core.sqlite_dos",
        storage_config={"filepath": str(folder / "storage")},
        name="packing",
        email="bench@localhost",
    )
    config.set_option("logging.aiida_loglevel", "WARNING", scope="packing")
    # no broker: a work chain learns that its children ended by polling them (default every 60 s); every
    # waiting process polls, so with hundreds of jobs a short interval starves the engine itself
    config.set_option("runner.poll.interval", 5, scope="packing")
    config.store()
    return load_profile("packing", allow_switch=True)


def setup_codes(poll: float, workdir: Path) -> dict:
    """Computer ``slurm-ssh`` (core.ssh_async + core.slurm) and the codes xtb and aiida-mlpes-run on it."""
    from aiida import orm

    # made beforehand: hundreds of concurrent uploads racing to create it fail once and wait 20 s to retry
    workdir.mkdir(parents=True, exist_ok=True)
    computer = orm.Computer(
        label="slurm-ssh",
        hostname="localhost",
        transport_type="core.ssh_async",
        scheduler_type="core.slurm",
        workdir=str(workdir),
    ).store()
    computer.set_minimum_job_poll_interval(poll)
    computer.set_default_mpiprocs_per_machine(1)
    computer.configure(host=SSH_HOST, backend="asyncssh", safe_interval=0.0, max_io_allowed=8)
    xtb = shutil.which("xtb")
    if xtb is None:
        raise SystemExit("xtb is not installed (scripts/setup.sh installs it)")
    return {
        "xtb": orm.InstalledCode(
            label="xtb",
            computer=computer,
            filepath_executable=str(Path(xtb).resolve()),
            default_calc_job_plugin="mlpes.xtb",
        ).store(),
        "runner": orm.InstalledCode(
            label="aiida-mlpes-run",
            computer=computer,
            filepath_executable=str(Path(sys.executable).with_name("aiida-mlpes-run")),
        ).store(),
    }


def nh3_dataset(n: int, seed: int = 0):
    """``n`` NH3 geometries of benchmarks/reference.py (displaced by 0.05 Angstrom), unlabelled and stored."""
    from reference import nh3_structures  # the sibling benchmark; this folder is on sys.path when run

    from aiida_mlpes.data.dataset import PESDataset

    return PESDataset.from_arrays(nh3_structures(n, seed)).store()


def sacct_times(job_ids: list[str]) -> dict[str, tuple[float, float, float]]:
    """{job id: (queue wait s, elapsed s, end as a POSIX time)} from SLURM's accounting (waits for slurmdbd)."""
    rows: dict[str, tuple[float, float, float]] = {}
    for _ in range(60):
        done = subprocess.run(
            ["sacct", "-X", "-n", "-P", "--format=JobID,Submit,Start,End", "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
            check=True,
        )
        for line in done.stdout.split():
            job, submit, start, end = line.split("|")
            if "Unknown" in (start, end) or not end:
                continue
            t0, t1, t2 = (datetime.datetime.fromisoformat(t).timestamp() for t in (submit, start, end))
            rows[job] = (t1 - t0, t2 - t1, t2)
        if set(job_ids) <= set(rows):
            return rows
        time.sleep(1.0)
    raise RuntimeError(f"sacct lacks jobs {sorted(set(job_ids) - set(rows))}")


def label(mode: str, codes: dict, dataset, batches: int) -> dict[str, float]:
    """Run one labelling; return its figures."""
    from aiida import orm
    from aiida.engine import run_get_node

    from aiida_mlpes.workflows.reference import ReferenceWorkChain

    n = dataset.n_conformations
    batch_size = 1 if mode == "single" else -(-n // batches)
    options = {
        "resources": {"num_machines": 1, "num_mpiprocs_per_machine": 1},
        "max_wallclock_seconds": 1800,
        "environment_variables": {"OMP_NUM_THREADS": "1"},
    }
    builder = ReferenceWorkChain.get_builder_from_protocol(
        codes["xtb"], dataset, overrides={"batch_size": batch_size}, options=options
    )
    if mode == "driver":
        builder.driver_code = codes["runner"]
    start = time.time()
    _, node = run_get_node(builder)
    wall = time.time() - start
    if not node.is_finished_ok:
        raise RuntimeError(
            f"{mode}: ReferenceWorkChain<{node.pk}> failed: {node.exit_status} {node.exit_message}"
        )
    if node.outputs.dataset.n_conformations != n:
        raise RuntimeError(f"{mode}: {node.outputs.dataset.n_conformations} of {n} structures labelled")
    jobs = [d for d in node.called_descendants if isinstance(d, orm.CalcJobNode)]
    times = sacct_times([j.get_job_id() for j in jobs])
    waits = [w for w, _, _ in times.values()]
    return {
        "wall_s": wall,
        "jobs": len(jobs),
        "queue_sum_s": sum(waits),
        "queue_max_s": max(waits),
        "alloc_sum_s": sum(e for _, e, _ in times.values()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--structures", type=int, default=60)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--poll", type=float, default=1.0, help="the computer's minimum job poll interval, s")
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}"
    )
    args = parser.parse_args(argv)
    if shutil.which("sbatch") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        raise SystemExit("no SLURM here: run `sudo bash scripts/cluster.sh --services-only` first")
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise SystemExit(f"unknown modes {unknown}; choose from {', '.join(MODES)}")

    with tempfile.TemporaryDirectory(prefix="mlpes-packing-") as tmp:
        make_profile(Path(tmp))
        codes = setup_codes(args.poll, Path(tmp) / "work")
        dataset = nh3_dataset(args.structures)
        results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
        for repeat in range(args.repeats):
            for mode in modes:
                figures = label(mode, codes, dataset, args.batches)
                results[mode].append(figures)
                print(f"repeat {repeat + 1} {mode}: {figures}", flush=True)

    cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout.split()
    print(
        f"\n{args.structures} NH3 GFN2-xTB single points on SLURM ({'+'.join(cpus)} CPUs), job poll "
        f"{args.poll:g} s; best / median of {args.repeats}"
    )
    print(
        f"{'mode':8s} {'jobs':>5s} {'wall s':>15s} {'queue sum s':>17s} {'queue max s':>15s} {'alloc sum s':>15s}"
    )
    for mode, rows in results.items():

        def cell(key: str, rows=rows) -> str:
            values = [r[key] for r in rows]
            return f"{min(values):.0f} / {statistics.median(values):.0f}"

        print(
            f"{mode:8s} {rows[0]['jobs']:5d} {cell('wall_s'):>15s} {cell('queue_sum_s'):>17s} "
            f"{cell('queue_max_s'):>15s} {cell('alloc_sum_s'):>15s}"
        )


if __name__ == "__main__":
    main()
