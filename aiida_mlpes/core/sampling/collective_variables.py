"""Collective variables (CVs) for metadynamics: bond, angle, dihedral and reactive coordinates.

Each CV has a value and an analytic gradient with respect to the Cartesian positions:

- ``bond`` (i, j): distance |r_j - r_i|, Angstrom;
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
        x = np.asarray(positions, dtype=float)
        grad = np.zeros_like(x)
        idx = self.atoms
        if self.kind == "bond":
            value, g = _bond(x[idx[0]], x[idx[1]])
            grad[list(idx)] += g
        elif self.kind == "reactive":
            d1, g1 = _bond(x[idx[0]], x[idx[1]])
            d2, g2 = _bond(x[idx[2]], x[idx[3]])
            np.add.at(grad, list(idx[:2]), g1)
            np.add.at(grad, list(idx[2:]), -g2)
            value = d1 - d2
        elif self.kind == "angle":
            value, g = _angle(*x[list(idx)])
            grad[list(idx)] += g
        else:
            value, g = _dihedral(*x[list(idx)])
            grad[list(idx)] += g
        return float(value), grad


def _bond(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    r = b - a
    d = float(np.linalg.norm(r))
    u = r / max(d, 1e-12)
    return d, np.stack([-u, u])


def _angle(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[float, np.ndarray]:
    u, v = a - b, c - b
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    cos = float(np.clip(u @ v / (nu * nv), -1.0, 1.0))
    sin = max(np.sqrt(1.0 - cos * cos), 1e-8)
    ga = (cos * u / nu**2 - v / (nu * nv)) / sin
    gc = (cos * v / nv**2 - u / (nu * nv)) / sin
    return np.degrees(np.arccos(cos)), _DEG * np.stack([ga, -ga - gc, gc])


def _dihedral(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> tuple[float, np.ndarray]:
    b1, b2, b3 = b - a, c - b, d - c
    m, n = np.cross(b1, b2), np.cross(b2, b3)
    nb2 = np.linalg.norm(b2)
    phi = np.arctan2(nb2 * (b1 @ n), m @ n)
    mm, nn = max(m @ m, 1e-24), max(n @ n, 1e-24)
    ga = -nb2 / mm * m
    gd = nb2 / nn * n
    p, q = (b1 @ b2) / nb2**2, (b3 @ b2) / nb2**2
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


def difference(
    cv: CollectiveVariable, value: np.ndarray | float, reference: np.ndarray | float
) -> np.ndarray:
    """value - reference, wrapped into [-180, 180) degrees for periodic CVs."""
    diff = np.asarray(value, dtype=float) - np.asarray(reference, dtype=float)
    return (diff + 180.0) % 360.0 - 180.0 if cv.periodic else diff
