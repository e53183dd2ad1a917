"""Committee of 4 default-size PhysNets (``ModelConfig()`` defaults) against one model, each figure beside
its target (issue 11): training wall time per epoch (target <= 1.6x one model's), energy+forces of 1,000 NH3
(target <= 1.5x) and DMC walker-steps/s with the committee spread (``run_dmc(..., uncertainty_threshold=...)``,
target <= 1.5x slowdown).

Data: 100 NH3 geometries, random Gaussian displacements (0.06 Angstrom) around the GFN2-xTB minimum,
labelled with GFN2-xTB through tblite (no downloads; cached in the temp folder, see ``benchmarks/train.py``).
Split 80/10/10, batch 32, the paper's training settings. The single model is evaluated the way users get
it (``MLPESCalculator(...).as_potential``, which takes the hand-written fast paths); the committee runs the
regular forward of the one model definition once for all members (the ``grouped`` strategy of
``models/committee.py``: batched matmuls over member-blocked rows). The ``vmap`` strategy and the single
model without its fast path are shown for comparison.

    .venv/bin/python benchmarks/committee.py [--threads 1] [--repeats 5] [--epochs 15] [--steps 20]

Figures are noisy on a shared 2-core machine: medians of wall time and of this process's CPU time are shown;
with one thread the CPU time is the robust figure when other jobs compete for the cores.
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

from roofline import breakdown, molecule_batch, training_step_breakdown
from train import nh3_data

from aiida_mlpes.core.calculator import MLPESCalculator
from aiida_mlpes.core.characterize.dmc import run_dmc
from aiida_mlpes.core.models import Committee, ModelConfig, build_model

K = 4
NUMBERS = np.array([7, 1, 1, 1])
TARGETS = {"train": 1.6, "energy_forces": 1.5, "dmc": 1.5}


def nh3_minimum() -> np.ndarray:
    return np.array(
        [[0.0, 0.0, 0.0975], [0.9441, 0.0, -0.2692], [-0.4720, 0.8176, -0.2692], [-0.4720, -0.8176, -0.2692]]
    )


def epoch_times(arrays, split, config: ModelConfig, size: int, epochs: int, threads: int) -> np.ndarray:
    """(epochs, 2) wall and CPU seconds of each training epoch (the loop over the training set: forward,
    forces, loss, backward, optimizer, EMA), after one warm-up epoch."""
    from aiida_mlpes.core.training import Trainer, TrainingConfig

    times: list[tuple[float, float]] = []

    class Timed(Trainer):
        def _train_epoch(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            wall, cpu = time.perf_counter(), time.process_time()
            out = super()._train_epoch(*args, **kwargs)
            times.append((time.perf_counter() - wall, time.process_time() - cpu))
            return out

    settings = TrainingConfig(
        max_epochs=1 + epochs, validation_interval=10**6, progress_bar=False, threads=threads, device="cpu"
    )
    with tempfile.TemporaryDirectory() as tmp:
        Timed(config, settings, tmp, committee_size=size).fit(arrays, split["train"], split["valid"])
    return np.array(times[1:])


def timed(function, repeats: int) -> np.ndarray:
    """(repeats, 2) wall and CPU seconds of ``function()`` after one warm-up call."""
    function()
    out = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        out.append((time.perf_counter() - wall, time.process_time() - cpu))
    return np.array(out)


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


def dmc_seconds(potential, nwalkers: int, nsteps: int, threshold: float | None) -> float:
    """Wall seconds of the DMC loop (also timed from outside, with CPU time, by :func:`timed`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_dmc(
            potential,
            NUMBERS,
            nh3_minimum(),
            nwalkers=nwalkers,
            nsteps=nsteps,
            eqsteps=0,
            timestep=5.0,
            seed=0,
            check=False,
            hole_threshold=None,
            collapse_factor=0.0,
            uncertainty_threshold=threshold,
        )
    return float(result.wall_time)


def line(
    label: str, one: np.ndarray, many: np.ndarray, target: float | None, unit: str, scale: float = 1.0
) -> None:
    """Median wall and CPU figures of one model and of the committee, the ratios and the verdicts."""
    w1, c1 = np.median(one[:, 0]), np.median(one[:, 1])
    wk, ck = np.median(many[:, 0]), np.median(many[:, 1])
    verdict = {r: ("met" if r <= target else "MISSED") if target else "no target" for r in (wk / w1, ck / c1)}
    print(
        f"{label:<30s} one {w1 * scale:8.4g} wall / {c1 * scale:8.4g} CPU {unit}; committee {wk * scale:8.4g} / "
        f"{ck * scale:8.4g}; ratio wall {wk / w1:5.2f}x ({verdict[wk / w1]}), CPU {ck / c1:5.2f}x "
        f"({verdict[ck / c1]})" + (f"; target <= {target}x" if target else "")
    )


def committee_floor(model, positions: np.ndarray, forces: bool) -> float:
    """Lowest possible committee / one-model cost ratio: K times the matrix products and activations of one
    model's call (replayed alone, ``roofline.py``; they scale with the members) over that call's CPU time."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = breakdown(model, molecule_batch(NUMBERS, positions, model.dtype), forces)
    finally:
        torch.set_num_threads(previous)
    return K * (out["gemm_s"] + out["activation_s"]) / out["cpu_s"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=15, help="timed training epochs per model")
    parser.add_argument("--steps", type=int, default=20, help="DMC steps per run")
    parser.add_argument("--walkers", type=int, default=1000)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = ModelConfig(elements=[1, 7])
    print(
        f"committee of {K} x PhysNet {config.n_features}/{config.n_rbf}/{config.n_blocks} {config.dtype} vs one "
        f"model; torch threads {args.threads}; medians of wall and CPU time of this process (CPU time is the "
        "robust figure on a shared machine)\n"
    )

    if not args.skip_training:
        from aiida_mlpes.core.dataset import split_indices

        data = Path(tempfile.gettempdir()) / "aiida-mlpes-benchmarks" / "nh3_gfn2_random_100.h5"
        arrays = nh3_data(data, "random")
        split = split_indices(arrays.hash, seed=0)
        one = epoch_times(arrays, split, config, 1, args.epochs, args.threads)
        many = epoch_times(arrays, split, config, K, args.epochs, args.threads)
        line("training per epoch (80 NH3)", one, many, TARGETS["train"], "s")
        from aiida_mlpes.core.models.batch import collate

        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            model = build_model(config)
            step = training_step_breakdown(model, collate(arrays, split["train"][:32], dtype=model.dtype))
        finally:
            torch.set_num_threads(previous)
        floor = K * (step["gemm_s"] + step["activation_s"]) / step["cpu_s"]
        print(
            f"{'':30s} floor: {K} x one model's matrix products + activations of a training step = "
            f"{floor:.2f}x one model's step (optimizer and EMA not included)"
        )

    models = members(config)
    committee = Committee.from_members(models)
    positions = nh3_minimum()[None] + 0.05 * np.random.default_rng(0).normal(size=(1000, 4, 3))
    one_pot = MLPESCalculator(models[0]).as_potential(NUMBERS, num_threads=args.threads)
    many_pot = MLPESCalculator(committee).as_potential(NUMBERS, num_threads=args.threads, return_std=True)
    one = timed(lambda: one_pot.evaluate(positions), args.repeats)
    many = timed(lambda: many_pot.evaluate(positions), args.repeats)
    line("energy+forces, 1000 NH3", one, many, TARGETS["energy_forces"], "s")
    floors = {forces: committee_floor(models[0], positions, forces) for forces in (True, False)}
    print(
        f"{'':30s} floor: {K} x one model's matrix products + activations = {floors[True]:.2f}x one model's "
        f"energy+forces and {floors[False]:.2f}x its energies (DMC); a target below the floor is out of reach"
    )
    committee.strategy = "vmap"
    vmapped = timed(lambda: many_pot.evaluate(positions), args.repeats)
    committee.strategy = "grouped"
    regular_pot = MLPESCalculator(models[0]).as_potential(NUMBERS, num_threads=args.threads, use_numpy=False)
    regular = timed(lambda: regular_pot.evaluate(positions), args.repeats)
    print(
        f"{'':30s} CPU s: one model through the torch definition (no numpy engine) {np.median(regular[:, 1]):.4g}; committee with the "
        f"vmap strategy {np.median(vmapped[:, 1]):.4g}; K x one model {K * np.median(one[:, 1]):.4g}"
    )
    small = positions[:1]
    line(
        "energy+forces, 1 NH3",
        timed(lambda: one_pot.evaluate(small), 20 * args.repeats),
        timed(lambda: many_pot.evaluate(small), 20 * args.repeats),
        None,
        "ms",
        scale=1e3,
    )

    walker_steps = float(args.walkers * args.steps)
    one = timed(lambda: dmc_seconds(one_pot, args.walkers, args.steps, None), args.repeats)
    many = timed(lambda: dmc_seconds(many_pot, args.walkers, args.steps, 1.0), args.repeats)
    line(f"DMC, {args.walkers} walkers x {args.steps}", one, many, TARGETS["dmc"], "s")
    print(
        f"{'':30s} walker-steps/s (wall): one {walker_steps / np.median(one[:, 0]):,.0f}, committee with spread "
        f"{walker_steps / np.median(many[:, 0]):,.0f}"
    )
    print(
        "\nratio = committee cost / one model's cost (lower is better); the machine is shared, figures are noisy"
    )


if __name__ == "__main__":
    main()
