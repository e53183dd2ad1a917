"""Checks on structures before any reference calculation is submitted.

Catches what would otherwise fail (or silently give garbage) on the cluster: overlapping atoms, unknown
elements, and a charge/multiplicity that does not fit the electron count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase.data import chemical_symbols

from aiida_mlpes.core.ragged import RaggedArrays

#: Default smallest allowed interatomic distance (Angstrom); the shortest real bond (H2) is 0.74.
MIN_DISTANCE = 0.5
#: Highest atomic number each method can treat (GFN-xTB parametrisations end at radon).
MAX_Z = {"GFN2-xTB": 86, "GFN1-xTB": 86, "GFN0-xTB": 86, "GFN-FF": 86}


def check_charge_multiplicity(
    numbers: Sequence[int] | np.ndarray, charge: float, multiplicity: int
) -> str | None:
    """Why ``charge``/``multiplicity`` cannot describe a molecule with these atoms, or None if they can.

    Electrons = sum(Z) - charge; an odd electron count needs an even multiplicity (doublet, quartet ...)
    and vice versa; 2S = multiplicity - 1 unpaired electrons cannot exceed the electron count.
    """
    if int(multiplicity) != multiplicity or multiplicity < 1:
        return f"multiplicity must be a positive integer, got {multiplicity}"
    if int(charge) != charge:
        return f"charge must be an integer, got {charge}"
    electrons = int(np.sum(numbers)) - int(charge)
    if electrons < 0:
        return f"charge {charge} leaves {electrons} electrons"
    unpaired = int(multiplicity) - 1
    if unpaired > electrons:
        return (
            f"multiplicity {multiplicity} needs {unpaired} unpaired electrons but there are only {electrons}"
        )
    if (electrons - unpaired) % 2:
        kind = "odd" if electrons % 2 else "even"
        allowed = "2, 4, ..." if electrons % 2 else "1, 3, ..."
        return (
            f"charge {charge} gives {electrons} electrons ({kind}), which does not fit multiplicity "
            f"{multiplicity}; allowed multiplicities are {allowed}"
        )
    return None


def structure_problems(
    arrays: RaggedArrays,
    charge: int | None = 0,
    multiplicity: int | None = 1,
    min_distance: float = MIN_DISTANCE,
    max_z: int = 118,
) -> dict[int, str]:
    """Problems per conformation index (empty dict if all are fine).

    Checks finite positions, atomic numbers in 1..``max_z``, no interatomic distance below
    ``min_distance`` (Angstrom) and, unless ``charge``/``multiplicity`` is None, their parity with the
    electron count. A per-conformation ``arrays.charge`` is used when ``charge`` is None.
    """
    problems: dict[int, str] = {}
    z = arrays.atomic_numbers
    bad_z = (z < 1) | (z > max_z)
    conf_of_atom = np.repeat(np.arange(len(arrays)), arrays.n_atoms)
    for atom in np.flatnonzero(bad_z):
        i = int(conf_of_atom[atom])
        local = int(atom - arrays.offsets[i])
        problems.setdefault(
            i,
            f"atom {local} has atomic number {int(z[atom])}, not a known element"
            + (f" (this method treats Z <= {max_z})" if max_z < 118 else ""),
        )
    for atom in np.flatnonzero(~np.isfinite(arrays.positions).all(axis=1)):
        i = int(conf_of_atom[atom])
        problems.setdefault(i, f"atom {int(atom - arrays.offsets[i])} has a non-finite position")

    # distances, batched over conformations of equal size
    for n in np.unique(arrays.n_atoms):
        if n < 2:
            continue
        idx = np.flatnonzero(arrays.n_atoms == n)
        starts = arrays.offsets[idx]
        pos = arrays.positions[starts[:, None] + np.arange(n)[None, :]]  # (B, n, 3)
        d = np.linalg.norm(pos[:, :, None, :] - pos[:, None, :, :], axis=-1)
        d[:, np.arange(n), np.arange(n)] = np.inf
        close = d.reshape(len(idx), -1).min(axis=1) < min_distance
        for b in np.flatnonzero(close):
            i = int(idx[b])
            a, c = np.unravel_index(np.argmin(d[b]), (n, n))
            zz = z[starts[b] + np.array([a, c])]
            problems.setdefault(
                i,
                f"atoms {a} ({chemical_symbols[zz[0]] if 0 < zz[0] < 119 else zz[0]}) and {c} "
                f"({chemical_symbols[zz[1]] if 0 < zz[1] < 119 else zz[1]}) are {d[b, a, c]:.3f} Angstrom apart "
                f"(overlapping; minimum {min_distance} Angstrom)",
            )

    if multiplicity is not None:
        for i in range(len(arrays)):
            if i in problems:
                continue
            q = charge if charge is not None else (arrays.charge[i] if arrays.charge is not None else 0)
            msg = check_charge_multiplicity(z[arrays.atom_slice(i)], q, multiplicity)
            if msg:
                problems[i] = msg
    return problems


def validate_structures(
    arrays: RaggedArrays,
    charge: int | None = 0,
    multiplicity: int | None = 1,
    min_distance: float = MIN_DISTANCE,
    max_z: int = 118,
) -> None:
    """Raise ``ValueError`` naming every bad conformation (see :func:`structure_problems`)."""
    if len(arrays) == 0:
        raise ValueError("no structures to compute")
    problems = structure_problems(arrays, charge, multiplicity, min_distance, max_z)
    if problems:
        shown = [f"conformation {i}: {msg}" for i, msg in sorted(problems.items())[:10]]
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise ValueError(f"{len(problems)} invalid structure(s){more}: " + "; ".join(shown))
