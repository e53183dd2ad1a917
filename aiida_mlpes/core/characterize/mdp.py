"""Minimum dynamic path (MDP) from a transition state, Asparagus paper eqs. 14-15.

Newton's equations are integrated with velocity Verlet from the TS, displaced a little along the
imaginary normal mode, with zero initial velocity (or a small kinetic energy along the mode), in both
directions at once (one potential call per step for the two trajectories):

    x_{n+1} = x_n + dt v_n + dt^2/(2m) F(x_n),    v_{n+1} = v_n + dt/(2m) (F(x_n) + F(x_{n+1}))

(The paper's eq. 14 prints the last term without dt^2; this is the velocity Verlet it cites.)
Units: eV, Angstrom, amu, time in fs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import units as _u

from aiida_mlpes.core.characterize._common import evaluate, validate_system
from aiida_mlpes.core.characterize.mep import PathResult, prepare_ts
from aiida_mlpes.core.potential import Potential


def minimum_dynamic_path(
    potential: Potential,
    numbers: Sequence[int] | np.ndarray,
    ts_positions: np.ndarray,
    masses: Sequence[float] | np.ndarray | None = None,
    timestep: float = 0.25,
    nsteps: int = 1000,
    displacement: float = 0.01,
    kinetic_energy: float = 0.0,
    record_every: int = 1,
    ts_tolerance: float = 0.05,
    refine_ts: bool = True,
    check: bool = True,
) -> PathResult:
    """MDP from ``ts_positions`` (Angstrom): ``nsteps`` velocity-Verlet steps of ``timestep`` fs each way.

    ``kinetic_energy`` (eV) starts each trajectory moving away from the TS along the imaginary mode
    (0 = at rest, the paper's v0 = 0). The result's ``coordinate`` is the time in fs (negative for the
    backward branch, whose start, at TS - displacement, is ``ts_index``); ``extra`` holds ``kinetic_energy`` and ``total_energy`` (eV) per frame, so energy
    conservation can be checked. The TS is checked and refined as in :func:`minimum_energy_path`
    (``ts_tolerance``, ``refine_ts``, ``check``).
    """
    numbers, ts_positions, masses = validate_system(numbers, ts_positions, masses, name="ts_positions")
    if not timestep > 0:
        raise ValueError(f"timestep must be positive (fs), got {timestep}")
    if nsteps < 1 or record_every < 1 or displacement < 0 or kinetic_energy < 0:
        raise ValueError("nsteps and record_every must be positive, displacement and kinetic_energy >= 0")
    if displacement == 0 and kinetic_energy == 0:
        raise ValueError("displacement or kinetic_energy must be positive to leave the transition state")
    ts_positions, direction, _ = prepare_ts(
        potential, numbers, ts_positions, masses, ts_tolerance, refine=refine_ts, check=check
    )
    m = masses[None, :, None]
    dt = timestep * _u.fs  # ASE time unit: Angstrom sqrt(amu/eV)
    signs = np.array([-1.0, 1.0])[:, None, None]
    x = ts_positions[None] + signs * displacement * direction
    # velocity along the mode carrying kinetic_energy: v = c * direction, 0.5 c^2 sum m d^2 = E_kin
    speed = np.sqrt(2 * kinetic_energy / np.sum(masses[:, None] * direction**2))
    v = signs * speed * direction
    energies, forces, _ = evaluate(potential, x)

    frames = [[(x[b].copy(), energies[b], _kinetic(v[b], masses))] for b in range(2)]
    for step in range(1, nsteps + 1):
        x = x + dt * v + 0.5 * dt**2 * forces / m
        e_new, f_new, _ = evaluate(potential, x)
        v = v + 0.5 * dt * (forces + f_new) / m
        energies, forces = e_new, f_new
        if step % record_every == 0 or step == nsteps:
            for b in range(2):
                frames[b].append((x[b].copy(), energies[b], _kinetic(v[b], masses)))

    # The two branches start at TS -/+ displacement at time 0; the path runs from the end of the
    # backward branch (time -T) to the end of the forward one (+T). ts_index is the backward start.
    points = [*frames[0][::-1], *frames[1]]
    steps_b = [0, *range(record_every, nsteps + 1, record_every)]
    if steps_b[-1] != nsteps:
        steps_b.append(nsteps)
    times = np.array([-s for s in steps_b[::-1]] + steps_b, dtype=float) * timestep
    kinetic = np.array([k for _, _, k in points])
    potential_energy = np.array([float(e) for _, e, _ in points])
    return PathResult(
        positions=np.stack([p for p, _, _ in points]),
        energies=potential_energy,
        numbers=numbers,
        ts_index=len(frames[0]) - 1,
        converged=(True, True),
        coordinate=times,
        extra={"kinetic_energy": kinetic, "total_energy": potential_energy + kinetic},
    )


def _kinetic(velocities: np.ndarray, masses: np.ndarray) -> float:
    return float(0.5 * np.sum(masses[:, None] * velocities**2))
