"""DMC throughput: walker-steps per second for NH3 on PhysNet at Asparagus's size and at our default size.

Models: PhysNet 128 features / 64 radial basis functions / 5 blocks (Asparagus's size) and ``ModelConfig()``
defaults, float32, freshly initialised (speed does not depend on the weights; the zero-initialised output
layer makes the surface flat, so the population stays at its target), evaluated through
``MLPESCalculator.as_potential`` (DMC uses its energy-only path: inference mode, no autograd). Also measures
the DMC loop's own overhead on a cheap analytic potential, and peak memory (resident set size) after runs
of different lengths to show that memory does not grow with nsteps.

After each size, ``roofline.py`` replays the matrix products and activations of one energy call on 1,000
NH3 alone (1 thread): the ceiling they set, times the cores, shows whether the target is reachable at all.

Each figure is printed beside its target (issue 11) and Asparagus's figure measured side by side on this
machine kind (shared/REFERENCE_NUMBERS.md). "n thread(s)" rows call ``torch.set_num_threads(n)``; the
potential's thread rule (core/threads.py) uses at most that many, and the count it uses is printed.
Walker-steps per CPU-second of this process are printed too: on a shared machine they are less inflated
by other jobs than wall-clock figures (with 2 threads they are per core, not per run).

Usage: ``.venv/bin/python benchmarks/dmc.py [--steps 30] [--walkers 1000 10000] [--threads 1 2] [--repeats 3]``.
Nothing here is asserted.
"""

from __future__ import annotations

import os

# before torch loads OpenMP (aiida_mlpes sets the same; see core/threads.py): idle threads sleep, not spin
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from roofline import report as roofline_report

from aiida_mlpes.core.characterize.analytic import HarmonicTrap
from aiida_mlpes.core.characterize.dmc import run_dmc

NUMBERS = np.array([7, 1, 1, 1])
NH3 = np.array(
    [[0.0, 0.0, 0.0975], [0.9441, 0.0, -0.2692], [-0.4720, 0.8176, -0.2692], [-0.4720, -0.8176, -0.2692]]
)
#: issue 11 targets at 1,000 walkers and the figures before it (walker-steps/s)
TARGETS = {"asparagus_size": (15_000, 9_714), "default": (80_000, 49_057)}
#: Asparagus 0.7.2, PhysNet 128/64/5 float64, same machine kind (REFERENCE_NUMBERS.md, side by side)
ASPARAGUS = {100: 2_397, 1000: 1_764}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(potential, nwalkers: int, nsteps: int, label: str, repeats: int = 1, note: str = "") -> float:
    """Time ``repeats`` DMC runs; print the best and the median throughput; return the best."""
    rates, cpu_rates = [], []
    for repeat in range(repeats):
        cpu = time.process_time()
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
        cpu = time.process_time() - cpu
        rates.append(result.walker_steps_per_second)
        cpu_rates.append(result.population_trace.sum() / cpu)
    print(
        f"{label:<34s} walkers {nwalkers:>6d}  steps {nsteps:>4d}  best {max(rates):>8,.0f}  median "
        f"{np.median(rates):>8,.0f} walker-steps/s  (per CPU-s {max(cpu_rates):>8,.0f})  "
        f"RSS {peak_rss_mb():4.0f} MB{note}",
        flush=True,
    )
    return max(rates)


def main() -> None:
    warnings.filterwarnings("ignore", message="DMC: E_ref drifts")  # timing runs are not equilibrated
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--walkers", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", default=["asparagus_size", "default"], choices=list(TARGETS))
    args = parser.parse_args()
    load = os.getloadavg()
    print(
        f"torch {torch.__version__}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        f"on {os.cpu_count()} CPUs (shared machine: wall-clock figures are noisy)"
    )
    trap = HarmonicTrap(NH3, 30.0)
    for nwalkers in args.walkers:
        run(trap, nwalkers, 200, "DMC loop only (analytic)", args.repeats)

    from aiida_mlpes.core.calculator import MLPESCalculator
    from aiida_mlpes.core.models import ModelConfig, build_model, save_model

    configs = {
        "asparagus_size": ModelConfig(elements=[1, 7], n_features=128, n_rbf=64, n_blocks=5),
        "default": ModelConfig(elements=[1, 7]),
    }
    summary = []
    for size in args.sizes:
        config = configs[size]
        model = build_model(config)
        n_params = sum(p.numel() for p in model.parameters())
        with tempfile.TemporaryDirectory() as tmp:
            path = save_model(model, Path(tmp) / "physnet.pt")
            potential = MLPESCalculator(path).as_potential(NUMBERS)
        name = f"{config.n_features}/{config.n_rbf}/{config.n_blocks}"
        target, before = TARGETS[size]
        print(
            f"\nPhysNet {name} ({size}): {n_params:,} parameters, float32; target at 1,000 walkers "
            f">= {target:,} walker-steps/s (before: {before:,}); Asparagus 128/64/5: "
            f"{ASPARAGUS[100]:,} (100 walkers) / {ASPARAGUS[1000]:,} (1,000)"
        )
        previous = torch.get_num_threads()
        for threads in args.threads:
            torch.set_num_threads(threads)
            run(potential, 100, 3, f"warm-up, {threads} thread(s)")
            for nwalkers in args.walkers:
                used = potential.threads(nwalkers)
                best = run(
                    potential,
                    nwalkers,
                    args.steps,
                    f"PhysNet {name}, {threads} thread(s)",
                    args.repeats,
                    f"  [{used} thread(s) used]",
                )
                if nwalkers == 1000:
                    summary.append((name, threads, best, target))
        torch.set_num_threads(previous)
        ceiling = roofline_report(f"PhysNet {name}", model.eval(), NUMBERS, NH3, 1000, forces=False)
        cores = max(args.threads)
        limit = cores * 1000 / (ceiling["gemm_s"] + ceiling["activation_s"])
        print(
            f"{'':4s}with {cores} core(s) and perfect scaling: at most {limit:,.0f} walker-steps/s from the "
            f"matrix products and activations alone (target {target:,}: "
            f"{'within' if limit >= target else 'ABOVE'} this ceiling)"
        )
        for nsteps in (args.steps, 2 * args.steps):
            run(potential, args.walkers[-1], nsteps, f"PhysNet {name} (memory vs steps)")
    print("\nsummary at 1,000 walkers (best wall-clock walker-steps/s vs target):")
    for name, threads, best, target in summary:
        verdict = "met" if best >= target else "MISSED"
        print(f"  PhysNet {name}, {threads} thread(s): {best:,.0f} vs target {target:,}: {verdict}")


if __name__ == "__main__":
    main()
