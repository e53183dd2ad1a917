"""Collective variables (CVs) for metadynamics: bond, angle, dihedral and reactive coordinates.

Each CV has a value and an analytic gradient with respect to the Cartesian positions:

- ``bond`` (i, j): distance ``|r_j - r_i|``, Angstrom;
- ``angle`` (i, j, k): angle i-j-k at atom j, degrees in [0, 180];
- ``dihedral`` (i, j, k, l): torsion about j-k, degrees in (-180, 180], periodic;
- ``reactive`` (i, j, k, l): d(i, j) - d(k, l), Angstrom (e.g. a proton moving from one atom to another:
  (A, H, H, B)).

Specifications accepted by :func:`parse_cv`: ``[i, j]`` (bond), ``[i, j, k]`` (angle), ``[i, j, k, l]``
(dihedral), ``["reactive", i, j, k, l]`` (or any kind name first), or ``{"kind": ..., "atoms": [...]}``.
Atom indices start at 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Number of atoms of each CV kind.
N_ATOMS = {"bond": 2, "angle": 3, "dihedral": 4, "reactive": 4}
#: CV kind chosen from the number of atoms when no kind is named.
KIND_BY_LENGTH = {2: "bond", 3: "angle", 4: "dihedral"}
_DEG = 180.0 / np.pi


@dataclass(frozen=True)
class CollectiveVariable:
    """One CV: ``kind`` ("bond", "angle", "dihedral" or "reactive") of the atoms ``atoms`` (0-based)."""

    kind: str
    atoms: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.kind not in N_ATOMS:
            raise ValueError(f"unknown collective variable kind {self.kind!r}; known: {', '.join(N_ATOMS)}")
        if len(self.atoms) != N_ATOMS[self.kind]:
            raise ValueError(f"a {self.kind} CV needs {N_ATOMS[self.kind]} atoms, got {list(self.atoms)}")
        if any(a < 0 for a in self.atoms):
            raise ValueError(f"{self}: atom indices must be >= 0")
        distinct = {self.atoms[:2], self.atoms[2:]} if self.kind == "reactive" else {self.atoms}
        if any(len(set(group)) != len(group) for group in distinct):
            raise ValueError(f"{self}: names the same atom twice")

    def __str__(self) -> str:
        return f"{self.kind} {list(self.atoms)}"

    @property
    def unit(self) -> str:
        return "degree" if self.kind in ("angle", "dihedral") else "Angstrom"

    @property
    def periodic(self) -> bool:
        """Whether values wrap around (period 360 degrees)."""
        return self.kind == "dihedral"

    def value(self, positions: np.ndarray) -> float:
        """The CV at ``positions`` (N, 3) Angstrom, in Angstrom or degrees."""
        return self.value_and_gradient(positions)[0]

    def value_and_gradient(self, positions: np.ndarray) -> tuple[float, np.ndarray]:
        """The CV and its gradient (N, 3) with respect to ``positions`` (per Angstrom)."""
        values, gradients = CVSet([self])(positions)
        return float(values[0]), gradients[0]


class CVSet:
    """Several CVs evaluated together in a few numpy calls.

    Distance CVs (bond, reactive) are linear combinations of pair distances: ``values = C @ d`` with
    ``d = |D @ x|`` for an incidence matrix ``D`` (+1/-1 per pair), so all of them take one matrix product
    for the pair vectors and one contraction for the gradients, whatever their number. Angles and dihedrals
    are vectorised by kind.
    """

    def __init__(self, cvs: Sequence[CollectiveVariable]) -> None:
        self.cvs = list(cvs)
        self.periodic = np.array([cv.periodic for cv in self.cvs], dtype=bool)
        pairs: dict[tuple[int, int], int] = {}
        combination: list[dict[int, float]] = []
        distance_rows = []
        self.groups = []
        for k, cv in enumerate(self.cvs):
            if cv.kind in ("bond", "reactive"):
                terms = (
                    [(cv.atoms, 1.0)] if cv.kind == "bond" else [(cv.atoms[:2], 1.0), (cv.atoms[2:], -1.0)]
                )
                row: dict[int, float] = {}
                for (i, j), sign in terms:
                    p = pairs.setdefault((i, j), len(pairs))
                    row[p] = row.get(p, 0.0) + sign
                combination.append(row)
                distance_rows.append(k)
        for kind in ("angle", "dihedral"):
            rows = [k for k, cv in enumerate(self.cvs) if cv.kind == kind]
            if rows:
                atoms = np.array([self.cvs[k].atoms for k in rows], dtype=np.int64)
                self.groups.append((kind, np.array(rows), atoms.T))
        self.pairs = np.array(list(pairs), dtype=np.int64).reshape(-1, 2)
        self.combination = np.zeros((len(combination), len(pairs)))
        for k, row in enumerate(combination):
            for p, c in row.items():
                self.combination[k, p] = c
        self.distance_rows = np.array(distance_rows, dtype=np.int64)
        self._only_distances = len(distance_rows) == len(self.cvs)
        # plain bonds, one pair each in order: the values are the distances themselves
        self._plain_bonds = self._only_distances and np.array_equal(self.combination, np.eye(len(self.cvs)))
        self._incidence: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._state: tuple[np.ndarray, np.ndarray, np.ndarray] | np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.cvs)

    def forward(self, positions: np.ndarray) -> np.ndarray:
        """Values (K,) at ``positions`` (N, 3), keeping what :meth:`pullback` needs."""
        x = np.asarray(positions, dtype=float)
        if not self._only_distances:
            values, grads = self(x)
            self._state = grads
            return values
        incidence, _ = self._matrices(len(x))
        r = incidence @ x
        d = np.sqrt(np.einsum("ij,ij->i", r, r))
        self._state = (r, d, incidence)
        return d if self._plain_bonds else self.combination @ d

    def pullback(self, slope: np.ndarray) -> np.ndarray:
        """sum_k slope_k dCV_k/dx (N, 3) at the positions of the last :meth:`forward`: the gradient of a
        function of the CVs whose derivatives are ``slope`` (K,), without the (K, N, 3) Jacobian when all
        CVs are distances."""
        state = self._state
        if state is None:
            raise RuntimeError("CVSet.pullback needs a forward() first")
        if isinstance(state, np.ndarray):
            return (slope @ state.reshape(len(slope), -1)).reshape(state.shape[1:])
        r, d, incidence = state
        coefficients = slope if self._plain_bonds else self.combination.T @ slope
        return incidence.T @ (r * (coefficients / np.maximum(d, 1e-12))[:, None])

    def _matrices(self, n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
        """Incidence matrix D (P, N) of the pairs and C D (K_distance, P, N), for systems of ``n_atoms``."""
        if n_atoms not in self._incidence:
            incidence = np.zeros((len(self.pairs), n_atoms))
            rows = np.arange(len(self.pairs))
            incidence[rows, self.pairs[:, 0]] = -1.0
            incidence[rows, self.pairs[:, 1]] = 1.0
            self._incidence[n_atoms] = (incidence, self.combination[:, :, None] * incidence[None])
        return self._incidence[n_atoms]

    def __call__(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values (K,) in Angstrom/degrees and gradients (K, N, 3) at ``positions`` (N, 3)."""
        x = np.asarray(positions, dtype=float)
        if len(self.pairs):
            incidence, weighted = self._matrices(len(x))
            r = incidence @ x  # pair vectors r_j - r_i (P, 3)
            d = np.sqrt(np.einsum("ij,ij->i", r, r))
            unit = r / np.maximum(d, 1e-12)[:, None]
            distance_values = self.combination @ d
            distance_grads = np.einsum("kpn,pc->knc", weighted, unit)
            if self._only_distances:
                return distance_values, distance_grads
        values = np.empty(len(self.cvs))
        grads = np.zeros((len(self.cvs), len(x), 3))
        if len(self.pairs):
            values[self.distance_rows] = distance_values
            grads[self.distance_rows] = distance_grads
        for kind, rows, idx in self.groups:
            values[rows], g = (_angles if kind == "angle" else _dihedrals)(*(x[i] for i in idx))
            for column, atom in enumerate(idx):
                grads[rows, atom] += g[column]
        return values, grads


def _norm(v: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", v, v))


def _angles(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Angles a-b-c in degrees (B,) and gradients with respect to a, b, c (3, B, 3)."""
    u, v = a - b, c - b
    nu, nv = _norm(u)[:, None], _norm(v)[:, None]
    cos = np.clip(np.einsum("ij,ij->i", u, v)[:, None] / (nu * nv), -1.0, 1.0)
    sin = np.maximum(np.sqrt(1.0 - cos * cos), 1e-8)
    ga = (cos * u / nu**2 - v / (nu * nv)) / sin
    gc = (cos * v / nv**2 - u / (nu * nv)) / sin
    return np.degrees(np.arccos(cos[:, 0])), _DEG * np.stack([ga, -ga - gc, gc])


def _dihedrals(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dihedrals a-b-c-d in degrees (B,), (-180, 180], and gradients (4, B, 3)."""
    b1, b2, b3 = b - a, c - b, d - c
    m, n = np.cross(b1, b2), np.cross(b2, b3)
    nb2 = _norm(b2)[:, None]
    phi = np.arctan2(nb2[:, 0] * np.einsum("ij,ij->i", b1, n), np.einsum("ij,ij->i", m, n))
    mm = np.maximum(np.einsum("ij,ij->i", m, m), 1e-24)[:, None]
    nn = np.maximum(np.einsum("ij,ij->i", n, n), 1e-24)[:, None]
    ga = -nb2 / mm * m
    gd = nb2 / nn * n
    p = np.einsum("ij,ij->i", b1, b2)[:, None] / nb2**2
    q = np.einsum("ij,ij->i", b3, b2)[:, None] / nb2**2
    gb = -(1.0 + p) * ga + q * gd
    gc = -(ga + gb + gd)  # translation invariance
    return np.degrees(phi), _DEG * np.stack([ga, gb, gc, gd])


def parse_cv(spec: Any) -> CollectiveVariable:
    """A CollectiveVariable from a specification (see the module docstring)."""
    if isinstance(spec, CollectiveVariable):
        return spec
    if isinstance(spec, dict):
        unknown = set(spec) - {"kind", "type", "atoms"}
        if unknown or "atoms" not in spec:
            raise ValueError(f"collective variable {spec!r}: expected keys 'kind' and 'atoms'")
        atoms = _indices(spec["atoms"], spec)
        kind = spec.get("kind", spec.get("type")) or KIND_BY_LENGTH.get(len(atoms), "")
        return CollectiveVariable(str(kind), atoms)
    if isinstance(spec, (list, tuple)) and spec:
        if isinstance(spec[0], str):
            return CollectiveVariable(spec[0], _indices(spec[1:], spec))
        atoms = _indices(spec, spec)
        if len(atoms) not in KIND_BY_LENGTH:
            raise ValueError(
                f"collective variable {list(spec)}: 2, 3 or 4 atoms expected (bond, angle, dihedral)"
            )
        return CollectiveVariable(KIND_BY_LENGTH[len(atoms)], atoms)
    raise ValueError(f"cannot read a collective variable from {spec!r}")


def _indices(values: Any, spec: Any) -> tuple[int, ...]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"collective variable {spec!r}: atom index {v!r} is not an integer")
        out.append(int(v))
    return tuple(out)


def parse_cvs(specs: Sequence[Any]) -> list[CollectiveVariable]:
    """Several CVs; at least one."""
    if isinstance(specs, (str, bytes)) or not isinstance(specs, Sequence) or len(specs) == 0:
        raise ValueError(f"collective_variables must be a non-empty list of CV specifications, got {specs!r}")
    return [parse_cv(spec) for spec in specs]


def check_atoms_exist(cvs: Sequence[CollectiveVariable], n_atoms: int, system: int | None = None) -> None:
    """Raise ValueError naming the CV and atom when a CV refers to an atom the system does not have."""
    for i, cv in enumerate(cvs):
        bad = [a for a in cv.atoms if a >= n_atoms]
        if bad:
            where = "the system" if system is None else f"system {system}"
            raise ValueError(
                f"collective variable {i} ({cv}) names atom {bad[0]}, but {where} has only {n_atoms} atoms "
                f"(indices 0-{n_atoms - 1})"
            )


def wrap(diff: np.ndarray, periodic: np.ndarray) -> np.ndarray:
    """Differences of CV values (..., K), wrapped into [-180, 180) degrees in the ``periodic`` columns."""
    if periodic.any():
        diff = diff.copy()
        diff[..., periodic] = (diff[..., periodic] + 180.0) % 360.0 - 180.0
    return diff
