"""Analytic Potentials with known answers, for tests, benchmarks and examples.

All follow the Potential contract (positions (B, N, 3) Angstrom -> energies (B,) eV, forces (B, N, 3)
eV/Angstrom) and also offer ``hessian(positions (N, 3)) -> (3N, 3N)`` eV/Angstrom^2 (exact), so they work
with ``method="autograd"`` in :mod:`~aiida_mlpes.core.characterize.frequencies`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import units as _u

#: hbar * sqrt(eV / (Angstrom^2 amu)) in eV: the quantum hbar*omega of a unit force constant and mass.
HBAR_OMEGA_UNIT = float(_u._hbar * np.sqrt(_u._e / (1e-20 * _u._amu)) / _u._e)


def harmonic_ground_state(force_constant: float | np.ndarray, mass: float | np.ndarray) -> float | np.ndarray:
    """Exact zero-point energy 0.5*hbar*omega (eV) of harmonic degrees of freedom (eV/A^2, amu)."""
    return 0.5 * HBAR_OMEGA_UNIT * np.sqrt(force_constant / mass)


def morse_ground_state(depth: float, width: float, reduced_mass: float) -> float:
    """Exact ground-state energy above the well bottom (eV) of a Morse oscillator.

    ``depth`` D in eV, ``width`` a in 1/Angstrom, ``reduced_mass`` in amu:
    E0 = hbar*omega/2 - (hbar*omega)^2 / (16 D) with omega = a sqrt(2 D / mu).
    """
    hw = HBAR_OMEGA_UNIT * width * np.sqrt(2 * depth / reduced_mass)
    return hw / 2 - hw**2 / (16 * depth)


class HarmonicTrap:
    """Each atom bound to its own centre: ``V = sum_i 0.5 k_i |r_i - c_i|^2`` (k in eV/Angstrom^2).

    ``force_constants`` may be a scalar, (N,) or (N, 3) for anisotropic traps.
    """

    def __init__(self, centers: np.ndarray, force_constants: float | np.ndarray) -> None:
        self.centers = np.asarray(centers, dtype=float)
        k = np.asarray(force_constants, dtype=float)
        self.k = np.broadcast_to(k[:, None] if k.ndim == 1 else k, self.centers.shape).copy()

    def __call__(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = np.asarray(positions, dtype=float) - self.centers
        kd = self.k * d
        return 0.5 * np.einsum("bij,bij->b", kd, d), -kd

    def hessian(self, positions: np.ndarray) -> np.ndarray:
        return np.diag(self.k.reshape(-1))

    def ground_state(self, masses: Sequence[float]) -> float:
        """Exact quantum ground-state energy in eV for atoms of ``masses`` amu."""
        m = np.asarray(masses, dtype=float)[:, None]
        return float(np.sum(harmonic_ground_state(self.k, m)))


class PairPotential:
    """Sum of Morse or harmonic pair terms between chosen atom pairs (eV, Angstrom).

    Each term is ``(i, j, kind, params)`` with ``kind="morse"``, params ``(D, a, r0)``:
    D (1 - exp(-a (r - r0)))^2, or ``kind="harmonic"``, params ``(k, r0)``: 0.5 k (r - r0)^2.
    """

    def __init__(self, terms: Sequence[tuple[int, int, str, tuple[float, ...]]]) -> None:
        self.terms = [(int(i), int(j), kind, tuple(map(float, p))) for i, j, kind, p in terms]
        for _, _, kind, _ in self.terms:
            if kind not in ("morse", "harmonic"):
                raise ValueError(f"unknown pair term {kind!r}; use 'morse' or 'harmonic'")

    @staticmethod
    def _phi(kind: str, p: tuple[float, ...], r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if kind == "morse":
            depth, a, r0 = p
            x = np.exp(-a * (r - r0))
            return depth * (1 - x) ** 2, 2 * depth * a * x * (1 - x), 2 * depth * a**2 * x * (2 * x - 1)
        k, r0 = p
        return 0.5 * k * (r - r0) ** 2, k * (r - r0), np.full_like(r, k)

    def __call__(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positions = np.asarray(positions, dtype=float)
        energies = np.zeros(len(positions))
        forces = np.zeros_like(positions)
        for i, j, kind, p in self.terms:
            v = positions[:, j] - positions[:, i]
            r = np.linalg.norm(v, axis=-1)
            e, de, _ = self._phi(kind, p, r)
            energies += e
            f = (de / r)[:, None] * v  # gradient on j
            forces[:, i] += f
            forces[:, j] -= f
        return energies, forces

    def hessian(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=float)
        n = len(positions)
        h = np.zeros((n, 3, n, 3))
        for i, j, kind, p in self.terms:
            v = positions[j] - positions[i]
            r = float(np.linalg.norm(v))
            u = v / r
            _, de, dde = self._phi(kind, p, np.array(r))
            block = dde * np.outer(u, u) + de / r * (np.eye(3) - np.outer(u, u))
            h[i, :, i] += block
            h[j, :, j] += block
            h[i, :, j] -= block
            h[j, :, i] -= block
        return h.reshape(3 * n, 3 * n)


class MullerBrown:
    """The Müller-Brown surface for one atom in the xy plane, plus 0.5 k_z z^2.

    V(x, y) = scale * sum_k A_k exp(a_k (x-x_k)^2 + b_k (x-x_k)(y-y_k) + c_k (y-y_k)^2), lengths in
    Angstrom. Minima near (-0.558, 1.442), (0.623, 0.028), (-0.050, 0.467); saddles near
    (-0.822, 0.624) and (0.212, 0.293). ``scale`` converts the classic units to eV.
    """

    A = np.array([-200.0, -100.0, -170.0, 15.0])
    a = np.array([-1.0, -1.0, -6.5, 0.7])
    b = np.array([0.0, 0.0, 11.0, 0.6])
    c = np.array([-10.0, -10.0, -6.5, 0.7])
    x0 = np.array([1.0, 0.0, -0.5, -1.0])
    y0 = np.array([0.0, 0.5, 1.5, 1.0])

    def __init__(self, scale: float = 0.01, kz: float = 1.0) -> None:
        self.scale = float(scale)
        self.kz = float(kz)

    def _terms(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dx = x[..., None] - self.x0
        dy = y[..., None] - self.y0
        e = self.scale * self.A * np.exp(self.a * dx**2 + self.b * dx * dy + self.c * dy**2)
        return e, 2 * self.a * dx + self.b * dy, self.b * dx + 2 * self.c * dy

    def __call__(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positions = np.asarray(positions, dtype=float)
        x, y, z = positions[:, 0, 0], positions[:, 0, 1], positions[:, 0, 2]
        e, gx, gy = self._terms(x, y)
        energies = e.sum(-1) + 0.5 * self.kz * z**2
        forces = np.stack([-(e * gx).sum(-1), -(e * gy).sum(-1), -self.kz * z], axis=-1)[:, None, :]
        return energies, forces

    def hessian(self, positions: np.ndarray) -> np.ndarray:
        x, y = np.asarray(positions, dtype=float)[0, :2]
        e, gx, gy = self._terms(np.array(x), np.array(y))
        hxx = np.sum(e * (gx**2 + 2 * self.a))
        hyy = np.sum(e * (gy**2 + 2 * self.c))
        hxy = np.sum(e * (gx * gy + self.b))
        return np.array([[hxx, hxy, 0.0], [hxy, hyy, 0.0], [0.0, 0.0, self.kz]])
