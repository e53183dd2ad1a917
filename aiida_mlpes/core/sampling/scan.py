"""Normal-mode scan (Asparagus paper, eqs. 3-9).

Each selected mode i is scaled by ``f_i = sqrt(2 E_step / |k_i|)`` (eq. 8), so one step along it costs E_step
in the harmonic approximation (eqs. 3, 7). For every combination C of up to ``nmax`` selected modes and
every sign pattern, the scan visits the multipliers n = {n_i}, n_i != 0, outwards from (+-1, ..., +-1):

    ``x = x_init + sum_{i in C} n_i f_i q_i``,   ``dE = |E(x) - E(x_init)|``   (eq. 9)

A point with dE <= E_limit is kept and its neighbours (one ``|n_i|`` larger) are visited next; a point
beyond E_limit (or beyond ``|n_i| = max_multiplier``) ends the scan in that direction and is not kept.
In a harmonic well a combination of modes keeps exactly the points with sum_i n_i^2 <= E_limit / E_step.
Points are evaluated in batches, one shell (``sum |n_i|``) at a time. Units: eV, Angstrom, cm^-1.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from aiida_mlpes.core.characterize.frequencies import DEFAULT_STEP
from aiida_mlpes.core.sampling._common import Progress, as_systems, check_int, check_real, random_streams
from aiida_mlpes.core.sampling.drivers import MonitoredCalculator
from aiida_mlpes.core.sampling.normal_modes import (
    BATCH_SIZE,
    DEFAULT_FREQUENCY_RANGE,
    Reference,
    check_mode_settings,
    check_optimize,
    prepare_reference,
)
from aiida_mlpes.core.sampling.results import DriverError, SampleCollector, SampleResult


def check_scan_settings(
    energy_step: float, energy_limit: float, nmax: int, max_multiplier: int | None
) -> dict[str, Any]:
    """Validated scan settings (ValueError names the bad one)."""
    s: dict[str, Any] = {
        "energy_step": check_real("energy_step", energy_step),
        "energy_limit": check_real("energy_limit", energy_limit),
        "nmax": check_int("nmax", nmax),
        "max_multiplier": None if max_multiplier is None else check_int("max_multiplier", max_multiplier),
    }
    if s["energy_limit"] < s["energy_step"]:
        raise ValueError(
            f"energy_limit ({energy_limit} eV) is below energy_step ({energy_step} eV): nothing to scan"
        )
    return s


def normal_mode_scan(
    systems: Atoms | Sequence[Atoms],
    driver: Calculator,
    *,
    energy_step: float = 0.05,
    energy_limit: float = 1.0,
    nmax: int = 1,
    max_multiplier: int | None = None,
    frequency_range: Sequence[float | None] | None = DEFAULT_FREQUENCY_RANGE,
    include_reference: bool = True,
    step: float = DEFAULT_STEP,
    optimize: bool | str = False,
    fmax: float = 0.01,
    seed: int | None = None,
) -> SampleResult:
    """Scan each system along its normal modes and combinations of up to ``nmax`` of them.

    Args:
        energy_step: E_step, eV: harmonic energy of one step along a mode (paper Listing 3: 0.05).
        energy_limit: E_limit, eV: points further than this from the reference energy are not kept (1.0).
        nmax: largest number of modes combined (Asparagus' ``nms_number_of_coupling``; 2 in Listing 3).
        max_multiplier: largest ``|n_i|`` per mode (the paper's step limit), None for no limit.
        frequency_range: (low, high) cm^-1 of the modes scanned; imaginary frequencies are negative.
        include_reference: keep the reference structure itself as the first sample of each system.
        step, optimize, fmax: as in :func:`~aiida_mlpes.core.sampling.normal_modes.normal_mode_sampling`.
        seed: accepted for a uniform interface; the scan is deterministic.

    ``sample_data["scan_modes"]`` (M, nmax) lists the modes (indices into ``systems[i]["frequencies"]``)
    of each point, padded with -1, and ``sample_data["scan_multipliers"]`` (M, nmax) their n_i (0 pad).
    """
    s = {
        **check_scan_settings(energy_step, energy_limit, nmax, max_multiplier),
        **check_mode_settings(frequency_range, step, fmax),
        "optimize": check_optimize(optimize),
        "include_reference": bool(include_reference),
    }
    systems = as_systems(systems)
    seed, _ = random_streams(seed, len(systems))
    monitor = MonitoredCalculator(driver)
    collector = SampleCollector("normal_mode_scan", len(systems), seed, monitor, s)
    collector.unit = "scan point"
    with collector.guard():
        for index, atoms in enumerate(systems):
            ref = prepare_reference(
                index,
                atoms,
                monitor,
                collector,
                frequency_range=s["frequency_range"],
                step=s["step"],
                optimize=s["optimize"],
                fmax=s["fmax"],
            )
            _scan_system(index, atoms, ref, monitor, collector, s)
    return collector.result()


def _scan_system(
    index: int,
    atoms: Atoms,
    ref: Reference,
    monitor: MonitoredCalculator,
    collector: SampleCollector,
    s: dict[str, Any],
) -> None:
    nmax = s["nmax"]
    scale = np.sqrt(2.0 * s["energy_step"] / np.abs(ref.modes.force_constants))  # eq. 8, every mode
    numbers = atoms.numbers.copy()
    e0 = ref.results["energy"]
    collector.systems[index]["scaling_factors"] = scale
    collector.systems[index]["n_points"] = 0
    pad = np.full(nmax, -1, dtype=np.int64)
    if s["include_reference"]:
        collector.add_sample(
            index, numbers, ref.positions, ref.results, scan_modes=pad, scan_multipliers=0 * pad
        )
    combos = [c for size in range(1, nmax + 1) for c in itertools.combinations(ref.selected.tolist(), size)]
    progress = Progress(f"normal_mode_scan system {index}", len(combos), unit="mode combinations")
    evaluated = 0

    def keep(points: list[tuple[int, ...]], results: list[dict[str, Any]], combo: tuple[int, ...]) -> list:
        nonlocal evaluated
        kept = []
        for n, res in zip(points, results, strict=False):
            evaluated += 1
            collector.add_step(index, res["energy"])
            if abs(res["energy"] - e0) <= s["energy_limit"]:
                modes, mult = pad.copy(), 0 * pad
                modes[: len(combo)], mult[: len(combo)] = combo, n
                collector.add_sample(
                    index, numbers, position(combo, n), res, scan_modes=modes, scan_multipliers=mult
                )
                kept.append(n)
        return kept

    def position(combo: tuple[int, ...], n: tuple[int, ...]) -> np.ndarray:
        coeff = np.asarray(n, dtype=float) * scale[list(combo)]
        return ref.positions + np.einsum("k,kna->na", coeff, ref.modes.modes[list(combo)])

    try:
        for combo in combos:
            for signs in itertools.product((1, -1), repeat=len(combo)):
                frontier, visited = [tuple(signs)], {tuple(signs)}
                while frontier:  # one shell sum|n_i| at a time, in batches
                    following: list[tuple[int, ...]] = []
                    for start in range(0, len(frontier), BATCH_SIZE):
                        points = frontier[start : start + BATCH_SIZE]
                        collector.step = evaluated + 1
                        batch = np.stack([position(combo, n) for n in points])
                        try:
                            results = monitor.evaluate_many(atoms, batch)
                        except DriverError as exc:
                            keep(points, exc.completed, combo)
                            collector.step = evaluated + 1
                            raise
                        for n in keep(points, results, combo):
                            for j in range(len(n)):
                                m = list(n)
                                m[j] += signs[j]
                                nxt = tuple(m)
                                limit = s["max_multiplier"]
                                if (limit is None or abs(nxt[j]) <= limit) and nxt not in visited:
                                    visited.add(nxt)
                                    following.append(nxt)
                    frontier = following
            progress.update()
    finally:
        progress.close()
        collector.systems[index]["n_points"] = evaluated
