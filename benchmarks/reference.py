"""Engine overhead of reference labelling: N NH3 structures with GFN2-xTB through ``ReferenceWorkChain``
versus a plain Python loop calling the ``xtb`` executable once per structure (write XYZ, run, parse).

Run: ``.venv/bin/python benchmarks/reference.py [--n 200] [--batch-size 100]``
Target (issue 4): engine wall time <= 1.3 x the plain loop. Uses a throw-away AiiDA profile
(SQLite storage in a temporary folder, no broker, ``run`` without daemon) and ``OMP_NUM_THREADS=1``.
Figures are noisy on a shared machine; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
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


def engine(arrays, xtb: str, computer, batch_size: int, driver: bool = False):
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
        options={"environment_variables": {"OMP_NUM_THREADS": "1"}},
        **extra,
    )
    elapsed = time.perf_counter() - start
    if not node.is_finished_ok:
        raise RuntimeError(f"ReferenceWorkChain failed: {node.exit_message}")
    return elapsed, results["dataset"].get_arrays(), node


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200, help="number of NH3 structures")
    parser.add_argument("--batch-size", type=int, default=100, help="structures per CalcJob")
    parser.add_argument(
        "--poll-interval",
        type=int,
        default=1,
        help="runner.poll.interval (s): how often a work chain checks its children without broker",
    )
    parser.add_argument(
        "--driver",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="driver mode: one aiida-mlpes-run process runs all xtb calls of a job (default); "
        "--no-driver: one CodeInfo per structure",
    )
    args = parser.parse_args()
    xtb = shutil.which("xtb")
    if xtb is None:
        sys.exit("xtb executable not found")
    xtb = str(Path(xtb).resolve())
    os.environ["OMP_NUM_THREADS"] = "1"
    arrays = nh3_structures(args.n)

    with tempfile.TemporaryDirectory() as tmp:
        computer = setup_profile(Path(tmp), args.poll_interval)
        engine(nh3_structures(2, seed=99), xtb, computer, 2, args.driver)  # warm-up: imports, first DB writes
        t_loop, e_loop = plain_loop(arrays, xtb)
        t_engine, labelled, node = engine(arrays, xtb, computer, args.batch_size, args.driver)
        jobs = sum(
            1 for n in node.called_descendants if n.node_type.startswith("process.calculation.calcjob")
        )

    # the engine output may be reordered by batches: compare as sorted sets
    agree = np.allclose(np.sort(labelled.energy), np.sort(e_loop), atol=1e-8)
    print(
        f"structures               {args.n} NH3, GFN2-xTB, OMP_NUM_THREADS=1, batch size {args.batch_size}, "
        f"runner.poll.interval {args.poll_interval} s"
    )
    print(f"plain loop (xtb + parse) {t_loop:8.2f} s   {t_loop / args.n * 1000:7.1f} ms/structure")
    print(
        f"ReferenceWorkChain       {t_engine:8.2f} s   {t_engine / args.n * 1000:7.1f} ms/structure "
        f"({jobs} CalcJobs, run without daemon)"
    )
    print(f"ratio engine / loop      {t_engine / t_loop:8.2f}   (target <= 1.3)")
    print(f"energies agree (1e-8 eV) {agree}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
