"""Dataset throughput: append, read, split and merge 100,000 conformations of 10 atoms; peak memory.

Run: .venv/bin/python benchmarks/dataset.py [--n 100000]
Target (issue 3): merging two such datasets takes under a few seconds, memory proportional to one.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from aiida_mlpes.core.dataset import Dataset, DatasetWriter, merge_files, read_arrays
from aiida_mlpes.core.ragged import RaggedArrays


def synthetic(m: int, n_atoms: int, seed: int) -> RaggedArrays:
    rng = np.random.default_rng(seed)
    total = m * n_atoms
    return RaggedArrays(
        n_atoms=np.full(m, n_atoms),
        atomic_numbers=rng.choice([1, 6, 7, 8], size=total),
        positions=rng.normal(size=(total, 3)) * 2,
        energy=rng.normal(size=m),
        forces=rng.normal(size=(total, 3)),
        dipole=rng.normal(size=(m, 3)),
    )


def timed(label: str, func, count: int):
    tracemalloc.start()
    start = time.perf_counter()
    result = func()
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"{label:34s} {elapsed:7.2f} s  {count / elapsed:12,.0f} conformations/s  peak Python memory {peak / 2**20:7.1f} MiB"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000, help="conformations per dataset")
    parser.add_argument("--atoms", type=int, default=10)
    args = parser.parse_args()
    m = args.n
    one = synthetic(m, args.atoms, 0)
    other = synthetic(m, args.atoms, 1)
    other = RaggedArrays.concatenate(
        [other.select(range(m // 2)), one.select(range(m // 2))]
    )  # half duplicates
    size_mib = (one.positions.nbytes + one.forces.nbytes) / 2**20
    print(
        f"{m:,} conformations of {args.atoms} atoms per dataset; positions+forces in memory: {size_mib:.0f} MiB"
    )
    with tempfile.TemporaryDirectory() as tmp:
        a, b, out = Path(tmp) / "a.h5", Path(tmp) / "b.h5", Path(tmp) / "merged.h5"

        def append(path, arrays, chunks=10):
            with DatasetWriter(path, level_of_theory="synthetic") as writer:
                for part in np.array_split(np.arange(len(arrays)), chunks):
                    writer.append(arrays.select(part))

        timed("append (10 chunks, incl. hashing)", lambda: append(a, one), m)
        append(b, other)
        timed("read whole file", lambda: read_arrays(a), m)
        ds = Dataset(a)
        idx = np.random.default_rng(0).integers(0, m, 1000)
        timed("random access, 1,000 conformations", lambda: [ds[int(i)] for i in idx], 1000)
        timed("split 80/10/10", lambda: ds.split(), m)
        stats = timed("merge two datasets (dedup)", lambda: merge_files([a, b], out), 2 * m)
        print(
            f"merge statistics: {stats}; file sizes {a.stat().st_size / 2**20:.0f} + {b.stat().st_size / 2**20:.0f} -> {out.stat().st_size / 2**20:.0f} MiB"
        )
    print(
        f"peak resident memory of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB"
    )


if __name__ == "__main__":
    main()
