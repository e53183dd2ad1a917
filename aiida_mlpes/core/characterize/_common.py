"""Input checks and batched Potential evaluation shared by the characterization tools.

Units: positions Angstrom, energies eV, forces eV/Angstrom, masses amu.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase.data import atomic_masses, chemical_symbols

from aiida_mlpes.core.potential import Potential


def validate_system(
    numbers: Sequence[int] | np.ndarray,
    positions: np.ndarray,
    masses: Sequence[float] | np.ndarray | None = None,
    name: str = "positions",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check one structure; return ``numbers`` (N,) int, ``positions`` (N, 3) float and ``masses`` (N,) amu.

    Masses default to ASE's standard atomic masses. Raises ``ValueError`` naming the offending field.
    """
    numbers = np.asarray(numbers)
    if numbers.ndim != 1 or len(numbers) == 0:
        raise ValueError(
            f"numbers must be a non-empty 1-D sequence of atomic numbers, got shape {numbers.shape}"
        )
    if not np.issubdtype(numbers.dtype, np.integer):
        if not np.all(np.equal(np.mod(numbers, 1), 0)):
            raise ValueError(f"numbers must be integers, got {numbers.tolist()}")
        numbers = numbers.astype(np.int64)
    bad = np.flatnonzero((numbers < 1) | (numbers >= len(chemical_symbols)))
    if len(bad):
        raise ValueError(f"numbers: atom {int(bad[0])} has invalid atomic number {int(numbers[bad[0]])}")
    n = len(numbers)
    positions = np.asarray(positions, dtype=float)
    if positions.shape != (n, 3):
        raise ValueError(f"{name} have shape {positions.shape}; expected ({n}, 3) for {n} atoms")
    if not np.all(np.isfinite(positions)):
        raise ValueError(f"{name} contain non-finite values")
    if masses is None:
        masses = atomic_masses[numbers]
    masses = np.asarray(masses, dtype=float).reshape(-1)
    if masses.shape != (n,):
        raise ValueError(f"masses have {masses.size} entries but there are {n} atoms")
    bad = np.flatnonzero(~(masses > 0) | ~np.isfinite(masses))
    if len(bad):
        raise ValueError(f"masses: atom {int(bad[0])} has non-positive mass {masses[bad[0]]}")
    return numbers.astype(np.int64), positions, masses


def evaluate(
    potential: Potential, positions: np.ndarray, batch_size: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Energies (B,) eV, forces (B, N, 3) eV/Angstrom and, if the potential returns a third value,
    its per-structure energy uncertainty (B,) eV (else ``None``), evaluated in chunks of ``batch_size``.
    """
    positions = np.asarray(positions, dtype=float)
    b = len(positions)
    if batch_size is None or batch_size >= b:
        return _call(potential, positions)
    parts = [_call(potential, positions[i : i + batch_size]) for i in range(0, b, batch_size)]
    energies = np.concatenate([p[0] for p in parts])
    forces = np.concatenate([p[1] for p in parts])
    std = None if parts[0][2] is None else np.concatenate([p[2] for p in parts])
    return energies, forces, std


def _call(potential: Potential, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    out = potential(positions)
    if len(out) not in (2, 3):
        raise ValueError(f"a Potential must return (energies, forces[, std]); got {len(out)} values")
    energies = np.asarray(out[0], dtype=float).reshape(-1)
    forces = np.asarray(out[1], dtype=float)
    if energies.shape != (len(positions),) or forces.shape != positions.shape:
        raise ValueError(
            f"the potential returned energies {energies.shape} and forces {forces.shape} "
            f"for positions {positions.shape}"
        )
    std = None if len(out) == 2 else np.asarray(out[2], dtype=float).reshape(-1)
    return energies, forces, std
