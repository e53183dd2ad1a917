"""Harmonic frequencies and normal modes from a batched Potential.

The Hessian comes from central finite differences of the forces (all 6N displaced geometries in one
potential call) or, with ``method="autograd"``, from the potential's own ``hessian(positions)`` method
(an ML potential computes it by automatic differentiation; an analytic test potential exactly).
The mass-weighted Hessian is diagonalised in the space orthogonal to translations and rotations
(3N-6 modes, 3N-5 for a linear molecule).

Units: positions Angstrom, masses amu, Hessian eV/Angstrom^2, frequencies cm^-1. Imaginary frequencies
are returned as negative numbers (``-500.0`` means ``500i cm^-1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from ase import units as _u

from aiida_mlpes.core.characterize._common import evaluate, validate_system
from aiida_mlpes.core.potential import Potential
from aiida_mlpes.core.units import INV_CM

#: sqrt(eV / (Angstrom^2 amu)) in cm^-1 (angular frequency -> wavenumber).
EIGENVALUE_TO_CM = float(np.sqrt(_u._e / (1e-20 * _u._amu)) / (2 * np.pi * _u._c * 100))
#: Default finite-difference step in Angstrom (central differences; NOTES.md: 0.0025-0.01 agree with xtb).
DEFAULT_STEP = 0.005
#: Ratio of the smallest to the largest rotational singular value below which a molecule is linear.
LINEAR_TOLERANCE = 1e-3

Projection = bool | Literal["auto"]


@dataclass
class NormalModes:
    """Harmonic analysis of one structure.

    Attributes:
        frequencies: (M,) cm^-1, ascending; imaginary ones negative.
        modes: (M, N, 3) Cartesian displacement vectors, each of unit length.
        mass_weighted_modes: (M, N, 3) orthonormal eigenvectors of the mass-weighted Hessian.
        reduced_masses: (M,) amu.
        force_constants: (M,) eV/Angstrom^2 along the Cartesian ``modes`` (negative when imaginary).
        hessian: (3N, 3N) Cartesian Hessian in eV/Angstrom^2.
        masses: (N,) amu.
        linear: whether the structure is linear (only meaningful when ``projected``).
        projected: whether translations and rotations were projected out.
    """

    frequencies: np.ndarray
    modes: np.ndarray
    mass_weighted_modes: np.ndarray
    reduced_masses: np.ndarray
    force_constants: np.ndarray
    hessian: np.ndarray
    masses: np.ndarray
    linear: bool
    projected: bool

    def imaginary(self, tolerance: float = 0.0) -> np.ndarray:
        """Indices of modes with an imaginary frequency larger than ``tolerance`` cm^-1 in magnitude."""
        return np.flatnonzero(self.frequencies < -abs(tolerance))

    @property
    def zpe(self) -> float:
        """Harmonic zero-point energy in eV (real modes only)."""
        real = self.frequencies[self.frequencies > 0]
        return float(0.5 * real.sum() * INV_CM)


def finite_difference_hessian(
    potential: Potential, positions: np.ndarray, step: float = DEFAULT_STEP, batch_size: int | None = None
) -> np.ndarray:
    """Cartesian Hessian (3N, 3N) in eV/Angstrom^2 by central differences of the forces.

    All 6N displaced geometries (``step`` Angstrom) go to the potential in one call (or chunks of
    ``batch_size``). The result is symmetrised.
    """
    if not step > 0:
        raise ValueError(f"step must be positive, got {step}")
    positions = np.asarray(positions, dtype=float)
    n = len(positions)
    d = 3 * n
    batch = np.repeat(positions.reshape(1, d), 2 * d, axis=0)
    index = np.arange(d)
    batch[2 * index, index] += step
    batch[2 * index + 1, index] -= step
    _, forces, _ = evaluate(potential, batch.reshape(2 * d, n, 3), batch_size)
    forces = forces.reshape(2 * d, d)
    hessian = -(forces[0::2] - forces[1::2]) / (2 * step)
    return 0.5 * (hessian + hessian.T)


def compute_hessian(
    potential: Potential,
    positions: np.ndarray,
    method: Literal["finite_difference", "autograd"] = "finite_difference",
    step: float = DEFAULT_STEP,
    batch_size: int | None = None,
) -> np.ndarray:
    """Cartesian Hessian (3N, 3N) in eV/Angstrom^2.

    ``method="autograd"`` requires ``potential.hessian(positions (N, 3)) -> (3N, 3N)`` in eV/Angstrom^2.
    """
    positions = np.asarray(positions, dtype=float)
    if method == "finite_difference":
        return finite_difference_hessian(potential, positions, step, batch_size)
    if method == "autograd":
        hessian_fn = getattr(potential, "hessian", None)
        if not callable(hessian_fn):
            raise ValueError(
                "method='autograd' needs a potential with a hessian(positions) method; "
                "use method='finite_difference' for this potential"
            )
        hessian = np.asarray(hessian_fn(positions), dtype=float).reshape(positions.size, positions.size)
        return 0.5 * (hessian + hessian.T)
    raise ValueError(f"unknown Hessian method {method!r}; use 'finite_difference' or 'autograd'")


def external_basis(positions: np.ndarray, masses: np.ndarray) -> tuple[np.ndarray, bool]:
    """Orthonormal mass-weighted translation and rotation vectors (3N, 6 or 5) and whether linear."""
    positions = np.asarray(positions, dtype=float)
    n = len(positions)
    sqrt_m = np.sqrt(masses)
    centered = positions - (masses @ positions) / masses.sum()
    vectors = np.zeros((6, n, 3))
    for k in range(3):
        vectors[k, :, k] = sqrt_m
        axis = np.zeros(3)
        axis[k] = 1.0
        vectors[3 + k] = sqrt_m[:, None] * np.cross(axis, centered)
    trans = vectors[:3].reshape(3, -1).T / np.sqrt(masses.sum())
    rot = vectors[3:].reshape(3, -1).T
    rot = rot - trans @ (trans.T @ rot)
    u, s, _ = np.linalg.svd(rot, full_matrices=False)
    keep = s > LINEAR_TOLERANCE * max(s.max(), 1e-300)
    linear = bool(keep.sum() < 3)
    return np.hstack([trans, u[:, keep]]), linear


def is_translation_invariant(hessian: np.ndarray, tolerance: float = 1e-3) -> bool:
    """Whether a Cartesian Hessian annihilates rigid translations (a molecule in vacuum does;
    a particle in an external potential does not)."""
    d = len(hessian)
    scale = max(np.abs(hessian).max(), 1e-300)
    for k in range(3):
        t = np.zeros(d)
        t[k::3] = 1.0
        if np.abs(hessian @ t).max() > tolerance * scale * np.sqrt(d / 3):
            return False
    return True


def modes_from_hessian(
    hessian: np.ndarray,
    positions: np.ndarray,
    masses: np.ndarray,
    project: Projection = True,
) -> NormalModes:
    """Normal modes from a Cartesian Hessian (eV/Angstrom^2), ``masses`` in amu.

    ``project=True`` removes translations and rotations (3N-6 or 3N-5 modes); ``False`` keeps all 3N
    (a particle in an external potential); ``"auto"`` projects only when the Hessian is translation
    invariant.
    """
    positions = np.asarray(positions, dtype=float)
    masses = np.asarray(masses, dtype=float)
    n = len(positions)
    hessian = np.asarray(hessian, dtype=float)
    if hessian.shape != (3 * n, 3 * n):
        raise ValueError(f"hessian has shape {hessian.shape}; expected ({3 * n}, {3 * n})")
    if project == "auto":
        project = n > 1 and is_translation_invariant(hessian)
    inv_sqrt_m = np.repeat(1.0 / np.sqrt(masses), 3)
    mass_weighted = hessian * inv_sqrt_m[:, None] * inv_sqrt_m[None, :]
    linear = False
    if project:
        if n < 2:
            raise ValueError("cannot project translations and rotations of a single atom; use project=False")
        external, linear = external_basis(positions, masses)
        u, _, _ = np.linalg.svd(external, full_matrices=True)
        basis = u[:, external.shape[1] :]
    else:
        basis = np.eye(3 * n)
    eigenvalues, vectors = np.linalg.eigh(basis.T @ mass_weighted @ basis)
    mw_modes = (basis @ vectors).T  # (M, 3N), orthonormal
    cartesian = mw_modes * inv_sqrt_m[None, :]
    norms = np.linalg.norm(cartesian, axis=1)
    cartesian = cartesian / norms[:, None]
    reduced_masses = 1.0 / norms**2
    frequencies = np.sign(eigenvalues) * np.sqrt(np.abs(eigenvalues)) * EIGENVALUE_TO_CM
    return NormalModes(
        frequencies=frequencies,
        modes=cartesian.reshape(-1, n, 3),
        mass_weighted_modes=mw_modes.reshape(-1, n, 3),
        reduced_masses=reduced_masses,
        force_constants=eigenvalues * reduced_masses,
        hessian=hessian,
        masses=masses,
        linear=linear,
        projected=bool(project),
    )


def normal_modes(
    potential: Potential,
    numbers: Sequence[int] | np.ndarray,
    positions: np.ndarray,
    masses: Sequence[float] | np.ndarray | None = None,
    method: Literal["finite_difference", "autograd"] = "finite_difference",
    step: float = DEFAULT_STEP,
    project: Projection = True,
    batch_size: int | None = None,
) -> NormalModes:
    """Harmonic frequencies (cm^-1) and normal modes of the structure ``positions`` (Angstrom).

    See :func:`modes_from_hessian` for ``project`` and :func:`compute_hessian` for ``method``.
    """
    numbers, positions, masses = validate_system(numbers, positions, masses)
    if project is True and len(numbers) < 2:
        raise ValueError("cannot project translations and rotations of a single atom; use project=False")
    hessian = compute_hessian(potential, positions, method, step, batch_size)
    return modes_from_hessian(hessian, positions, masses, project)


def harmonic_frequencies(
    potential: Potential,
    numbers: Sequence[int] | np.ndarray,
    positions: np.ndarray,
    masses: Sequence[float] | np.ndarray | None = None,
    **options: object,
) -> np.ndarray:
    """Harmonic frequencies in cm^-1, ascending, translations and rotations projected out.

    Returns 3N-6 values (3N-5 for a linear molecule); imaginary frequencies are negative numbers.
    ``masses`` in amu default to ASE's standard masses; ``options`` go to :func:`normal_modes`
    (``method``, ``step``, ``project``, ``batch_size``).
    """
    return normal_modes(potential, numbers, positions, masses, **options).frequencies  # type: ignore[arg-type]
