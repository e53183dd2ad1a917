"""Shared fixtures. aiida-core's fixtures give a temporary SQLite profile per test session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule

from aiida_mlpes.core.ragged import RaggedArrays

pytest_plugins = ["aiida.tools.pytest_fixtures"]

#: The checkout's root folder.
ROOT = Path(__file__).resolve().parents[1]
#: Environment variable with the folder of real program outputs (default: ``<checkout>/../shared/realdata``).
REALDATA_ENV = "MLPES_REALDATA"
#: Environment variable that turns a missing real-data folder into a failure (``.ci/run`` sets it to 1).
REQUIRE_REALDATA_ENV = "MLPES_REQUIRE_REALDATA"
#: The xtb executable (installed by scripts/setup.sh).
XTB = shutil.which("xtb")


def realdata_folder() -> Path:
    """The real-data folder named by ``MLPES_REALDATA``, else ``shared/realdata`` beside the checkout."""
    value = os.environ.get(REALDATA_ENV, "").strip()
    return Path(value).expanduser().resolve() if value else ROOT.parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """Folder of real ORCA/Gaussian/xTB outputs and datasets (read only).

    Missing: the test is skipped with the reason, or fails when ``MLPES_REQUIRE_REALDATA=1`` (CI).
    """
    folder = realdata_folder()
    if folder.is_dir():
        return folder
    reason = f"real data not found at {folder} (set {REALDATA_ENV} to the shared/realdata folder)"
    if os.environ.get(REQUIRE_REALDATA_ENV, "").strip() not in ("", "0"):
        pytest.fail(f"{reason}; {REQUIRE_REALDATA_ENV} is set, so it is required", pytrace=False)
    pytest.skip(reason)


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
