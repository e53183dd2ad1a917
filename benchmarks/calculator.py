"""Speed of the ML calculator on NH3: single-structure latency and batched throughput, beside Asparagus.

Prints, for PhysNet and PaiNN at Asparagus's default size (128 features, 64 radial functions, 5 blocks,
float32) and at our default ModelConfig:

- energy+forces latency of one NH3 through the ASE calculator (``atoms.get_forces()`` after a move) and
  through the batched potential with B = 1 (median and best of many calls, ms);
- throughput for 1,000 NH3 in one call (structures/s), energy+forces and energies only (``energies()``,
  what DMC needs), with at most 1 and at most ``--threads`` threads (the thread rule of core/threads.py
  decides within that bound; the count used is printed);
- for PhysNet, the one-NH3 latency of the PyTorch definition alone (numpy engine off): the numpy engine
  (models/fast_numpy.py) stays only while it is at least 1.5x faster than that.

Asparagus v0.7.2 measured side by side on this machine kind (shared/REFERENCE_NUMBERS.md): ASE calculator
9.33 ms per NH3 energy+forces (PhysNet 128/64/5, float64); earlier days 14.6-23 ms (PhysNet), 18.5-24.8 ms
(PaiNN).

    .venv/bin/python benchmarks/calculator.py [--threads 2] [--repeats 300]

Figures are wall-clock and noisy on a shared 2-core machine (the load average is printed): run it when the
machine is quiet. Weights are random (speed does not depend on training).
"""

from __future__ import annotations

import os

# before torch loads OpenMP (aiida_mlpes sets the same; see core/threads.py): idle threads sleep, not spin
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import time

import numpy as np
import torch
from ase import Atoms

from aiida_mlpes.core.calculator import MLPESCalculator
from aiida_mlpes.core.models import ModelConfig, build_model

NH3 = np.array([[0.0, 0.0, 0.116], [0.939, 0.0, -0.271], [-0.470, 0.813, -0.271], [-0.470, -0.813, -0.271]])
NUMBERS = [7, 1, 1, 1]
ASPARAGUS = {"physnet": "9.33 ms (side by side; 14.6-23 ms other days)", "painn": "18.5-24.8 ms"}


def timings(fn, repeats: int, warmup: int = 20) -> tuple[float, float, float]:
    """Median and minimum wall time and median CPU time of ``fn()`` in ms (CPU time is less inflated than
    wall time when other jobs compete for the cores)."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    return float(np.median(wall) * 1e3), float(np.min(wall) * 1e3), float(np.median(cpu) * 1e3)


def throughput(fn, n_structures: int, repeats: int = 3) -> float:
    """Best structures per second of ``fn()`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    best = min(_timed(fn) for _ in range(repeats))
    return n_structures / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_model(label: str, config: ModelConfig, args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model = build_model(config)
    n_params = sum(p.numel() for p in model.parameters())
    calc = MLPESCalculator(model)
    atoms = Atoms(numbers=NUMBERS, positions=NH3)
    atoms.calc = calc
    rng = np.random.default_rng(0)

    def ase_call() -> None:
        atoms.positions = NH3 + rng.normal(0.0, 0.01, NH3.shape)
        atoms.get_forces()

    potential = calc.as_potential(NUMBERS)
    one = NH3[None]
    med_ase, min_ase, cpu_ase = timings(ase_call, args.repeats)
    med_pot, min_pot, cpu_pot = timings(lambda: potential(one), args.repeats)
    print(
        f"{label:<28s} {n_params / 1e6:5.2f} M params | one NH3 E+F (median/best/median CPU, ms): "
        f"ASE {med_ase:5.2f}/{min_ase:5.2f}/{cpu_ase:5.2f}, potential {med_pot:5.2f}/{min_pot:5.2f}/{cpu_pot:5.2f} "
        f"| Asparagus {ASPARAGUS[config.architecture]}"
    )
    if config.architecture == "physnet":
        definition = calc.as_potential(NUMBERS, use_numpy=False)
        med_def, min_def, cpu_def = timings(lambda: definition(one), args.repeats)
        print(
            f"{'':<28s} PyTorch definition alone (numpy engine off): {med_def:5.2f}/{min_def:5.2f}/{cpu_def:5.2f} ms"
            f" -> numpy engine {med_def / med_pot:.1f}x faster (median; kept while >= 1.5x)"
        )
    walkers = NH3[None] + rng.normal(0.0, 0.05, (args.batch, 4, 3))
    for threads in sorted({1, args.threads}):
        pot = calc.as_potential(NUMBERS, num_threads=threads)
        with_forces = throughput(lambda pot=pot: pot(walkers), args.batch)
        energies = throughput(lambda pot=pot: pot.energies(walkers), args.batch)
        print(
            f"{'':<28s} {args.batch} NH3, at most {threads} thread(s) ({pot.threads(args.batch)} used): "
            f"E+F {with_forces:8,.0f} /s, energies only {energies:8,.0f} /s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for the batched runs (also 1)")
    parser.add_argument("--repeats", type=int, default=300, help="calls timed for the latency figures")
    parser.add_argument("--batch", type=int, default=1000, help="structures per batched call")
    parser.add_argument("--only", choices=["physnet", "painn"], default=None)
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {load:.1f}; float32 models")
    asparagus_size = {"elements": [1, 7], "n_features": 128, "n_rbf": 64, "n_blocks": 5, "cutoff": 8.0}
    runs = []
    for arch in ("physnet", "painn"):
        if args.only in (None, arch):
            runs.append((f"{arch} 128/64/5 (Asparagus)", ModelConfig(architecture=arch, **asparagus_size)))
            own = ModelConfig(architecture=arch, elements=[1, 7])
            runs.append((f"{arch} {own.n_features}/{own.n_rbf}/{own.n_blocks} (default)", own))
    for label, config in runs:
        bench_model(label, config, args)
    print("Asparagus DMC (PhysNet 128/64/5, float64): 1,764 walker-steps/s at 1,000 walkers (side by side)")


if __name__ == "__main__":
    main()
