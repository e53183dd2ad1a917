"""Minimum energy path (MEP) from a transition state, Asparagus paper eq. 13.

From the TS, displace a little along the imaginary normal mode in both directions, then take Euler
steps down the gradient, x_{n+1} = x_n + eps F(x_n), until the largest atomic force drops below
``fmax``. Both branches run together in one potential call per step. The path is returned from the
end of the backward branch over the TS to the end of the forward branch.

Units: eV, Angstrom, amu; the Euler step ``eps`` is in Angstrom^2/eV (amu Angstrom^2/eV when
``mass_weighted``, which gives the intrinsic reaction coordinate instead of the plain Cartesian path).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from aiida_mlpes.core.characterize._common import evaluate, validate_system
from aiida_mlpes.core.characterize.frequencies import NormalModes, normal_modes
from aiida_mlpes.core.characterize.optimize import optimize_ts
from aiida_mlpes.core.characterize.stationary import IMAGINARY_TOLERANCE, check_transition_state, newton_step
from aiida_mlpes.core.potential import Potential


@dataclass
class PathResult:
    """A path through a transition state.

    Attributes:
        positions: (K, N, 3) Angstrom, from one end over the TS to the other.
        energies: (K,) potential energies in eV (absolute).
        numbers: (N,) atomic numbers.
        ts_index: index of the TS in the path.
        converged: (backward, forward) whether each branch reached ``fmax``.
        coordinate: (K,) signed path length from the TS in Angstrom (mass-weighted: sqrt(amu) Angstrom),
            or time in fs for a dynamic path.
        extra: further per-frame arrays (e.g. ``kinetic_energy`` for the MDP).
    """

    positions: np.ndarray
    energies: np.ndarray
    numbers: np.ndarray
    ts_index: int
    converged: tuple[bool, bool]
    coordinate: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.energies)

    @property
    def barriers(self) -> tuple[float, float]:
        """Energy of the TS above the (first, last) end of the path, eV."""
        e_ts = self.energies[self.ts_index]
        return float(e_ts - self.energies[0]), float(e_ts - self.energies[-1])

    def write(self, path: str | Path) -> Path:
        """Write the path as an extended-XYZ trajectory (energy per frame, eV)."""
        path = Path(path)
        frames = []
        for k, (pos, energy) in enumerate(zip(self.positions, self.energies, strict=True)):
            atoms = Atoms(numbers=self.numbers, positions=pos)
            atoms.info["coordinate"] = float(self.coordinate[k])
            for name, values in self.extra.items():
                atoms.info[name] = float(values[k])
            atoms.calc = SinglePointCalculator(atoms, energy=float(energy))
            frames.append(atoms)
        write(path, frames, format="extxyz")
        return path

    def plot(self, path: str | Path, title: str = "Minimum energy path") -> Path:
        """Energy profile along the path as a PNG."""
        from aiida_mlpes.core.characterize.plots import plot_path

        return plot_path(self, path, title=title)


def prepare_ts(
    potential: Potential,
    numbers: np.ndarray,
    ts_positions: np.ndarray,
    masses: np.ndarray,
    tolerance: float = 0.05,
    refine: bool = True,
    check: bool = True,
) -> tuple[np.ndarray, np.ndarray, NormalModes]:
    """Check and polish a transition state; return its positions, the unit Cartesian displacement (N, 3)
    along its imaginary mode (sign fixed: largest component positive) and its normal modes.

    Raises ``ValueError`` unless the structure has exactly one imaginary frequency and lies within
    ``tolerance`` Angstrom (Newton step) of the saddle. ``refine`` then converges it with P-RFO, so that the
    paths start from the saddle itself.
    """
    modes = normal_modes(potential, numbers, ts_positions, masses, project="auto")
    forces = evaluate(potential, ts_positions[None])[1][0]
    index = check_transition_state(modes, forces, tolerance=tolerance) if check else 0
    if refine and np.linalg.norm(newton_step(modes, forces), axis=1).max() > 1e-6:
        refined = optimize_ts(potential, numbers, ts_positions, masses, fmax=1e-6, steps=30, xtol=1e-6)
        assert refined.modes is not None
        if len(refined.modes.imaginary(IMAGINARY_TOLERANCE)) == 1:
            ts_positions, modes = refined.positions, refined.modes
            index = int(modes.imaginary(IMAGINARY_TOLERANCE)[0])
    direction = modes.modes[index].copy()
    flat = direction.reshape(-1)
    if flat[np.argmax(np.abs(flat))] < 0:
        direction *= -1
    return ts_positions, direction, modes


def minimum_energy_path(
    potential: Potential,
    numbers: Sequence[int] | np.ndarray,
    ts_positions: np.ndarray,
    masses: Sequence[float] | np.ndarray | None = None,
    step_size: float | None = None,
    displacement: float = 0.01,
    fmax: float = 1e-3,
    max_steps: int = 10_000,
    max_move: float = 0.05,
    mass_weighted: bool = False,
    record_every: int = 1,
    ts_tolerance: float = 0.05,
    refine_ts: bool = True,
    check: bool = True,
) -> PathResult:
    """MEP from the transition state ``ts_positions`` (Angstrom) down both sides (paper eq. 13).

    Args:
        step_size: Euler step eps; default 0.5 / (largest Hessian eigenvalue at the TS), halved whenever
            a step raises the energy.
        displacement: initial displacement along the imaginary mode, Angstrom.
        fmax: a branch stops when its largest atomic force is below this (eV/Angstrom).
        max_move: largest displacement of any atom in one step (Angstrom).
        mass_weighted: steepest descent in mass-weighted coordinates (the IRC).
        record_every: keep every k-th point of each branch (the ends are always kept).
        ts_tolerance, check: the TS must have exactly one imaginary frequency and lie within
            ``ts_tolerance`` Angstrom of the saddle point (Newton step); ``refine_ts`` polishes it first
            (P-RFO), so the path runs through the saddle itself.
    """
    numbers, ts_positions, masses = validate_system(numbers, ts_positions, masses, name="ts_positions")
    if not displacement > 0 or not fmax > 0 or not max_move > 0 or max_steps < 1 or record_every < 1:
        raise ValueError("displacement, fmax, max_move, max_steps and record_every must be positive")
    ts_positions, direction, modes = prepare_ts(
        potential, numbers, ts_positions, masses, ts_tolerance, refine=refine_ts, check=check
    )
    weight = (1.0 / masses if mass_weighted else np.ones(len(masses)))[None, :, None]
    if step_size is None:
        w = np.repeat(np.sqrt(weight.reshape(-1)), 3)
        stiffest = float(np.linalg.eigvalsh(modes.hessian * w[:, None] * w[None, :]).max())
        step_size = 0.5 / max(stiffest, 1e-12)
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")

    x = np.stack([ts_positions - displacement * direction, ts_positions + displacement * direction])
    energies, forces, _ = evaluate(potential, x)
    eps = np.full(2, float(step_size))
    active = np.ones(2, dtype=bool)
    branches: list[list[tuple[np.ndarray, float]]] = [[(x[b].copy(), float(energies[b]))] for b in range(2)]
    converged = [False, False]
    for step in range(1, max_steps + 1):
        idx = np.flatnonzero(active)
        move = eps[idx, None, None] * weight * forces[idx]
        largest = np.linalg.norm(move, axis=2).max(axis=1)
        move *= np.minimum(1.0, max_move / np.maximum(largest, 1e-300))[:, None, None]
        trial = x[idx] + move
        e_new, f_new, _ = evaluate(potential, trial)
        for j, b in enumerate(idx):
            if e_new[j] > energies[b] + 1e-10:
                eps[b] *= 0.5  # overshoot: retry this branch with a smaller step
                active[b] = eps[b] > 1e-6 * step_size  # stalled (noisy energies): give up this branch
                continue
            x[b], energies[b], forces[b] = trial[j], e_new[j], f_new[j]
            done = np.linalg.norm(forces[b], axis=1).max() < fmax
            if done or step % record_every == 0:
                branches[b].append((x[b].copy(), float(energies[b])))
            if done:
                converged[b] = True
                active[b] = False
        if not active.any():
            break
    for b in np.flatnonzero(active):
        if branches[b][-1][1] != energies[b]:
            branches[b].append((x[b].copy(), float(energies[b])))

    e_ts = float(evaluate(potential, ts_positions[None])[0][0])
    points = [*branches[0][::-1], (ts_positions.copy(), e_ts), *branches[1]]
    positions = np.stack([p for p, _ in points])
    scale = np.sqrt(masses)[None, :, None] if mass_weighted else 1.0
    seg = np.linalg.norm(((positions[1:] - positions[:-1]) * scale).reshape(len(points) - 1, -1), axis=1)
    coordinate = np.concatenate([[0.0], np.cumsum(seg)])
    ts_index = len(branches[0])
    coordinate -= coordinate[ts_index]
    return PathResult(
        positions=positions,
        energies=np.array([e for _, e in points]),
        numbers=numbers,
        ts_index=ts_index,
        converged=(converged[0], converged[1]),
        coordinate=coordinate,
    )
