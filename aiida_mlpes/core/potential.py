"""The Potential contract shared by characterization, sampling and the ML calculator.

A Potential is any callable ``potential(positions) -> (energies, forces)`` with ``positions`` of shape
(B, N, 3) in Angstrom and results of shape (B,) in eV and (B, N, 3) in eV/Angstrom; one set of atoms for the
whole batch. The ML model, an ASE calculator wrapper and plain test functions all satisfy it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator


class Potential(Protocol):
    """Batched energy and forces for one fixed set of atoms (eV, eV/Angstrom)."""

    def __call__(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class ASEPotential:
    """Wrap any ASE calculator as a Potential; evaluates the batch one structure at a time.

    Args:
        calculator: an ASE calculator (e.g. ``tblite.ase.TBLite``).
        numbers: atomic numbers, shape (N,).
        charge: total charge in e, passed to calculators that read ``atoms.info['charge']``.
    """

    def __init__(self, calculator: Calculator, numbers: Sequence[int], charge: int = 0) -> None:
        self.calculator = calculator
        self.atoms = Atoms(numbers=list(numbers))
        self.atoms.info["charge"] = charge
        self.atoms.calc = calculator
        self.n_calls = 0

    def __call__(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positions = np.asarray(positions, dtype=float)
        single = positions.ndim == 2
        batch = positions[None] if single else positions
        if batch.shape[1:] != (len(self.atoms), 3):
            raise ValueError(f"positions have shape {positions.shape}; expected (B, {len(self.atoms)}, 3)")
        energies = np.empty(len(batch))
        forces = np.empty_like(batch)
        for i, pos in enumerate(batch):
            self.atoms.positions = pos
            energies[i] = self.atoms.get_potential_energy()
            forces[i] = self.atoms.get_forces()
            self.n_calls += 1
        return energies, forces
