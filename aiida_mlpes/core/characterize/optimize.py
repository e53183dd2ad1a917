"""Geometry optimisation on a Potential: minima with ASE optimizers, transition states with P-RFO.

Minima use any optimizer in :mod:`ase.optimize` through :class:`PotentialCalculator`, an ASE calculator
wrapping a Potential. ASE has no generic saddle-point optimizer that needs no tuning: its dimer method
(:mod:`ase.mep.dimer`) works from forces only and needs many sequential single points and mode-rotation
settings, and ``ase.optimize.RFO`` minimises. For molecules, where a Hessian costs one batched potential
call (6N geometries), Baker's partitioned rational-function optimisation (P-RFO, J. Comput. Chem. 7, 385
(1986)) with the exact Hessian at every step converges in a handful of steps, so :func:`optimize_ts`
implements that (maximise along one mode, minimise along the rest, trust radius).

Units: eV, Angstrom, amu.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from ase import Atoms
from ase import optimize as ase_optimize
from ase.calculators.calculator import Calculator, all_changes

from aiida_mlpes.core.characterize._common import evaluate, validate_system
from aiida_mlpes.core.characterize.frequencies import (
    DEFAULT_STEP,
    NormalModes,
    compute_hessian,
    external_basis,
    is_translation_invariant,
    modes_from_hessian,
    normal_modes,
)
from aiida_mlpes.core.potential import Potential


class PotentialCalculator(Calculator):
    """An ASE calculator (energy, forces) backed by a batched Potential (batch of one)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, potential: Potential, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.potential = potential

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        assert self.atoms is not None
        energies, forces, _ = evaluate(self.potential, self.atoms.positions[None])
        self.results = {"energy": float(energies[0]), "forces": forces[0]}


@dataclass
class OptimizationResult:
    """Optimised structure: ``positions`` (N, 3) Angstrom, ``energy`` eV, ``max_force`` eV/Angstrom
    (largest atomic force), ``steps`` taken and whether ``fmax`` was reached; ``modes`` holds the
    harmonic analysis at the end for transition-state searches."""

    positions: np.ndarray
    energy: float
    max_force: float
    steps: int
    converged: bool
    modes: NormalModes | None = None


def optimize_minimum(
    potential: Potential,
    numbers: Sequence[int] | np.ndarray,
    positions: np.ndarray,
    fmax: float = 1e-3,
    steps: int = 1000,
    optimizer: str = "BFGS",
    **optimizer_options: object,
) -> OptimizationResult:
    """Relax ``positions`` (Angstrom) to the nearest minimum with an ASE optimizer (by class name,
    e.g. ``"BFGS"``, ``"LBFGS"``, ``"FIRE"``) until the largest atomic force is below ``fmax`` eV/Angstrom."""
    numbers, positions, _ = validate_system(numbers, positions)
    if not fmax > 0:
        raise ValueError(f"fmax must be positive, got {fmax}")
    cls = getattr(ase_optimize, optimizer, None)
    if not isinstance(cls, type):
        raise ValueError(
            f"unknown ASE optimizer {optimizer!r} (see ase.optimize, e.g. 'BFGS', 'LBFGS', 'FIRE')"
        )
    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = PotentialCalculator(potential)
    opt = cls(atoms, logfile=None, **optimizer_options)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    forces = atoms.get_forces()
    return OptimizationResult(
        positions=atoms.positions.copy(),
        energy=float(atoms.get_potential_energy()),
        max_force=float(np.linalg.norm(forces, axis=1).max()),
        steps=int(opt.nsteps),
        converged=converged,
    )


def optimize_ts(
    potential: Potential,
    numbers: Sequence[int] | np.ndarray,
    positions: np.ndarray,
    masses: Sequence[float] | np.ndarray | None = None,
    fmax: float = 1e-3,
    steps: int = 100,
    trust_radius: float = 0.1,
    mode: int = 0,
    method: Literal["finite_difference", "autograd"] = "finite_difference",
    step: float = DEFAULT_STEP,
    xtol: float = 0.0,
) -> OptimizationResult:
    """Find a first-order saddle point near ``positions`` (Angstrom) by P-RFO with the exact Hessian.

    Follows Hessian eigenvector ``mode`` (0 = lowest) at the start, then the eigenvector with the
    largest overlap with the previous one. ``trust_radius`` caps the step (Angstrom). Translations and
    rotations are projected out when the potential is translation invariant. The result's ``modes`` are
    the harmonic analysis at the final geometry. Converged when the largest atomic force is below
    ``fmax`` (eV/Angstrom) or the P-RFO step is shorter than ``xtol`` (Angstrom; 0 = off).
    """
    numbers, x, masses = validate_system(numbers, positions, masses)
    if not fmax > 0 or not trust_radius > 0:
        raise ValueError("fmax and trust_radius must be positive")
    n = len(x)
    followed: np.ndarray | None = None
    converged = False
    taken = 0
    for taken in range(steps + 1):
        energies, forces, _ = evaluate(potential, x[None])
        gradient = -forces[0].reshape(-1)
        hessian = compute_hessian(potential, x, method, step)
        max_force = float(np.linalg.norm(forces[0], axis=1).max())
        if max_force < fmax:
            converged = True
            break
        if taken == steps:
            break
        if n > 1 and is_translation_invariant(hessian):
            external, _ = external_basis(x, np.ones(n))
            u, _, _ = np.linalg.svd(external, full_matrices=True)
            basis = u[:, external.shape[1] :]
        else:
            basis = np.eye(3 * n)
        b, v = np.linalg.eigh(basis.T @ hessian @ basis)
        v = basis @ v
        if followed is None:
            if not 0 <= mode < len(b):
                raise ValueError(f"mode must be in [0, {len(b)}), got {mode}")
            k = mode
        else:
            k = int(np.argmax(np.abs(v.T @ followed)))
        followed = v[:, k]
        g = v.T @ gradient
        dx = _prfo_step(b, g, k) @ v.T
        length = np.linalg.norm(dx)
        if length > trust_radius:
            dx *= trust_radius / length
        x = x + dx.reshape(n, 3)
        if length < xtol:
            converged = True
            energies, forces, _ = evaluate(potential, x[None])
            max_force = float(np.linalg.norm(forces[0], axis=1).max())
            hessian = compute_hessian(potential, x, method, step)
            taken += 1
            break
    modes = modes_from_hessian(hessian, x, masses, project="auto")
    return OptimizationResult(
        positions=x,
        energy=float(energies[0]),
        max_force=max_force,
        steps=taken,
        converged=converged,
        modes=modes,
    )


def _prfo_step(b: np.ndarray, g: np.ndarray, k: int) -> np.ndarray:
    """P-RFO step in the eigenbasis: maximise along mode ``k``, minimise along the others."""
    lam_p = 0.5 * b[k] + np.sqrt(0.25 * b[k] ** 2 + g[k] ** 2)
    others = np.delete(np.arange(len(b)), k)
    bo, go = b[others], g[others]
    augmented = np.zeros((len(bo) + 1, len(bo) + 1))
    augmented[np.arange(len(bo)), np.arange(len(bo))] = bo
    augmented[-1, :-1] = go
    augmented[:-1, -1] = go
    lam_n = float(np.linalg.eigvalsh(augmented)[0])
    h = np.zeros_like(g)
    h[k] = -g[k] / (b[k] - lam_p) if abs(b[k] - lam_p) > 1e-12 else 0.0
    denominator = bo - lam_n
    h[others] = -go / np.where(np.abs(denominator) > 1e-12, denominator, np.inf)
    return h


@dataclass
class MinimumResult(OptimizationResult):
    """:class:`OptimizationResult` of :func:`find_minimum`, with what happened at saddle points.

    ``saddle_escaped``: the optimiser first stopped at a saddle point and the structure was moved off it;
    ``saddle_frequencies``: the imaginary frequencies (cm^-1, negative) found at each saddle, one list per
    escape; ``saddle_energies``: the energy (eV) of each saddle; ``imaginary_frequencies``: those left at the
    end (empty when a minimum was reached)."""

    saddle_escaped: bool = False
    saddle_frequencies: list[list[float]] | None = None
    saddle_energies: list[float] | None = None
    imaginary_frequencies: list[float] | None = None


def find_minimum(
    potential: Potential,
    numbers: Sequence[int] | np.ndarray,
    positions: np.ndarray,
    masses: Sequence[float] | np.ndarray | None = None,
    fmax: float = 1e-3,
    steps: int = 1000,
    optimizer: str = "BFGS",
    imaginary_threshold: float = 10.0,
    displacement: float = 0.1,
    max_escapes: int = 3,
) -> MinimumResult:
    """Optimise to a minimum (:func:`optimize_minimum`) and make sure it is one.

    After converging, the harmonic frequencies are checked. When a mode is imaginary beyond
    ``imaginary_threshold`` cm^-1 (default: the tolerance of DMC's minimum check), which happens when an
    optimiser stops at a saddle point (e.g. started from a symmetric structure), the structure is displaced along the most negative mode both ways (largest atomic
    displacement ``displacement`` Angstrom), both are re-optimised, and the lower one is kept; at most
    ``max_escapes`` times (0: only check). ``imaginary_frequencies`` of the result lists what is left.
    """
    numbers, positions, masses = validate_system(numbers, positions, masses)
    if (
        not imaginary_threshold >= 0
        or not displacement > 0
        or int(max_escapes) != max_escapes
        or max_escapes < 0
    ):
        raise ValueError(
            "imaginary_threshold must be >= 0 (cm^-1), displacement > 0 (Angstrom) and max_escapes a "
            f"non-negative integer; got {imaginary_threshold}, {displacement}, {max_escapes}"
        )

    def relax(start: np.ndarray) -> OptimizationResult:
        return optimize_minimum(potential, numbers, start, fmax=fmax, steps=steps, optimizer=optimizer)

    result = relax(positions)
    saddles: list[list[float]] = []
    saddle_energies: list[float] = []
    total_steps = result.steps
    while True:
        modes = normal_modes(potential, numbers, result.positions, masses, project="auto")
        imaginary = modes.imaginary(imaginary_threshold)
        if not result.converged or len(imaginary) == 0 or len(saddles) >= max_escapes:
            break
        saddles.append([float(f) for f in modes.frequencies[imaginary]])
        saddle_energies.append(result.energy)
        vector = modes.modes[int(np.argmin(modes.frequencies))]
        vector = vector * displacement / np.linalg.norm(vector, axis=1).max()
        tries = [relax(result.positions + sign * vector) for sign in (1, -1)]
        total_steps += sum(t.steps for t in tries)
        converged = [t for t in tries if t.converged] or tries
        result = min(converged, key=lambda t: t.energy)
    return MinimumResult(
        positions=result.positions,
        energy=result.energy,
        max_force=result.max_force,
        steps=total_steps,
        converged=result.converged,
        modes=modes,
        saddle_escaped=bool(saddles),
        saddle_frequencies=saddles,
        saddle_energies=saddle_energies,
        imaginary_frequencies=[float(f) for f in modes.frequencies[imaginary]],
    )
