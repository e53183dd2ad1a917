"""Deterministic torch thread counts: a rule from the work size and the cores the job is given.

The cores come from ``OMP_NUM_THREADS``, else ``SLURM_CPUS_PER_TASK``, else the CPU affinity mask; a call's
thread count from its atom count (:func:`threads_for`). No timing is involved, so a seeded run does the
same arithmetic in the same order every time (bitwise reproducible on the same machine and settings), and
``torch.set_num_threads`` / an explicit ``threads`` setting is an upper bound that is respected.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

#: A chunk gets one torch thread per this many atoms (at least one, at most the cores given): below it a
#: second thread's start-up and synchronisation cost more than they save, and on a shared machine a thread
#: that waits for a busy core can slow a call down several times.
ATOMS_PER_THREAD = 512


#: OpenMP threads of an in-process quantum-chemistry program (tblite, PySCF, any ASE calculator) when a task's
#: settings give no ``threads``. Their multithreaded reductions are not bitwise reproducible: tblite's GFN2-xTB
#: forces on one CH3OH structure took 12-14 different values in 20 calls with 2 threads, one value with 1
#: (measured). Labels that differ in the last bits train different models, so a seeded loop would not repeat.
#: Small molecules lose little; a task's ``threads`` setting trades reproducibility for speed.
REFERENCE_THREADS = 1


def job_cores() -> int:
    """CPU cores this process is given: ``OMP_NUM_THREADS``, else ``SLURM_CPUS_PER_TASK``, else the size of
    the CPU affinity mask (``os.sched_getaffinity``), else ``os.cpu_count()``."""
    for name in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        try:
            count = int(value.split(",")[0])
        except ValueError:
            raise ValueError(f"environment variable {name}={value!r} is not a positive integer") from None
        if count < 1:
            raise ValueError(f"environment variable {name}={value!r} is not a positive integer")
        return count
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        return max(1, len(affinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_for(n_atoms: int, cores: int) -> int:
    """Torch threads for a chunk of ``n_atoms`` atoms on ``cores`` cores: one per ``ATOMS_PER_THREAD``
    atoms, at least 1, at most ``cores``. A rule, not a timing: the same call always runs the same way, so
    a seeded run is bitwise reproducible."""
    return max(1, min(int(cores), int(n_atoms) // ATOMS_PER_THREAD))


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily run torch on ``n`` intra-op threads (``None``: leave the setting alone)."""
    previous = torch.get_num_threads()
    if n is None or n == previous:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def default_threads() -> int:
    """Torch's current thread setting capped by :func:`job_cores` (what a call may use at most)."""
    return max(1, min(torch.get_num_threads(), job_cores()))
