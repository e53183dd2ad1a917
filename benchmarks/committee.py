"""Committee of 4 default-size PhysNets (``ModelConfig()`` defaults) against one model, each figure beside
its target (issue 11): training wall time per epoch (target <= 1.6x one model's), energy+forces of 1,000 NH3
(target <= 1.5x) and DMC walker-steps/s with the committee spread (``run_dmc(..., uncertainty_threshold=...)``,
target <= 1.5x slowdown).

Data: 100 NH3 geometries, random Gaussian displacements (0.06 Angstrom) around the GFN2-xTB minimum,
labelled with GFN2-xTB through tblite (no downloads; cached in the temp folder, see ``benchmarks/train.py``).
Split 80/10/10, batch 32, the paper's training settings. The single model is evaluated the way users get
it (``MLPESCalculator(...).as_potential``, which takes the hand-written fast paths); the committee runs the
regular forward of the one model definition for all members at once (``torch.func.vmap``). A member loop
(4 single models one after another, the old ensemble path) is shown for comparison.

    .venv/bin/python benchmarks/committee.py [--threads 1] [--repeats 3] [--epochs 10] [--steps 20]

Figures are noisy on a shared 2-core machine: each is timed ``--repeats`` times (best and median shown).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train import nh3_data

from aiida_mlpes.core.calculator import MLPESCalculator
from aiida_mlpes.core.characterize.dmc import run_dmc
from aiida_mlpes.core.models import Committee, ModelConfig, build_model

K = 4
NUMBERS = np.array([7, 1, 1, 1])
TARGETS = {"train": 1.6, "energy_forces": 1.5, "dmc": 1.5}


def stats(values: list[float]) -> tuple[float, float]:
    return float(min(values)), float(np.median(values))


def epoch_seconds(arrays, split, config: ModelConfig, size: int, epochs: int, threads: int) -> float:
    """Wall seconds per epoch from the difference of a short and a long run (set-up cancels)."""
    from aiida_mlpes.core.training import Trainer, TrainingConfig

    def run(n: int) -> float:
        settings = TrainingConfig(
            max_epochs=n, validation_interval=10**6, progress_bar=False, threads=threads, device="cpu"
        )
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            Trainer(config, settings, tmp, committee_size=size).fit(arrays, split["train"], split["valid"])
            return time.perf_counter() - start

    return (run(2 + epochs) - run(2)) / epochs


def members(config: ModelConfig) -> list:
    out = []
    for seed in range(K):
        torch.manual_seed(seed)
        model = build_model(config).eval()
        with torch.no_grad():  # small weights in the zero-initialised output layers: members differ by meV
            for block in getattr(model, "blocks", []):
                block.output.weight.normal_(0.0, 1e-3)
        out.append(model)
    return out


def best_of(function, repeats: int) -> tuple[float, float]:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return stats(times)


def dmc_rate(
    potential, nwalkers: int, nsteps: int, repeats: int, threshold: float | None
) -> tuple[float, float]:
    positions = nh3_minimum()
    rates = []
    for repeat in range(repeats):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = run_dmc(
                potential,
                NUMBERS,
                positions,
                nwalkers=nwalkers,
                nsteps=nsteps,
                eqsteps=0,
                timestep=5.0,
                seed=repeat,
                check=False,
                hole_threshold=None,
                collapse_factor=0.0,
                uncertainty_threshold=threshold,
            )
        rates.append(result.walker_steps_per_second)
    return max(rates), float(np.median(rates))


def nh3_minimum() -> np.ndarray:
    return np.array(
        [[0.0, 0.0, 0.0975], [0.9441, 0.0, -0.2692], [-0.4720, 0.8176, -0.2692], [-0.4720, -0.8176, -0.2692]]
    )


def line(label: str, single: tuple[float, float], committee: tuple[float, float], target: float, unit: str,
         higher_is_better: bool = False) -> None:  # fmt: skip
    ratio = single[0] / committee[0] if higher_is_better else committee[0] / single[0]
    ratio_median = single[1] / committee[1] if higher_is_better else committee[1] / single[1]
    verdict = "met" if ratio <= target else "MISSED"
    print(
        f"{label:<34s} one {single[0]:>10.4g} (median {single[1]:.4g})  committee {committee[0]:>10.4g} "
        f"(median {committee[1]:.4g}) {unit}  ratio {ratio:.2f}x (median {ratio_median:.2f}x)  "
        f"target <= {target}x: {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10, help="timed training epochs per run")
    parser.add_argument("--steps", type=int, default=20, help="DMC steps per run")
    parser.add_argument("--walkers", type=int, default=1000)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = ModelConfig(elements=[1, 7])
    print(
        f"committee of {K} x PhysNet {config.n_features}/{config.n_rbf}/{config.n_blocks} {config.dtype} vs one "
        f"model; torch threads {args.threads}; best of {args.repeats} (median in brackets)\n"
    )

    if not args.skip_training:
        from aiida_mlpes.core.dataset import split_indices

        data = Path(tempfile.gettempdir()) / "aiida-mlpes-benchmarks" / "nh3_gfn2_random_100.h5"
        arrays = nh3_data(data, "random")
        split = split_indices(arrays.hash, seed=0)
        single = [
            epoch_seconds(arrays, split, config, 1, args.epochs, args.threads) for _ in range(args.repeats)
        ]
        committee = [
            epoch_seconds(arrays, split, config, K, args.epochs, args.threads) for _ in range(args.repeats)
        ]
        line("training s/epoch (80 NH3, batch 32)", stats(single), stats(committee), TARGETS["train"], "s")
        print(f"{'':34s} (4 separate trainings would take {4 * min(single):.4g} s/epoch)")

    models = members(config)
    committee_model = Committee.from_members(models)
    rng = np.random.default_rng(0)
    positions = nh3_minimum()[None] + 0.05 * rng.normal(size=(1000, 4, 3))
    one = MLPESCalculator(models[0]).as_potential(NUMBERS, num_threads=args.threads)
    many = MLPESCalculator(committee_model).as_potential(NUMBERS, num_threads=args.threads, return_std=True)
    loop = MLPESCalculator(models[0]).as_potential(NUMBERS, num_threads=args.threads)
    loop.models = list(models)  # the old path: members one after another
    loop._numpy = [None] * K
    loop.n_members = K
    regular = MLPESCalculator(models[0]).as_potential(NUMBERS, num_threads=args.threads, use_numpy=False)
    models[0].use_fast_path = False
    regular_time = best_of(lambda: regular.evaluate(positions), args.repeats)
    models[0].use_fast_path = True
    single_time = best_of(lambda: one.evaluate(positions), args.repeats)
    committee_time = best_of(lambda: many.evaluate(positions), args.repeats)
    line("energy+forces, 1000 NH3", single_time, committee_time, TARGETS["energy_forces"], "s")
    for m in models:
        m.use_fast_path = False
    loop_time = best_of(lambda: loop.evaluate(positions), args.repeats)
    for m in models:
        m.use_fast_path = True
    committee_model.strategy = "vmap"
    vmap_time = best_of(lambda: many.evaluate(positions), args.repeats)
    committee_model.strategy = "grouped"
    print(
        f"{'':34s} one model, regular forward: {regular_time[0]:.4g} s (committee {committee_time[0] / regular_time[0]:.2f}x "
        f"of it); member loop: {loop_time[0]:.4g} s ({loop_time[0] / single_time[0]:.2f}x); vmap strategy: "
        f"{vmap_time[0]:.4g} s ({vmap_time[0] / single_time[0]:.2f}x)"
    )
    small = positions[:1]
    one_small = best_of(lambda: one.evaluate(small), 20 * args.repeats)
    many_small = best_of(lambda: many.evaluate(small), 20 * args.repeats)
    print(
        f"{'energy+forces, 1 NH3 (ASE calculator)':34s} one {one_small[0] * 1e3:.3g} ms, committee "
        f"{many_small[0] * 1e3:.3g} ms ({many_small[0] / one_small[0]:.2f}x; no target)"
    )

    single_rate = dmc_rate(one, args.walkers, args.steps, args.repeats, None)
    committee_rate = dmc_rate(many, args.walkers, args.steps, args.repeats, 1.0)
    line(
        f"DMC walker-steps/s ({args.walkers} walkers)", single_rate, committee_rate, TARGETS["dmc"], "/s",
        higher_is_better=True,
    )  # fmt: skip
    print("\n(ratio = committee cost / one model's cost; the machine is shared, so figures are noisy)")


if __name__ == "__main__":
    main()
