"""Hole bookkeeping for DMC: why a walker is a hole, the collapse bounds, a capped store of holes, and a
diverse selection of structures (farthest-point sampling on a permutation-invariant descriptor).

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
    std_threshold: float | np.ndarray | None,
) -> np.ndarray:
    """The reason of each flagged walker (``bad``): "nonfinite", "energy", "uncertainty" or "collapse" (in
    that precedence); ``v``, ``v_min`` and ``threshold`` in Eh, ``std`` and ``std_threshold`` (one value, or
    one per walker) in eV."""
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


def pair_descriptor(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Permutation-invariant descriptor (M, P) of structures (M, N, 3) Angstrom: for each element pair
    (Z_a <= Z_b), the inverse interatomic distances (1/Angstrom) of all atom pairs of that kind, sorted.

    Swapping two atoms of the same element leaves it unchanged; so do rotations and translations."""
    numbers = np.asarray(numbers)
    positions = np.asarray(positions, dtype=float)
    if positions.ndim != 3 or positions.shape[1:] != (len(numbers), 3):
        raise ValueError(f"positions have shape {positions.shape}; expected (M, {len(numbers)}, 3)")
    i, j = np.triu_indices(len(numbers), k=1)
    if len(i) == 0:
        return positions.reshape(len(positions), -1)  # one atom: its position is all there is
    with np.errstate(divide="ignore"):
        inverse = 1.0 / np.linalg.norm(positions[:, i] - positions[:, j], axis=-1)
    inverse = np.minimum(inverse, 1e6)  # coincident atoms: large but finite
    z_low, z_high = np.minimum(numbers[i], numbers[j]), np.maximum(numbers[i], numbers[j])
    kinds = sorted(set(zip(z_low.tolist(), z_high.tolist(), strict=True)))
    blocks = []
    for a, b in kinds:
        columns = np.flatnonzero((z_low == a) & (z_high == b))
        blocks.append(-np.sort(-inverse[:, columns], axis=1))
    return np.concatenate(blocks, axis=1)


def select_diverse(
    numbers: np.ndarray,
    positions: np.ndarray,
    k: int,
    seed: int = 0,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of ``k`` structures among ``positions`` (M, N, 3) Angstrom chosen by farthest-point sampling
    on :func:`pair_descriptor`, so that one densely sampled basin cannot take the whole quota.

    The first pick is drawn with ``seed`` (deterministic); with ``weights`` (M,) >= 0 (e.g. the committee
    force deviation) the first pick is the largest weight and each next pick maximises weight times the
    descriptor distance to the nearest picked structure (most uncertain first, and diverse). Returns at most
    ``min(k, M)`` indices in the order picked; structures identical to a picked one (distance 0) are taken only
    when nothing else is left."""
    positions = np.asarray(positions, dtype=float)
    m = len(positions)
    if int(k) != k or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k}")
    if weights is not None:
        weights = np.asarray(weights, dtype=float).reshape(-1)
        if weights.shape != (m,) or not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError(f"weights must be {m} finite non-negative numbers")
    k = min(int(k), m)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    x = pair_descriptor(numbers, positions)
    scale = np.ones(m) if weights is None else weights + 1e-12 * max(float(weights.max()), 1e-300)
    first = int(np.random.default_rng(seed).integers(m)) if weights is None else int(np.argmax(weights))
    chosen = [first]
    nearest = np.linalg.norm(x - x[first], axis=1)
    taken = np.zeros(m, dtype=bool)
    taken[first] = True
    for _ in range(k - 1):
        score = np.where(taken, -np.inf, nearest * scale)
        if not np.any(score > 0):  # only duplicates of picked structures remain: take the heaviest
            score = np.where(taken, -np.inf, scale)
        pick = int(np.argmax(score))
        chosen.append(pick)
        taken[pick] = True
        nearest = np.minimum(nearest, np.linalg.norm(x - x[pick], axis=1))
    return np.asarray(chosen, dtype=np.int64)
