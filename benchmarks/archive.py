"""Publication cost: seconds and MB to export and import (``aiida.tools.archive``) a 10,000-conformation PESDataset
node and a process graph (xtb labelling in batches + a short training run, the nodes a loop iteration makes).

    .venv/bin/python benchmarks/archive.py [--conformations 10000] [--graph-structures 96] [--repeats 3]

Uses throw-away profiles in a temporary AIIDA_PATH (SQLite storage, no broker); each import goes into a fresh,
empty profile. Prints best and median of the repeats; the machine may be shared, so times are noisy.
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

TINY = {"n_features": 16, "n_rbf": 8, "n_blocks": 1, "cutoff": 4.0}


def make_profile(folder: Path, name: str):
    """Create and load the SQLite profile ``name`` in the configuration of ``folder``."""
    from aiida import load_profile
    from aiida.manage.configuration import create_profile, get_config

    config = get_config(create=True)
    create_profile(
        config,
        storage_backend="core.sqlite_dos",
        storage_config={"filepath": str(folder / name)},
        name=name,
        email="bench@localhost",
    )
    config.set_option("runner.poll.interval", 0, scope=name)
    config.set_option("logging.aiida_loglevel", "WARNING", scope=name)  # no per-process REPORT lines
    config.store()
    return load_profile(name, allow_switch=True)


def molecules(n: int, seed: int = 0, labelled: bool = False):
    """``n`` displaced H2O / CH4 / NH3 / H2CO conformations (energies and forces random if ``labelled``)."""
    from ase.build import molecule

    from aiida_mlpes.core.ragged import RaggedArrays

    rng = np.random.default_rng(seed)
    names = ("H2O", "CH4", "NH3", "H2CO")
    images = []
    for i in range(n):
        atoms = molecule(names[i % len(names)])
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        images.append(atoms)
    arrays = RaggedArrays.from_atoms(images, source="import:benchmark")
    if labelled:
        arrays.energy = rng.normal(size=n) - 1000.0
        arrays.forces = rng.normal(size=(len(arrays.positions), 3))
    return arrays


def build_graph(folder: Path, n_structures: int) -> list:
    """Label ``n_structures`` with xtb (batches of 12) and train 3 epochs on them; return the two processes."""
    from aiida import orm
    from aiida.engine import run_get_node

    from aiida_mlpes.calculations.train import TrainCalculation
    from aiida_mlpes.data.dataset import PESDataset
    from aiida_mlpes.workflows.reference import ReferenceWorkChain

    computer = orm.Computer(
        label="localhost",
        hostname="localhost",
        transport_type="core.local",
        scheduler_type="core.direct",
        workdir=str(folder / "work"),
    ).store()
    computer.configure(safe_interval=0.0)
    computer.set_minimum_job_poll_interval(0.0)
    xtb = orm.InstalledCode(
        label="xtb",
        computer=computer,
        filepath_executable=shutil.which("xtb"),
        default_calc_job_plugin="mlpes.xtb",
    ).store()
    runner = orm.InstalledCode(
        label="aiida-mlpes-run",
        computer=computer,
        filepath_executable=str(Path(sys.executable).with_name("aiida-mlpes-run")),
    ).store()
    structures = PESDataset.from_arrays(molecules(n_structures, seed=1)).store()
    labelled, reference = run_get_node(
        ReferenceWorkChain,
        code=xtb,
        structures=structures,
        batch_size=orm.Int(12),
        options=orm.Dict({"environment_variables": {"OMP_NUM_THREADS": "1"}}),
    )
    assert reference.is_finished_ok, reference.exit_message
    settings = {"model": TINY, "training": {"batch_size": 8, "max_epochs": 3, "progress_bar": False}}
    _, train = run_get_node(
        TrainCalculation,
        code=runner,
        dataset=labelled["dataset"],
        settings=orm.Dict(settings),
        threads=orm.Int(1),
    )
    assert train.is_finished_ok, train.exit_message
    return [reference, train]


def count_nodes() -> int:
    from aiida import orm

    return orm.QueryBuilder().append(orm.Node).count()


def measure(folder: Path, label: str, entities_pks: list[int], source: str, repeats: int) -> None:
    """Export ``entities_pks`` of profile ``source`` and import the archive into fresh profiles, ``repeats`` times."""
    from aiida import load_profile, orm
    from aiida.tools.archive import create_archive, import_archive

    exports, imports, sizes = [], [], []
    for k in range(repeats):
        load_profile(source, allow_switch=True)
        nodes = count_nodes()
        entities = [orm.load_node(pk) for pk in entities_pks]
        archive = folder / f"{label}-{k}.aiida"
        start = time.perf_counter()
        create_archive(entities, filename=archive)
        exports.append(time.perf_counter() - start)
        sizes.append(archive.stat().st_size / 1e6)
        make_profile(folder, f"{label}-import-{k}")
        start = time.perf_counter()
        import_archive(archive)
        imports.append(time.perf_counter() - start)
        imported = count_nodes()
        archive.unlink()
    print(
        f"{label:28s} nodes {nodes:5d} (imported {imported:5d})  archive {statistics.median(sizes):7.2f} MB  "
        f"export best {min(exports):6.2f} s median {statistics.median(exports):6.2f} s  "
        f"import best {min(imports):6.2f} s median {statistics.median(imports):6.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conformations", type=int, default=10_000)
    parser.add_argument("--graph-structures", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not shutil.which("xtb"):
        sys.exit("xtb not found: install it (apt-get install xtb) or run scripts/setup.sh")

    with tempfile.TemporaryDirectory(prefix="mlpes-archive-bench-") as tmp:
        folder = Path(tmp)
        os.environ["AIIDA_PATH"] = str(folder)
        from aiida_mlpes.data.dataset import PESDataset

        make_profile(folder, "dataset")
        arrays = molecules(args.conformations, labelled=True)
        node = PESDataset.from_arrays(arrays, level_of_theory="random").store()
        with node.as_path() as path:
            h5_mb = Path(path).stat().st_size / 1e6
        print(
            f"PESDataset: {args.conformations} conformations, {len(arrays.positions)} atoms, HDF5 {h5_mb:.2f} MB"
        )
        measure(folder, f"dataset ({args.conformations})", [node.pk], "dataset", args.repeats)

        make_profile(folder, "graph")
        start = time.perf_counter()
        processes = build_graph(folder, args.graph_structures)
        print(
            f"graph: {args.graph_structures} structures labelled + trained in {time.perf_counter() - start:.1f} s"
        )
        measure(
            folder,
            f"graph ({args.graph_structures} structures)",
            [p.pk for p in processes],
            "graph",
            args.repeats,
        )
        print("machine shared with other jobs: figures are noisy")


if __name__ == "__main__":
    main()
