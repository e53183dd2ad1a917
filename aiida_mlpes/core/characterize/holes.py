"""Hole bookkeeping for DMC: why a walker is a hole, the collapse bounds, and a capped store of holes.

Units: positions Angstrom, energies eV (stored) or Eh (``v``, thresholds, as used inside the DMC loop).
"""

from __future__ import annotations

import numpy as np
from ase.data import covalent_radii


def collapse_bounds(numbers: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Atom pairs (i, j) and the squared distances (Angstrom^2) below which they count as collapsed:
    ``factor`` times the sum of their covalent radii."""
    i, j = np.triu_indices(len(numbers), k=1)
    bound = factor * (covalent_radii[numbers[i]] + covalent_radii[numbers[j]])
    return i, j, bound**2


def hole_reasons(
    bad: np.ndarray,
    v: np.ndarray,
    v_min: float,
    threshold: float | None,
    std: np.ndarray | None,
    std_threshold: float | None,
) -> np.ndarray:
    """The reason of each flagged walker (``bad``): "nonfinite", "energy", "uncertainty" or "collapse" (in
    that precedence); ``v``, ``v_min`` and ``threshold`` in Eh, ``std`` and ``std_threshold`` in eV."""
    reasons = np.full(len(v), "collapse", dtype=object)
    if std is not None and std_threshold is not None:
        reasons[std > std_threshold] = "uncertainty"
    if threshold is not None:
        reasons[v < v_min - threshold] = "energy"
    reasons[~np.isfinite(v)] = "nonfinite"
    return reasons[bad]


class HoleStore:
    """Keeps at most ``limit`` holes (first found first kept) and counts all of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.stored = 0

    def add(self, positions: np.ndarray, energies: np.ndarray, step: int, reasons: np.ndarray) -> None:
        self.count += len(positions)
        room = self.limit - self.stored
        if room <= 0:
            return
        take = slice(0, room)
        self.parts.append(
            (positions[take].copy(), energies[take], np.full(len(energies[take]), step), reasons[take])
        )
        self.stored += len(energies[take])

    def arrays(self, n_atoms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not self.parts:
            return np.zeros((0, n_atoms, 3)), np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=str)
        return (
            np.concatenate([p[0] for p in self.parts]),
            np.concatenate([p[1] for p in self.parts]),
            np.concatenate([p[2] for p in self.parts]).astype(np.int64),
            np.concatenate([p[3] for p in self.parts]).astype(str),
        )
