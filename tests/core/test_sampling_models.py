"""Analytic ASE calculators used by the sampling tests, and checks that they are right (forces = -dE/dx).

The other ``test_sampling_*`` modules import these models (``from tests.core.test_sampling_models import ...``).
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.calculator import CalculationFailed, Calculator, all_changes

from aiida_mlpes.core.characterize.frequencies import EIGENVALUE_TO_CM, external_basis


class Analytic(Calculator):
    """Base: subclasses define ``energy_forces(positions) -> (E, F)``."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        energy, forces = self.energy_forces(self.atoms.positions)
        self.results = {"energy": float(energy), "free_energy": float(energy), "forces": forces}


class Einstein(Analytic):
    """Every atom in its own isotropic harmonic well: E = 0.5 k sum |x_i - x0_i|^2 (eV, Angstrom)."""

    def __init__(self, reference: np.ndarray, k: float = 1.0) -> None:
        super().__init__()
        self.reference, self.k = np.array(reference, dtype=float), k

    def energy_forces(self, x):
        d = x - self.reference
        return 0.5 * self.k * np.sum(d * d), -self.k * d


class LinearField(Analytic):
    """E = F * x of atom 0 (a constant force -F along x): every trial move has the same statistics."""

    def __init__(self, force: float) -> None:
        super().__init__()
        self.force = force

    def energy_forces(self, x):
        forces = np.zeros_like(x)
        forces[0, 0] = -self.force
        return self.force * x[0, 0], forces


class Quadratic(Analytic):
    """E = 0.5 dx^T H dx around ``reference`` with a translation- and rotation-free Hessian H."""

    def __init__(self, reference: np.ndarray, hessian: np.ndarray) -> None:
        super().__init__()
        self.reference, self.hessian = np.array(reference, dtype=float), hessian

    def energy_forces(self, x):
        d = (x - self.reference).reshape(-1)
        g = self.hessian @ d
        return 0.5 * d @ g, -g.reshape(x.shape)


def harmonic_molecule(frequencies=(1000.0, 1500.0, 1600.0, 3300.0, 3400.0, 3500.0), seed=0):
    """NH3 at a minimum of an exactly quadratic surface with the given harmonic frequencies (cm^-1)."""
    atoms = molecule("NH3")
    masses = atoms.get_masses()
    external, _ = external_basis(atoms.positions, masses)
    u, _, _ = np.linalg.svd(external, full_matrices=True)
    internal = u[:, external.shape[1] :]
    rotation, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(frequencies),) * 2))
    eigen = (np.asarray(frequencies) / EIGENVALUE_TO_CM) ** 2
    mass_weighted = internal @ rotation @ np.diag(eigen) @ rotation.T @ internal.T
    sqrt_m = np.repeat(np.sqrt(masses), 3)
    hessian = sqrt_m[:, None] * mass_weighted * sqrt_m[None, :]
    return atoms, Quadratic(atoms.positions, hessian)


class DoubleWellBond(Analytic):
    """E = h ((d - d0)^2 / w^2 - 1)^2 of the distance d between atoms 0 and 1: wells at d0 -+ w, barrier h."""

    def __init__(self, height: float = 0.5, center: float = 1.5, half_width: float = 0.5) -> None:
        super().__init__()
        self.h, self.d0, self.w = height, center, half_width

    def energy_forces(self, x):
        r = x[1] - x[0]
        d = np.linalg.norm(r)
        y = (d - self.d0) ** 2 / self.w**2 - 1.0
        de_dd = self.h * 2 * y * 2 * (d - self.d0) / self.w**2
        forces = np.zeros_like(x)
        forces[1] = -de_dd * r / d
        forces[0] = -forces[1]
        return self.h * y * y, forces


class Failing(Calculator):
    """Wraps ``inner``; fails (raises, or returns NaN with ``nan=True``) from call ``fail_at`` on."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, inner: Calculator, fail_at: int, nan: bool = False) -> None:
        super().__init__()
        self.inner, self.fail_at, self.nan, self.n = inner, fail_at, nan, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.n += 1
        if self.n >= self.fail_at and not self.nan:
            raise CalculationFailed("SCF did not converge (simulated)")
        energy = self.inner.get_potential_energy(self.atoms)
        forces = self.inner.get_forces(self.atoms)
        if self.n >= self.fail_at:
            energy = float("nan")
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}


def _numerical_forces(calc: Calculator, atoms: Atoms, h: float = 1e-5) -> np.ndarray:
    out = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for k in range(3):
            energies = []
            for sign in (1, -1):
                a = atoms.copy()
                a.positions[i, k] += sign * h
                energies.append(calc.get_potential_energy(a))
            out[i, k] = -(energies[0] - energies[1]) / (2 * h)
    return out


@pytest.mark.parametrize(
    "make",
    [
        lambda: (molecule("NH3"), Einstein(molecule("NH3").positions + 0.1, k=2.0)),
        lambda: harmonic_molecule(),
        lambda: (Atoms("C2", positions=[[0, 0, 0], [0.3, 0.9, 0.4]]), DoubleWellBond()),
        lambda: (Atoms("Ar", positions=[[0.2, 0, 0]]), LinearField(1.5)),
    ],
)
def test_models_forces_are_minus_gradient(make):
    atoms, calc = make()
    atoms.positions += np.random.default_rng(1).normal(0, 0.05, atoms.positions.shape)
    forces = calc.get_forces(atoms)
    assert np.allclose(forces, _numerical_forces(calc, atoms), atol=1e-6)


def test_harmonic_molecule_has_requested_frequencies():
    from aiida_mlpes.core.characterize.frequencies import modes_from_hessian

    atoms, calc = harmonic_molecule()
    modes = modes_from_hessian(calc.hessian, atoms.positions, atoms.get_masses())
    assert np.allclose(modes.frequencies, [1000, 1500, 1600, 3300, 3400, 3500], atol=1e-6)
    # translations and rotations cost nothing
    assert abs(calc.get_potential_energy(atoms.copy())) < 1e-12
    shifted = atoms.copy()
    shifted.positions += [0.3, -0.2, 0.1]
    assert abs(calc.get_potential_energy(shifted)) < 1e-10
