"""Fresh candidate geometries for validating a surface: the final DMC population and MD on the surface.

The refinement loop labels these with the reference and compares them with what the model predicted
*before* training on them. The pool is the DMC walkers (a sample of the ground-state density) plus the
frames of a short Langevin MD run on the surface itself (:func:`aiida_mlpes.core.sampling.md.langevin_md`).

Selection:

- with a committee (a potential whose ``evaluate`` returns ``forces_std_max`` (B,) or ``forces_std``
  (B, N, 3)), SPARC's rule: the per-structure maximum over atoms of the force deviation
  ``sqrt(sum_xyz std^2)`` must lie in ``window`` = [low, high] eV/Angstrom (SPARC: 0.05-0.5). Below the window
  the committee agrees (already learnt), above it the structure is likely unphysical. Inside it, the most
  uncertain is taken first and the rest by weighted farthest-point sampling (uncertain *and* diverse). When
  the window holds fewer than ``n_candidates`` and ``fill`` is set, the quota is filled with diverse structures
  from below the window (confidently predicted ones still test the model);
- without a committee: farthest-point sampling.

Each source gets its share of the quota (``md_fraction`` from MD, the rest from the DMC walkers), so the wide
DMC population (psi_0 reaches further than classical MD at moderate temperatures) cannot crowd out the MD
frames; farthest-point sampling favours the outskirts of each source.

Structures whose model energy is not finite are dropped. Units: eV, Angstrom, K, fs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aiida_mlpes.core.characterize._common import evaluate, validate_system
from aiida_mlpes.core.characterize.holes import select_diverse
from aiida_mlpes.core.potential import Potential

#: SPARC's force-deviation selection window (eV/Angstrom).
DEFAULT_WINDOW = (0.05, 0.5)


@dataclass
class ExploreResult:
    """Selected candidates and statistics of the pool they came from.

    Attributes:
        positions: (C, N, 3) Angstrom, the candidates in the order picked.
        origin: (C,) "dmc" or "md".
        energies: (C,) model energy minus the model energy at the minimum (eV).
        force_std_max: (C,) committee max per-atom force deviation (eV/Angstrom), None without committee.
        counts: pool sizes and how many were selected (``pool_dmc``, ``pool_md``, ``dropped_nonfinite``,
            ``below_window``, ``in_window``, ``above_window`` (committee only), ``selected``, ``selected_dmc``,
            ``selected_md``).
        pool_force_std: statistics of the pool's force deviation (``mean``, ``median``, ``max``), empty without
            committee.
        md: summary of the MD run (temperature, steps, frames, failure message if it stopped early).
    """

    positions: np.ndarray
    origin: np.ndarray
    energies: np.ndarray
    force_std_max: np.ndarray | None
    counts: dict[str, int]
    pool_force_std: dict[str, float] = field(default_factory=dict)
    md: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.positions)


def force_deviation(potential: Any, positions: np.ndarray, chunk: int = 1024) -> np.ndarray | None:
    """Committee max per-atom force deviation (B,) eV/Angstrom, or None when the potential is not a committee.

    Uses ``potential.evaluate(positions)`` and its ``forces_std_max`` (B,), or derives it from ``forces_std``
    (B, N, 3) per Cartesian component as max over atoms of ``sqrt(sum_xyz std^2)`` ((B, N): per atom already)."""
    evaluate_fn = getattr(potential, "evaluate", None)
    if not callable(evaluate_fn) or len(positions) == 0:
        return None
    parts = []
    for start in range(0, len(positions), chunk):
        out = evaluate_fn(positions[start : start + chunk])
        if not isinstance(out, dict):
            return None
        if "forces_std_max" in out:
            parts.append(np.asarray(out["forces_std_max"], dtype=float).reshape(-1))
        elif "forces_std" in out:
            std = np.asarray(out["forces_std"], dtype=float)
            per_atom = np.sqrt((std**2).sum(axis=-1)) if std.ndim == 3 else std  # (B, N, 3) or (B, N)
            parts.append(per_atom.max(axis=-1))
        else:
            return None
    return np.concatenate(parts)


def explore(
    potential: Potential,
    numbers: Sequence[int] | np.ndarray,
    positions: np.ndarray,
    masses: Sequence[float] | np.ndarray | None = None,
    walkers: np.ndarray | None = None,
    n_candidates: int = 20,
    temperature: float = 500.0,
    md_steps: int = 400,
    md_timestep: float = 0.5,
    md_save_interval: int = 4,
    md_friction: float = 0.02,
    window: Sequence[float] = DEFAULT_WINDOW,
    fill: bool = True,
    md_fraction: float = 0.5,
    seed: int = 0,
) -> ExploreResult:
    """Collect a pool (``walkers`` (W, N, 3) Angstrom, e.g. ``DMCResult.walkers``, plus MD frames) and select
    ``n_candidates`` fresh geometries; see the module docstring.

    Args:
        positions: the minimum (Angstrom), where the MD starts and the energy reference.
        temperature: MD temperature (K); ``md_steps`` steps of ``md_timestep`` fs, every ``md_save_interval``-th
            kept; ``md_friction`` Langevin friction (1/fs). ``md_steps=0`` skips MD.
        window: [low, high] committee force deviation (eV/Angstrom) for the selection.
        fill: fill the quota from below the window when the window holds too few (committee only).
        md_fraction: share of the candidates taken from the MD frames (the rest from the DMC walkers) when
            both exist; a source with too few candidates leaves its share to the other.
        seed: seeds the MD and the selection (same inputs, same candidates).
    """
    numbers, positions, masses = validate_system(numbers, positions, masses)
    low, high = _check_options(n_candidates, temperature, md_steps, md_timestep, md_save_interval, window)
    if not 0 <= md_fraction <= 1:
        raise ValueError(f"md_fraction must be in [0, 1], got {md_fraction}")
    pool: list[np.ndarray] = []
    origin: list[str] = []
    md_summary: dict[str, Any] = {}
    if walkers is not None and len(walkers):
        walkers = np.asarray(walkers, dtype=float)
        if walkers.shape[1:] != positions.shape:
            raise ValueError(f"walkers have shape {walkers.shape}; expected (W, {len(numbers)}, 3)")
        pool.append(walkers)
        origin += ["dmc"] * len(walkers)
    if md_steps > 0:
        frames, md_summary = _md_frames(
            potential, numbers, positions, masses, temperature, md_steps, md_timestep, md_save_interval,
            md_friction, seed,
        )  # fmt: skip
        pool.append(frames)
        origin += ["md"] * len(frames)
    n_atoms = len(numbers)
    all_positions = np.concatenate(pool) if pool else np.zeros((0, n_atoms, 3))
    all_origin = np.array(origin, dtype=object)
    counts = {"pool_dmc": int(np.sum(all_origin == "dmc")), "pool_md": int(np.sum(all_origin == "md"))}

    e_min = float(evaluate(potential, positions[None])[0][0])
    energies = evaluate(potential, all_positions, 256)[0] - e_min if len(all_positions) else np.zeros(0)
    finite = np.isfinite(energies) & np.all(np.isfinite(all_positions), axis=(1, 2))
    counts["dropped_nonfinite"] = int(np.sum(~finite))
    all_positions, all_origin, energies = all_positions[finite], all_origin[finite], energies[finite]
    deviation = force_deviation(potential, all_positions)
    if deviation is not None and not np.all(np.isfinite(deviation)):
        keep = np.isfinite(deviation)
        counts["dropped_nonfinite"] += int(np.sum(~keep))
        all_positions, all_origin, energies = all_positions[keep], all_origin[keep], energies[keep]
        deviation = deviation[keep]

    pool_std: dict[str, float] = {}
    if deviation is not None:
        below, above = deviation < low, deviation > high
        counts.update(
            below_window=int(below.sum()),
            in_window=int((~below & ~above).sum()),
            above_window=int(above.sum()),
        )
        if len(deviation):
            pool_std = {
                "mean": float(deviation.mean()),
                "median": float(np.median(deviation)),
                "max": float(deviation.max()),
            }

    def pick(members: np.ndarray, quota: int) -> np.ndarray:
        """Up to ``quota`` of the pool indices ``members`` (window rule with a committee, else diverse)."""
        if deviation is None:
            return members[select_diverse(numbers, all_positions[members], quota, seed)]
        inside = members[(deviation[members] >= low) & (deviation[members] <= high)]
        chosen = inside[select_diverse(numbers, all_positions[inside], quota, seed, deviation[inside])]
        if fill and len(chosen) < quota:
            lower = members[deviation[members] < low]
            chosen = np.concatenate(
                [chosen, lower[select_diverse(numbers, all_positions[lower], quota - len(chosen), seed)]]
            )
        return chosen

    dmc_pool, md_pool = np.flatnonzero(all_origin == "dmc"), np.flatnonzero(all_origin == "md")
    md_quota = round(n_candidates * md_fraction) if len(dmc_pool) and len(md_pool) else n_candidates
    dmc_part, md_part = pick(dmc_pool, n_candidates - md_quota), pick(md_pool, md_quota)
    # a source that cannot fill its share leaves the rest to the other (a longer greedy pick extends a shorter one)
    if len(md_part) < md_quota:
        dmc_part = pick(dmc_pool, n_candidates - len(md_part))
    elif len(dmc_part) < n_candidates - md_quota:
        md_part = pick(md_pool, n_candidates - len(dmc_part))
    chosen = np.concatenate([dmc_part, md_part]).astype(np.int64)
    if deviation is not None:  # most uncertain first
        chosen = chosen[np.argsort(-deviation[chosen], kind="stable")]
    counts["selected"] = len(chosen)
    counts["selected_dmc"] = int(np.sum(all_origin[chosen] == "dmc"))
    counts["selected_md"] = int(np.sum(all_origin[chosen] == "md"))
    return ExploreResult(
        positions=all_positions[chosen],
        origin=all_origin[chosen].astype(str),
        energies=energies[chosen],
        force_std_max=None if deviation is None else deviation[chosen],
        counts=counts,
        pool_force_std=pool_std,
        md=md_summary,
        settings={
            "n_candidates": n_candidates,
            "temperature": temperature,
            "md_steps": md_steps,
            "md_timestep": md_timestep,
            "md_save_interval": md_save_interval,
            "md_friction": md_friction,
            "window": [low, high],
            "fill": fill,
            "md_fraction": md_fraction,
            "seed": seed,
            "committee": deviation is not None,
        },
    )


def _check_options(
    n_candidates: int,
    temperature: float,
    md_steps: int,
    md_timestep: float,
    md_save_interval: int,
    window: Sequence[float],
) -> tuple[float, float]:
    if int(n_candidates) != n_candidates or n_candidates < 0:
        raise ValueError(f"n_candidates must be a non-negative integer, got {n_candidates}")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be positive (K), got {temperature}")
    if int(md_steps) != md_steps or md_steps < 0:
        raise ValueError(f"md_steps must be a non-negative integer, got {md_steps}")
    if md_steps and not md_timestep > 0:
        raise ValueError(f"md_timestep must be positive (fs), got {md_timestep}")
    if md_steps and (int(md_save_interval) != md_save_interval or not 1 <= md_save_interval <= md_steps):
        raise ValueError(
            f"md_save_interval must be an integer in [1, md_steps={md_steps}], got {md_save_interval}"
        )
    bounds = np.asarray(window, dtype=float).reshape(-1)
    if bounds.shape != (2,) or not np.all(np.isfinite(bounds)) or not 0 <= bounds[0] < bounds[1]:
        raise ValueError(f"window must be [low, high] with 0 <= low < high (eV/Angstrom), got {list(window)}")
    return float(bounds[0]), float(bounds[1])


def _md_frames(
    potential: Potential,
    numbers: np.ndarray,
    positions: np.ndarray,
    masses: np.ndarray,
    temperature: float,
    steps: int,
    timestep: float,
    save_interval: int,
    friction: float,
    seed: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Frames (F, N, 3) of Langevin MD on the potential from the minimum, and a summary; a run that fails
    part-way (e.g. non-finite energies) keeps the frames before the failure."""
    from ase import Atoms

    from aiida_mlpes.core.characterize.optimize import PotentialCalculator
    from aiida_mlpes.core.sampling.md import langevin_md
    from aiida_mlpes.core.sampling.results import SamplingError

    atoms = Atoms(numbers=numbers, positions=positions, masses=masses)
    try:
        result = langevin_md(
            atoms,
            PotentialCalculator(potential),
            temperature=temperature,
            timestep=timestep,
            steps=steps,
            save_interval=save_interval,
            friction=friction,
            seed=seed,
        )
    except SamplingError as exc:
        result = exc.result
    samples = result.samples
    frames = (
        samples.positions.reshape(len(samples), len(numbers), 3)
        if len(samples)
        else np.zeros((0, len(numbers), 3))
    )
    temperatures = result.trajectory.get("temperature", np.zeros(0))
    summary = {
        "frames": len(frames),
        "failed": bool(result.failed),
        "message": result.message,
        "mean_temperature": float(np.mean(temperatures)) if len(temperatures) else float("nan"),
    }
    return frames, summary
