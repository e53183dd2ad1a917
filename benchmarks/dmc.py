"""DMC throughput: walker-steps per second for NH3 on a PhysNet of Asparagus's default size.

PhysNet with 128 features, 64 radial basis functions, 5 interaction blocks, float32 (freshly initialised:
speed does not depend on the weights; its zero-initialised output layer makes the surface flat, so the
population stays at its target), evaluated through ``MLPESCalculator.as_potential`` (DMC uses its
energy-only path). Also measures the DMC loop's own overhead on a cheap analytic potential, and peak
memory (resident set size) after runs of different lengths to show that memory does not grow with nsteps.

Usage: ``.venv/bin/python benchmarks/dmc.py [--steps 30] [--walkers 1000 10000] [--threads 1 2]``.
Figures are noisy on a shared machine (a second OpenMP thread waiting for a busy core can slow torch down
several times, so both 1 and 2 threads are timed); nothing here is asserted.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from aiida_mlpes.core.characterize.analytic import HarmonicTrap
from aiida_mlpes.core.characterize.dmc import run_dmc

NUMBERS = np.array([7, 1, 1, 1])
NH3 = np.array(
    [[0.0, 0.0, 0.0975], [0.9441, 0.0, -0.2692], [-0.4720, 0.8176, -0.2692], [-0.4720, -0.8176, -0.2692]]
)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(potential, nwalkers: int, nsteps: int, label: str, repeats: int = 1) -> None:
    """Time ``repeats`` DMC runs; print the best and the median throughput (the machine is shared)."""
    rates, walls = [], []
    for repeat in range(repeats):
        # check=False and no hole criteria: a random model has no minimum at NH3's geometry; a timing run
        result = run_dmc(
            potential,
            NUMBERS,
            NH3,
            nwalkers=nwalkers,
            nsteps=nsteps,
            eqsteps=0,
            timestep=5.0,
            seed=repeat,
            check=False,
            hole_threshold=None,
            collapse_factor=0.0,
        )
        rates.append(result.walker_steps_per_second)
        walls.append(result.wall_time / nsteps)
    print(
        f"{label:<32s} walkers {nwalkers:>6d}  steps {nsteps:>5d}  best {max(rates):>10,.0f}  median "
        f"{np.median(rates):>10,.0f} walker-steps/s  ({min(walls) * 1e3:7.1f} ms/step best)  "
        f"peak RSS {peak_rss_mb():5.0f} MB"
    )


def main() -> None:
    warnings.filterwarnings("ignore", message="DMC: E_ref drifts")  # timing runs are not equilibrated
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--walkers", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    trap = HarmonicTrap(NH3, 30.0)
    for nwalkers in args.walkers:
        run(trap, nwalkers, 200, "DMC loop only (analytic)", args.repeats)

    from aiida_mlpes.core.calculator import MLPESCalculator
    from aiida_mlpes.core.models import ModelConfig, build_model, save_model

    config = ModelConfig(architecture="physnet", elements=[1, 7], n_features=128, n_rbf=64, n_blocks=5)
    model = build_model(config)
    n_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        path = save_model(model, Path(tmp) / "physnet.pt")
        potential = MLPESCalculator(path).as_potential(NUMBERS)
    print(f"PhysNet: {n_params:,} parameters, float32")
    for threads in args.threads:
        torch.set_num_threads(threads)
        run(potential, 100, 3, f"warm-up, {threads} thread(s)")
        for nwalkers in args.walkers:
            run(potential, nwalkers, args.steps, f"PhysNet NH3, {threads} thread(s)", args.repeats)
    for nsteps in (args.steps, 2 * args.steps):
        run(potential, args.walkers[-1], nsteps, "PhysNet NH3 (memory vs steps)")


if __name__ == "__main__":
    main()
