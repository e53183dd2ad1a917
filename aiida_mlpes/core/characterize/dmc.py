"""Diffusion Monte Carlo (DMC) on a Potential: zero-point energy and hole detection.

Unguided DMC as in the Asparagus paper (eqs. 16-19), atomic units inside:

- diffusion: every Cartesian coordinate of atom i moves by sqrt(dt / m_i) * N(0, 1) (bohr, dt in au of
  time, m_i in electron masses);
- branching: each walker leaves floor(w + u) copies, u ~ U(0, 1), with w = exp(-(V - E_ref) dt)
  (the paper's birth/death probabilities, eqs. 17-18, which also allow several births when w > 2);
- population feedback: E_ref = <V> - alpha (N - N0) / N0 over the walkers alive after branching (eq. 19);
- zero-point energy: the mean of E_ref after ``eqsteps`` minus V(minimum). (The walkers' mean potential
  is a biased estimator at practical time steps; see NOTES.md.) Its error comes from blocking analysis.

All walkers are evaluated as one batch per step (or chunks of ``batch_size``), the random numbers come
from one ``numpy.random.Generator`` (reproducible from ``seed``), and memory does not grow with the
number of steps (only scalar traces are kept).

Holes: a walker is a hole when its energy is more than ``hole_threshold`` below V(minimum), when the
model's energy uncertainty exceeds ``uncertainty_threshold + uncertainty_relative * (V - V(minimum))``
(ensemble models; the relative part spares walkers high up a wall, whose weight in psi_0 is exponentially
small and where the same absolute spread is a small relative error), or when two atoms are
closer than ``collapse_factor`` times the sum of their covalent radii while the energy stays less than
``collapse_energy`` above V(minimum) (a physical surface puts such geometries tens of eV higher; a rare
walker that reaches one on a correct surface, a time-step artefact, is left to die by branching), and
when the potential returns a non-finite energy. Holes are recorded (positions,
energy, step, reason) and removed before branching so they cannot take over the population.

Uncertainty: a potential may return a third value, the per-structure energy standard deviation (eV),
``potential(positions) -> (energies, forces, std)``; or pass ``uncertainty=callable`` mapping positions
(B, N, 3) to (B,) eV (one extra call per step). A potential with an ``energies(positions) -> (B,)``
method (or ``(energies, std)``) is called through it, skipping forces, which DMC does not need.

Outcome (``DMCResult.outcome``; only ``"completed"`` runs can certify a surface):

- ``"collapsed"``: the population died out (every walker removed or killed by branching);
- ``"exploded"``: the population grew beyond ``max_population_factor * nwalkers``;
- ``"truncated"``: stopped early for another reason: ``max_holes`` holes were found (the store is full, so
  going on would only count), ``max_wall_time`` was reached, or every walker had a non-finite energy;
- ``"too_short"``: ran to the end but with fewer production walker-steps (sum of the population over the
  steps after ``eqsteps``) than ``min_walker_steps`` (default: half of ``nwalkers * (nsteps - eqsteps)``);
- ``"drift"``: E_ref differs between the two halves of the production steps by more than three standard
  errors (equilibration drift; increase ``eqsteps``);
- ``"completed"``: none of these.

Non-finite results are never raised: a run without production steps has ``zpe``/``zpe_error`` NaN.

Public units: eV, Angstrom, amu; ``timestep`` and ``alpha`` are in atomic units (au of time, Eh).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from aiida_mlpes.core.characterize._common import evaluate, validate_system
from aiida_mlpes.core.characterize.frequencies import NormalModes, normal_modes
from aiida_mlpes.core.characterize.holes import HoleStore, collapse_bounds, hole_reasons
from aiida_mlpes.core.characterize.stationary import check_minimum
from aiida_mlpes.core.characterize.statistics import blocking_error, drift
from aiida_mlpes.core.potential import Potential
from aiida_mlpes.core.units import AMU_IN_ME, BOHR, HARTREE, INV_CM

#: Asparagus's hole threshold, 1e-5 Eh, in eV.
DEFAULT_HOLE_THRESHOLD = 1e-5 * HARTREE
#: Possible values of :attr:`DMCResult.outcome`.
OUTCOMES = ("completed", "collapsed", "exploded", "drift", "too_short", "truncated")
#: Default ``min_walker_steps`` as a fraction of the nominal production walker-steps nwalkers*(nsteps-eqsteps).
DEFAULT_MIN_WALKER_STEPS_FRACTION = 0.5
#: Exponent cap for the branching weight (a walker never leaves more than ~e^5 copies in one step).
MAX_LOG_WEIGHT = 5.0


@dataclass
class DMCResult:
    """Outcome of :func:`run_dmc`. Energies in eV relative to V(minimum) unless stated.

    Attributes:
        zpe, zpe_error: zero-point energy and its blocking standard error (eV).
        energy_trace: (nsteps,) E_ref - V(minimum) per step (eV).
        population_trace: (nsteps,) walkers alive after each step.
        potential_trace: (nsteps,) mean potential of the walkers - V(minimum) (eV).
        holes: (H, N, 3) positions (Angstrom) of the defective walkers that were recorded.
        hole_energies: (H,) their energies relative to V(minimum) (eV).
        hole_steps: (H,) the step at which each was found.
        hole_reasons: (H,) "energy", "uncertainty", "collapse" or "nonfinite".
        n_holes: total number of holes found (may exceed ``len(holes)`` when ``max_holes`` was reached).
        walkers: (W, N, 3) final walker positions (Angstrom), a sample of the ground-state density.
        minimum_energy: V(minimum) in eV (absolute).
        harmonic_zpe: harmonic ZPE of the minimum (eV), None when not computed.
        drift: (second-half minus first-half mean of E_ref over the production steps, its error) in eV.
        stopped: why the run stopped early (population died out or exploded, holes or wall time limit
            reached), None if it ran to the end; the traces then cover only the steps done (ZPE nan if none
            after ``eqsteps``).
        outcome: one of :data:`OUTCOMES` (see the module docstring); ``completed`` is its boolean form.
        production_walker_steps: sum of the population over the production steps.
    """

    zpe: float
    zpe_error: float
    energy_trace: np.ndarray
    population_trace: np.ndarray
    potential_trace: np.ndarray
    holes: np.ndarray
    hole_energies: np.ndarray
    hole_steps: np.ndarray
    hole_reasons: np.ndarray
    n_holes: int
    walkers: np.ndarray
    numbers: np.ndarray
    minimum_energy: float
    harmonic_zpe: float | None
    settings: dict = field(default_factory=dict)
    wall_time: float = 0.0
    stopped: str | None = None
    drift: tuple[float, float] | None = None
    outcome: str = "completed"
    production_walker_steps: int = 0

    @property
    def completed(self) -> bool:
        """True when the run completed: no collapse, explosion, truncation, drift, and long enough."""
        return self.outcome == "completed"

    @property
    def zpe_cm(self) -> float:
        """Zero-point energy in cm^-1."""
        return self.zpe / INV_CM

    @property
    def walker_steps_per_second(self) -> float:
        return float(self.population_trace.sum() / max(self.wall_time, 1e-12))

    def plot(self, path: str | Path) -> Path:
        """Energy and population traces as a PNG; returns the path."""
        from aiida_mlpes.core.characterize.plots import plot_dmc

        return plot_dmc(self, path)


def _harmonic_displacements(modes: NormalModes, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, N, 3) displacements in bohr drawn from psi_0 of the harmonic modes above 50 cm^-1."""
    keep = modes.frequencies > 50.0
    omega = modes.frequencies[keep] * INV_CM / HARTREE  # Eh = 1/au of time
    vectors = modes.mass_weighted_modes[keep]  # (K, N, 3), orthonormal
    inv_sqrt_m = 1.0 / np.sqrt(modes.masses * AMU_IN_ME)[None, :, None]  # 1/sqrt(m_e)
    q = rng.standard_normal((n, len(omega))) / np.sqrt(omega)  # sqrt(m_e) bohr
    return np.einsum("wk,kia->wia", q, vectors) * inv_sqrt_m


def run_dmc(
    potential: Potential,
    numbers: Sequence[int] | np.ndarray,
    positions: np.ndarray,
    masses: Sequence[float] | np.ndarray | None = None,
    nwalkers: int = 1000,
    nsteps: int = 2000,
    eqsteps: int = 500,
    timestep: float = 5.0,
    seed: int | None = None,
    alpha: float | None = None,
    hole_threshold: float | None = DEFAULT_HOLE_THRESHOLD,
    uncertainty: Callable[[np.ndarray], np.ndarray] | None = None,
    uncertainty_threshold: float | None = None,
    uncertainty_relative: float = 0.0,
    collapse_factor: float = 0.5,
    collapse_energy: float = 5.0,
    max_holes: int = 10_000,
    batch_size: int | None = None,
    check: bool = True,
    max_population_factor: float = 10.0,
    initial: Literal["minimum", "harmonic"] = "minimum",
    min_walker_steps: int | None = None,
    max_wall_time: float | None = None,
) -> DMCResult:
    """Run unguided DMC from the minimum ``positions`` (Angstrom); see the module docstring.

    Args:
        nwalkers: target population N0. nsteps: total steps; eqsteps: steps discarded before averaging.
        timestep: dt in au of time (~0.0242 fs); <= 10 au keeps the time-step bias below ~0.2 %.
        seed: seed of the numpy random Generator (same seed, same potential -> same result).
        alpha: population feedback in Eh; default 0.5 / dt.
        hole_threshold: eV below V(minimum) for an energy hole (default 1e-5 Eh); None disables.
        uncertainty, uncertainty_threshold: see the module docstring (eV).
        uncertainty_relative: the uncertainty threshold grows by this fraction of the walker's energy above
            V(minimum) (dimensionless; 0: one absolute threshold everywhere).
        collapse_factor: fraction of the sum of covalent radii below which a pair of atoms is collapsed;
            0 disables the check. collapse_energy: eV above V(minimum) below which a collapsed walker
            is a hole.
        max_holes: at most this many holes are stored; the run stops (outcome "truncated") once this many
            were found (0: none stored, all counted and removed, the run goes on).
        batch_size: evaluate the walkers in chunks of this size (memory bound); None = one batch.
        check: verify first that ``positions`` are a minimum (harmonic analysis; ValueError if not).
        max_population_factor: the run stops (with a warning, keeping what it found) when the population
            exceeds this multiple of ``nwalkers`` or dies out.
        initial: ``"minimum"`` starts every walker at ``positions`` (the paper); ``"harmonic"`` draws them
            from the harmonic ground state (the walker density of unguided DMC is psi_0, a Gaussian of
            variance 1/(m omega) per mode; modes below 50 cm^-1 are left out), which shortens equilibration.
        min_walker_steps: production walker-steps below which a run that reached ``nsteps`` is "too_short";
            default half of ``nwalkers * (nsteps - eqsteps)``.
        max_wall_time: seconds after which the run stops (outcome "truncated"); None = no limit.

    A warning is issued when E_ref still drifts between the two halves of the production steps (more than
    three standard errors): increase ``eqsteps``. The drift is stored in ``result.drift`` (eV). Whether the
    run can be trusted is ``result.outcome`` / ``result.completed`` (module docstring).
    """
    numbers, positions, masses = validate_system(numbers, positions, masses)
    _check_settings(nwalkers, nsteps, eqsteps, timestep, alpha, max_holes, batch_size)
    if min_walker_steps is None:
        min_walker_steps = int(DEFAULT_MIN_WALKER_STEPS_FRACTION * nwalkers * (nsteps - eqsteps))
    if not min_walker_steps >= 0:
        raise ValueError(f"min_walker_steps must be >= 0, got {min_walker_steps}")
    if max_wall_time is not None and not max_wall_time > 0:
        raise ValueError(f"max_wall_time must be positive (s), got {max_wall_time}")
    rng = np.random.default_rng(seed)
    alpha_au = 0.5 / timestep if alpha is None else float(alpha)
    energy_fn = _energy_function(potential, batch_size)

    e_min, f_min, std_min = evaluate(potential, positions[None])
    v_min = float(e_min[0])
    if uncertainty_threshold is not None and std_min is None and uncertainty is None:
        raise ValueError(
            "uncertainty_threshold needs a potential returning (energies, forces, std) or an uncertainty callable"
        )
    if not 0.0 <= uncertainty_relative <= 1.0:
        raise ValueError(f"uncertainty_relative must be in [0, 1], got {uncertainty_relative}")
    if initial not in ("minimum", "harmonic"):
        raise ValueError(f"initial must be 'minimum' or 'harmonic', got {initial!r}")
    harmonic_zpe = None
    modes = None
    if check or initial == "harmonic":
        modes = normal_modes(potential, numbers, positions, masses, project="auto", batch_size=batch_size)
        harmonic_zpe = modes.zpe
    if check:
        assert modes is not None
        max_drop = None if hole_threshold is None else 0.5 * hole_threshold
        check_minimum(modes, f_min[0], max_relaxation=max_drop)

    sigma = np.sqrt(timestep / (masses * AMU_IN_ME))[None, :, None]  # bohr
    pair_i, pair_j, bound2 = collapse_bounds(numbers, collapse_factor)
    check_collapse = collapse_factor > 0 and len(pair_i) > 0
    v_min_au = v_min / HARTREE
    collapse_ceiling = v_min_au + collapse_energy / HARTREE
    threshold_au = None if hole_threshold is None else hole_threshold / HARTREE
    hole_store = HoleStore(max_holes)

    walkers = np.repeat(positions[None] / BOHR, nwalkers, axis=0)
    e_ref = v_min_au
    if initial == "harmonic":
        assert modes is not None
        walkers += _harmonic_displacements(modes, nwalkers, rng)
        start_energies = energy_fn(walkers * BOHR)[0] / HARTREE
        e_ref = float(
            np.mean(start_energies[np.isfinite(start_energies)])
        )  # ~E0 for psi_0-distributed walkers
    energy_trace = np.empty(nsteps)
    potential_trace = np.empty(nsteps)
    population = np.empty(nsteps, dtype=np.int64)
    max_population = int(max_population_factor * nwalkers)
    stopped = None
    outcome = "completed"
    done = 0
    start = time.perf_counter()
    for step in range(nsteps):
        walkers += sigma * rng.standard_normal(walkers.shape)
        cart = walkers * BOHR
        energies, std = energy_fn(cart)
        if uncertainty is not None:
            std = np.asarray(uncertainty(cart), dtype=float).reshape(-1)
        v = energies / HARTREE
        bad = ~np.isfinite(v)
        if threshold_au is not None:
            bad |= v < v_min_au - threshold_au
        std_limit = None
        if uncertainty_threshold is not None and std is not None:
            std_limit = uncertainty_threshold + uncertainty_relative * np.maximum(v - v_min_au, 0.0) * HARTREE
            bad |= std > std_limit
        if check_collapse:
            diff = cart[:, pair_i] - cart[:, pair_j]
            collapsed = np.any(np.einsum("wpk,wpk->wp", diff, diff) < bound2, axis=1)
            bad |= collapsed & (v < collapse_ceiling)
        all_nonfinite = not np.any(np.isfinite(v))
        if bad.any():
            reasons = hole_reasons(bad, v, v_min_au, threshold_au, std, std_limit)
            hole_store.add(cart[bad], (v[bad] - v_min_au) * HARTREE, step, reasons)
            keep = ~bad
            walkers, v = walkers[keep], v[keep]
        log_w = np.minimum(-(v - e_ref) * timestep, MAX_LOG_WEIGHT)
        copies = np.floor(np.exp(log_w) + rng.random(len(v))).astype(np.int64)
        walkers, v = np.repeat(walkers, copies, axis=0), np.repeat(v, copies)
        n = len(v)
        if n == 0 or n > max_population:
            if n == 0 and all_nonfinite:
                outcome, why = "truncated", f"every walker had a non-finite energy at step {step}"
            elif n == 0:
                outcome, why = "collapsed", f"all walkers died at step {step}"
            else:
                outcome, why = "exploded", f"the population exploded to {n} at step {step}"
            stopped = (
                why + " (time step too large, or a surface full of holes); the results cover the steps before"
            )
            warnings.warn(f"DMC stopped: {stopped}", RuntimeWarning, stacklevel=2)
            walkers = walkers[:max_population]
            break
        mean_v = float(v.mean())
        e_ref = mean_v - alpha_au * (n - nwalkers) / nwalkers
        energy_trace[step] = e_ref
        potential_trace[step] = mean_v
        population[step] = n
        done = step + 1
        if max_holes > 0 and hole_store.count >= max_holes and step + 1 < nsteps:
            outcome = "truncated"
            stopped = f"{hole_store.count} holes found by step {step} (max_holes={max_holes})"
            break
        if max_wall_time is not None and time.perf_counter() - start > max_wall_time and step + 1 < nsteps:
            outcome = "truncated"
            stopped = f"wall time limit of {max_wall_time} s reached at step {step}"
            break
    wall = time.perf_counter() - start

    energy_trace, potential_trace, population = energy_trace[:done], potential_trace[:done], population[:done]
    production = energy_trace[eqsteps:]
    production_walker_steps = int(population[eqsteps:].sum())
    drift_au = drift(production)
    drifting = drift_au is not None and abs(drift_au[0]) > 3 * drift_au[1]
    if outcome == "completed" and production_walker_steps < min_walker_steps:
        outcome = "too_short"
    elif outcome == "completed" and drifting:
        outcome = "drift"
    if drifting:
        assert drift_au is not None
        warnings.warn(
            f"DMC: E_ref drifts by {drift_au[0] * HARTREE:.2e} +- {drift_au[1] * HARTREE:.1e} eV between the halves of "
            f"the production steps: not equilibrated, increase eqsteps (now {eqsteps})",
            RuntimeWarning,
            stacklevel=2,
        )
    holes = hole_store.arrays(len(numbers))
    return DMCResult(
        zpe=float((production.mean() - v_min_au) * HARTREE) if len(production) else float("nan"),
        zpe_error=float(blocking_error(production) * HARTREE) if len(production) > 1 else float("nan"),
        energy_trace=(energy_trace - v_min_au) * HARTREE,
        population_trace=population,
        potential_trace=(potential_trace - v_min_au) * HARTREE,
        holes=holes[0],
        hole_energies=holes[1],
        hole_steps=holes[2],
        hole_reasons=holes[3],
        n_holes=hole_store.count,
        walkers=walkers * BOHR,
        numbers=numbers,
        minimum_energy=v_min,
        harmonic_zpe=harmonic_zpe,
        settings={
            "nwalkers": nwalkers,
            "nsteps": nsteps,
            "eqsteps": eqsteps,
            "timestep": timestep,
            "alpha": alpha_au,
            "seed": seed,
            "hole_threshold": hole_threshold,
            "uncertainty_threshold": uncertainty_threshold,
            "collapse_factor": collapse_factor,
            "collapse_energy": collapse_energy,
            "initial": initial,
            "max_holes": max_holes,
            "min_walker_steps": min_walker_steps,
            "max_wall_time": max_wall_time,
        },
        wall_time=wall,
        stopped=stopped,
        drift=None if drift_au is None else (drift_au[0] * HARTREE, drift_au[1] * HARTREE),
        outcome=outcome,
        production_walker_steps=production_walker_steps,
    )


def _check_settings(
    nwalkers: int,
    nsteps: int,
    eqsteps: int,
    timestep: float,
    alpha: float | None,
    max_holes: int,
    batch_size: int | None,
) -> None:
    if int(nwalkers) != nwalkers or nwalkers < 1:
        raise ValueError(f"nwalkers must be a positive integer, got {nwalkers}")
    if int(nsteps) != nsteps or nsteps < 1:
        raise ValueError(f"nsteps must be a positive integer, got {nsteps}")
    if int(eqsteps) != eqsteps or not 0 <= eqsteps < nsteps:
        raise ValueError(f"eqsteps must be an integer in [0, nsteps={nsteps}), got {eqsteps}")
    if not (np.isfinite(timestep) and timestep > 0):
        raise ValueError(f"timestep must be positive (au of time), got {timestep}")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"alpha must be positive (Eh), got {alpha}")
    if max_holes < 0:
        raise ValueError(f"max_holes must be >= 0, got {max_holes}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")


def _energy_function(
    potential: Potential, batch_size: int | None
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]:
    """Energies (B,) eV and optional std (B,) eV, through ``potential.energies`` when it exists."""
    energies_fn = getattr(potential, "energies", None)
    if callable(energies_fn):

        def call(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            size = batch_size or len(positions)
            outs = [energies_fn(positions[i : i + size]) for i in range(0, len(positions), size)]
            if isinstance(outs[0], tuple):
                return (
                    np.concatenate([np.asarray(o[0], dtype=float).reshape(-1) for o in outs]),
                    np.concatenate([np.asarray(o[1], dtype=float).reshape(-1) for o in outs]),
                )
            return np.concatenate([np.asarray(o, dtype=float).reshape(-1) for o in outs]), None

        return call

    def call_full(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        energies, _, std = evaluate(potential, positions, batch_size)
        return energies, std

    return call_full
