"""Metropolis Monte Carlo sampling with random single-atom displacements (Asparagus paper, section 3.1).

Each trial moves one randomly chosen atom by a displacement drawn uniformly from the cube
[-max_step, max_step]^3 (a symmetric proposal) and accepts it with probability min(1, exp(-dE / kT)),
so the chain samples the Boltzmann distribution exp(-E / kT). Only energies are needed.

During the optional warm-up (``warmup_steps`` trials, not sampled) the step size is adapted every
``adapt_interval`` trials towards ``target_acceptance``; it is then frozen, so the production chain is
a proper Metropolis chain (detailed balance holds). Units: K, Angstrom, eV.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from aiida_mlpes.core.sampling._common import Progress, as_systems, check_int, check_real, random_streams
from aiida_mlpes.core.sampling.drivers import MonitoredCalculator
from aiida_mlpes.core.sampling.results import SampleCollector, SampleResult
from aiida_mlpes.core.units import KB

#: Bounds of the adapted step size, Angstrom.
MIN_STEP, MAX_STEP = 1e-4, 2.0
#: Trials per block of pre-drawn random numbers (fixed: changing it changes the chains).
RANDOM_BLOCK = 1024


def check_mc_settings(
    temperature: float,
    steps: int,
    max_step: float,
    save_interval: int,
    warmup_steps: int,
    target_acceptance: float,
    adapt_interval: int,
) -> dict[str, Any]:
    """Validated Monte Carlo settings (ValueError names the bad one)."""
    settings = {
        "temperature": check_real("temperature", temperature),
        "steps": check_int("steps", steps),
        "max_step": check_real("max_step", max_step),
        "save_interval": check_int("save_interval", save_interval),
        "warmup_steps": check_int("warmup_steps", warmup_steps, minimum=0),
        "target_acceptance": check_real("target_acceptance", target_acceptance),
        "adapt_interval": check_int("adapt_interval", adapt_interval),
    }
    if not settings["target_acceptance"] < 1:
        raise ValueError(f"target_acceptance must be between 0 and 1, got {target_acceptance}")
    if settings["max_step"] > MAX_STEP:
        raise ValueError(f"max_step must be <= {MAX_STEP} Angstrom, got {max_step}")
    if settings["save_interval"] > settings["steps"]:
        raise ValueError(
            f"save_interval ({save_interval}) is longer than the run ({steps} trials): no samples"
        )
    return settings


def metropolis_mc(
    systems: Atoms | Sequence[Atoms],
    driver: Calculator,
    *,
    temperature: float,
    steps: int = 10000,
    max_step: float = 0.05,
    save_interval: int = 10,
    warmup_steps: int = 0,
    target_acceptance: float = 0.5,
    adapt_interval: int = 100,
    seed: int | None = None,
) -> SampleResult:
    """Sample each system with a Metropolis chain at ``temperature`` (K).

    Args:
        systems: one or several ASE Atoms, each sampled by its own chain.
        driver: any ASE calculator (energies suffice; forces are kept when the driver computes them).
        temperature: K, > 0.
        steps: production trials per system; every ``save_interval``-th state is kept.
        max_step: largest displacement per Cartesian component, Angstrom (adapted during warm-up).
        warmup_steps: trials before production, in which ``max_step`` is tuned towards
            ``target_acceptance`` every ``adapt_interval`` trials; 0 keeps ``max_step`` fixed.
        seed: makes the chain reproducible; drawn and recorded in ``info["seed"]`` when None.

    ``trajectory["energy"]`` is the chain's energy after every production trial; ``systems[i]`` holds
    ``acceptance`` (production acceptance ratio) and the final ``max_step``. Raises SamplingError with
    the samples so far when the driver fails.
    """
    s = check_mc_settings(
        temperature, steps, max_step, save_interval, warmup_steps, target_acceptance, adapt_interval
    )
    systems = as_systems(systems)
    seed, rngs = random_streams(seed, len(systems))
    monitor = MonitoredCalculator(driver)
    collector = SampleCollector("mc", len(systems), seed, monitor, s)
    collector.unit = "trial"
    with collector.guard():
        for index, (atoms, rng) in enumerate(zip(systems, rngs, strict=True)):
            _chain(index, atoms, monitor, rng, collector, s)
    return collector.result()


def _chain(
    index: int,
    atoms: Atoms,
    monitor: MonitoredCalculator,
    rng: np.random.Generator,
    collector: SampleCollector,
    s: dict[str, Any],
) -> None:
    monitor.restart()
    beta = 1.0 / (KB * s["temperature"])
    step_size = s["max_step"]
    n_atoms = len(atoms)
    numbers = atoms.numbers.copy()
    positions = atoms.positions.copy()
    collector.system, collector.step = index, 0
    current = monitor.evaluate(atoms, forces=False)
    warmup, total = s["warmup_steps"], s["steps"]
    progress = Progress(f"mc system {index}", warmup + total, unit="trials")
    accepted = window_accepted = production = 0
    try:
        for trial in range(1, warmup + total + 1):
            collector.step = trial
            k = (trial - 1) % RANDOM_BLOCK
            if k == 0:  # random numbers in blocks: one generator call per block, not three per trial
                block = min(RANDOM_BLOCK, warmup + total - trial + 1)
                choices = rng.integers(n_atoms, size=block)
                unit_steps = rng.uniform(-1.0, 1.0, (block, 3))
                uniforms = rng.random(block)
            atom = choices[k]
            displacement = step_size * unit_steps[k]
            atoms.positions[atom] = positions[atom] + displacement
            proposal = monitor.evaluate(atoms, forces=False)
            delta = proposal["energy"] - current["energy"]
            if uniforms[k] < math.exp(min(0.0, -beta * delta)):
                positions[atom] = atoms.positions[atom]
                current = proposal
                accept = True
            else:
                atoms.positions[atom] = positions[atom]
                accept = False
            progress.update()
            if trial <= warmup:
                window_accepted += accept
                if trial % s["adapt_interval"] == 0:
                    ratio = window_accepted / s["adapt_interval"]
                    step_size = float(
                        np.clip(
                            step_size * np.clip(ratio / s["target_acceptance"], 0.5, 2.0), MIN_STEP, MAX_STEP
                        )
                    )
                    window_accepted = 0
                continue
            accepted += accept
            production += 1
            collector.add_step(index, current["energy"])
            if (trial - warmup) % s["save_interval"] == 0:
                collector.add_sample(index, numbers, positions, current, trial=trial - warmup)
    finally:
        progress.close()
        collector.systems[index]["acceptance"] = accepted / production if production else float("nan")
        collector.systems[index]["max_step"] = step_size
