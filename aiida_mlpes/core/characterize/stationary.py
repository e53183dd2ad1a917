"""Checks that a structure is the stationary point the caller says it is (minimum or transition state).

Units: eV, Angstrom, amu, cm^-1.
"""

from __future__ import annotations

import numpy as np

from aiida_mlpes.core.characterize.frequencies import NormalModes

#: Imaginary frequencies smaller than this (cm^-1, magnitude) are treated as numerical noise.
IMAGINARY_TOLERANCE = 10.0


def relaxation_energy(modes: NormalModes, forces: np.ndarray) -> float:
    """Harmonic estimate (eV) of how much the energy would drop by relaxing to the nearby stationary
    point: 0.5 * sum_k (g . q_k)^2 / lambda_k over the real modes, with the mass-weighted gradient g, the
    mass-weighted modes q_k and the eigenvalues lambda_k of the mass-weighted Hessian."""
    forces = np.asarray(forces, dtype=float).reshape(-1)
    real = modes.force_constants > 0
    # In mass-weighted coordinates the quadratic model is diagonal in the normal modes.
    inv_sqrt_m = np.repeat(1.0 / np.sqrt(modes.masses), 3)
    g_mw = forces * inv_sqrt_m
    q = modes.mass_weighted_modes.reshape(len(modes.frequencies), -1)[real] @ g_mw
    eigenvalues = modes.force_constants[real] / modes.reduced_masses[real]
    return float(0.5 * np.sum(q**2 / eigenvalues))


def check_minimum(
    modes: NormalModes,
    forces: np.ndarray,
    max_relaxation: float | None = None,
    imaginary_tolerance: float = IMAGINARY_TOLERANCE,
    what: str = "positions",
) -> None:
    """Raise ``ValueError`` unless the structure is a minimum: no imaginary frequency beyond
    ``imaginary_tolerance`` cm^-1 and, when ``max_relaxation`` (eV) is given, a harmonic relaxation
    energy below it."""
    imaginary = modes.frequencies[modes.imaginary(imaginary_tolerance)]
    if len(imaginary):
        raise ValueError(
            f"{what} are not a minimum: {len(imaginary)} imaginary frequencies "
            f"({', '.join(f'{-f:.1f}i' for f in imaginary)} cm^-1); optimize the structure first "
            "(characterize.optimize.optimize_minimum)"
        )
    if max_relaxation is not None:
        drop = relaxation_energy(modes, forces)
        if drop > max_relaxation:
            fmax = float(np.linalg.norm(np.reshape(forces, (-1, 3)), axis=1).max())
            raise ValueError(
                f"{what} are not a minimum: max force {fmax:.3g} eV/Angstrom, relaxing would lower the "
                f"energy by ~{drop:.2e} eV (> {max_relaxation:.2e} eV allowed); optimize the structure "
                "first (characterize.optimize.optimize_minimum)"
            )


def newton_step(modes: NormalModes, forces: np.ndarray, flat: float = 1.0) -> np.ndarray:
    """Cartesian displacement (N, 3) in Angstrom to the stationary point of the quadratic model (a Newton
    step in mass-weighted coordinates, over all modes whose frequency exceeds ``flat`` cm^-1 in magnitude)."""
    inv_sqrt_m = np.repeat(1.0 / np.sqrt(modes.masses), 3)
    g_mw = -np.asarray(forces, dtype=float).reshape(-1) * inv_sqrt_m
    keep = np.abs(modes.frequencies) > flat
    vectors = modes.mass_weighted_modes.reshape(len(modes.frequencies), -1)[keep]
    eigenvalues = modes.force_constants[keep] / modes.reduced_masses[keep]
    q = -((vectors @ g_mw) / eigenvalues) @ vectors
    return (q * inv_sqrt_m).reshape(-1, 3)


def check_transition_state(
    modes: NormalModes,
    forces: np.ndarray,
    tolerance: float = 0.05,
    imaginary_tolerance: float = IMAGINARY_TOLERANCE,
    what: str = "ts_positions",
) -> int:
    """Raise ``ValueError`` unless the structure is (near) a first-order saddle point: exactly one imaginary
    frequency beyond ``imaginary_tolerance`` cm^-1, and the Newton step to the stationary point moves no
    atom by more than ``tolerance`` Angstrom (a test independent of the energy scale).

    Returns the index of the imaginary mode.
    """
    imaginary = modes.imaginary(imaginary_tolerance)
    if len(imaginary) != 1:
        listed = ", ".join(f"{-f:.1f}i" for f in modes.frequencies[imaginary]) or "none"
        raise ValueError(
            f"{what} are not a transition state: expected exactly one imaginary frequency, found "
            f"{len(imaginary)} ({listed} cm^-1); optimize it first (characterize.optimize.optimize_ts)"
        )
    step = float(np.linalg.norm(newton_step(modes, forces), axis=1).max())
    if step > tolerance:
        force = float(np.linalg.norm(np.reshape(forces, (-1, 3)), axis=1).max())
        raise ValueError(
            f"{what} are not a stationary point: max force {force:.3g} eV/Angstrom, the saddle is ~{step:.3g} "
            f"Angstrom away (> {tolerance}); optimize it first (characterize.optimize.optimize_ts)"
        )
    return int(imaginary[0])
