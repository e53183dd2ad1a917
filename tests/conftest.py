"""Shared fixtures. aiida-core's fixtures give a temporary SQLite profile per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule

from aiida_mlpes.core.ragged import RaggedArrays

pytest_plugins = ["aiida.tools.pytest_fixtures"]

#: The read-only shared data folder (real program outputs), beside the checkout.
SHARED = Path(__file__).resolve().parents[2] / "shared"
REALDATA = SHARED / "realdata"
#: The xtb executable (installed by scripts/setup.sh).
XTB = shutil.which("xtb")


@pytest.fixture
def realdata() -> Path:
    """Folder of real ORCA/Gaussian/xTB outputs (shared/realdata); the tests that need it fail loudly without it."""
    if not REALDATA.is_dir():
        pytest.fail(f"shared real data not found at {REALDATA}")
    return REALDATA


@pytest.fixture(scope="session")
def require_xtb() -> str:
    """Path of the xtb executable; a hard requirement, so the tests that need it fail loudly without it."""
    assert XTB, "xtb not installed: run scripts/setup.sh"
    return XTB


def make_arrays(n: int = 5, seed: int = 0, labelled: bool = True, with_optional: bool = True) -> RaggedArrays:
    """Synthetic NH3 and H2O conformations with random labels (eV, Angstrom)."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        atoms = molecule("NH3" if i % 2 == 0 else "H2O")
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
        images.append(atoms)
    arrays = RaggedArrays.from_atoms(images)
    if labelled:
        arrays.energy = rng.normal(size=n) - 100.0
        arrays.forces = rng.normal(size=(len(arrays.positions), 3))
        if with_optional:
            arrays.dipole = rng.normal(size=(n, 3))
            arrays.charge = np.zeros(n)
            arrays.atomic_charges = rng.normal(size=len(arrays.positions)) * 0.1
    return arrays


@pytest.fixture
def arrays() -> RaggedArrays:
    return make_arrays()
