"""Engine overhead of reference labelling: N NH3 structures with GFN2-xTB through ``ReferenceWorkChain``
versus a plain Python loop calling the ``xtb`` executable once per structure (write XYZ, run, parse).

Run: ``.venv/bin/python benchmarks/reference.py [--n 200] [--repeat 3]``
Target (issue 11): engine wall time <= 1.5 x the plain loop (measured 2.6x before: 7.9 s vs 3.1 s, driver
mode, two jobs of 100). The plain loop runs one single-threaded xtb after the other. The engine runs in
driver mode, once with one job of all structures running 2 xtb calls at a time on 2 cores (concurrency),
once with one job running them one at a time (the single-core ratio), and once as before (two jobs of 100
side by side). Uses a throw-away AiiDA profile (SQLite storage in a temporary folder, no broker, ``run``
without daemon) and ``OMP_NUM_THREADS=1``. The machine is shared: each figure is the best and median of
``repeat`` runs, with the load average. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def nh3_structures(n: int, seed: int = 0):
    from ase.build import molecule

    from aiida_mlpes.core.ragged import RaggedArrays

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        atoms = molecule("NH3")
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        images.append(atoms)
    return RaggedArrays.from_atoms(images)


def plain_loop(arrays, xtb: str) -> tuple[float, np.ndarray]:
    from aiida_mlpes.core.reference.xtb import run_xtb

    start = time.perf_counter()
    energies = []
    for i in range(len(arrays)):
        sl = arrays.atom_slice(i)
        energies.append(run_xtb(arrays.atomic_numbers[sl], arrays.positions[sl], executable=xtb).energy)
    return time.perf_counter() - start, np.array(energies)


def setup_profile(folder: Path, poll_interval: int = 1):
    """A temporary sqlite_dos profile without broker and a localhost computer polled without delay.

    Without a broker, a work chain learns that a child finished by polling every ``runner.poll.interval``
    seconds (``verdi presto`` sets 1 s, aiida's default is 60 s); with a broker it is notified at once.
    """
    os.environ["AIIDA_PATH"] = str(folder)
    from aiida import load_profile, orm
    from aiida.manage.configuration import create_profile, get_config

    config = get_config(create=True)
    create_profile(
        config,
        storage_backend="core.sqlite_dos",
        storage_config={"filepath": str(folder / "storage")},
        name="bench",
        email="bench@localhost",
    )
    config.set_default_profile("bench", overwrite=True)
    config.set_option("runner.poll.interval", poll_interval, scope="bench")
    config.store()
    load_profile("bench", allow_switch=True)
    computer = orm.Computer(
        label="localhost",
        hostname="localhost",
        transport_type="core.local",
        scheduler_type="core.direct",
        workdir=str(folder / "work"),
    ).store()
    computer.configure()
    computer.set_minimum_job_poll_interval(0.0)
    return computer


def engine(arrays, xtb: str, computer, batch_size: int, driver: bool = False, processes: int = 1):
    from aiida import orm
    from aiida.engine import run_get_node

    from aiida_mlpes.data.dataset import PESDataset
    from aiida_mlpes.workflows.reference import ReferenceWorkChain

    code = orm.InstalledCode(
        computer=computer, filepath_executable=xtb, label="xtb", default_calc_job_plugin="mlpes.xtb"
    ).store()
    dataset = PESDataset.from_arrays(arrays).store()
    extra = {}
    if driver:
        runner = str(
            Path(shutil.which("aiida-mlpes-run") or Path(sys.executable).with_name("aiida-mlpes-run"))
        )
        extra["driver_code"] = orm.InstalledCode(
            computer=computer, filepath_executable=runner, label="aiida-mlpes-run"
        ).store()
    start = time.perf_counter()
    results, node = run_get_node(
        ReferenceWorkChain,
        code=code,
        structures=dataset,
        batch_size=batch_size,
        options={
            "environment_variables": {"OMP_NUM_THREADS": "1"},
            "resources": {"num_machines": 1, "num_mpiprocs_per_machine": processes},
        },
        **extra,
    )
    elapsed = time.perf_counter() - start
    if not node.is_finished_ok:
        raise RuntimeError(f"ReferenceWorkChain failed: {node.exit_message}")
    return elapsed, results["dataset"].get_arrays(), node


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200, help="number of NH3 structures")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (best and median)")
    parser.add_argument(
        "--poll-interval",
        type=int,
        default=1,
        help="runner.poll.interval (s): how often a work chain checks its children without broker",
    )
    args = parser.parse_args()
    xtb = shutil.which("xtb")
    if xtb is None:
        sys.exit("xtb executable not found")
    xtb = str(Path(xtb).resolve())
    os.environ["OMP_NUM_THREADS"] = "1"
    arrays = nh3_structures(args.n)
    setups = [
        # label, batch size, xtb calls at a time per job
        ("1 job x 2 processes (2 cores)", args.n, 2),
        ("1 job x 1 process (1 core)", args.n, 1),
        ("2 jobs x 1 process (as before)", (args.n + 1) // 2, 1),
    ]
    loops: list[float] = []
    times: dict[str, list[float]] = {label: [] for label, _, _ in setups}
    agree = True
    with tempfile.TemporaryDirectory() as tmp:
        computer = setup_profile(Path(tmp), args.poll_interval)
        engine(nh3_structures(2, seed=99), xtb, computer, 2, True)  # warm-up: imports, first DB writes
        for _ in range(args.repeat):
            t_loop, e_loop = plain_loop(arrays, xtb)
            loops.append(t_loop)
            for label, batch_size, processes in setups:
                t_engine, labelled, _ = engine(arrays, xtb, computer, batch_size, True, processes)
                times[label].append(t_engine)
                # the engine output may be reordered by batches: compare as sorted sets
                agree &= bool(np.allclose(np.sort(labelled.energy), np.sort(e_loop), atol=1e-8))

    best_loop, median_loop = min(loops), statistics.median(loops)
    print(
        f"{args.n} NH3, GFN2-xTB, OMP_NUM_THREADS=1, driver mode, runner.poll.interval {args.poll_interval} s, "
        f"{args.repeat} runs each (best / median)"
    )
    print(f"{'plain loop (xtb + parse, one at a time)':40s} {best_loop:7.2f} / {median_loop:6.2f} s")
    for label, _, _ in setups:
        best, median = min(times[label]), statistics.median(times[label])
        print(
            f"{'ReferenceWorkChain, ' + label:40s} {best:7.2f} / {median:6.2f} s   ratio "
            f"{best / best_loop:5.2f} / {median / median_loop:5.2f}   (target <= 1.5; before 2.6)"
        )
    print(f"energies agree with the loop (1e-8 eV): {agree}")
    print(
        f"load average (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
