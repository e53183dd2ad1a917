"""In-memory ragged arrays of molecular conformations: the exchange format between dataset, samplers,
reference calculations and training.

Per-atom fields are concatenated over conformations (shape (sum n, ...)); ``n_atoms`` (M,) gives each
conformation's atom count and ``offsets`` (M + 1,) where its atoms start. Units: eV, Angstrom, e.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from ase import Atoms

#: Per-conformation optional fields and their trailing shapes.
PER_CONFORMATION = {"energy": (), "dipole": (3,), "charge": ()}
#: Per-atom optional fields and their trailing shapes.
PER_ATOM = {"forces": (3,), "atomic_charges": ()}


@dataclass
class RaggedArrays:
    """Conformations stored as flat arrays (positions in Angstrom, energy in eV, forces in eV/Angstrom).

    Only ``n_atoms``, ``atomic_numbers`` and ``positions`` are required; ``energy``, ``forces``, ``dipole``
    (e*Angstrom), ``charge`` (total, e) and ``atomic_charges`` (e) are ``None`` when absent.
    ``source`` and ``hash`` are strings per conformation (empty string when unknown).
    """

    n_atoms: np.ndarray
    atomic_numbers: np.ndarray
    positions: np.ndarray
    energy: np.ndarray | None = None
    forces: np.ndarray | None = None
    dipole: np.ndarray | None = None
    charge: np.ndarray | None = None
    atomic_charges: np.ndarray | None = None
    source: Any = None  # (M,) object array of str after __post_init__
    hash: Any = None  # (M,) object array of str after __post_init__
    offsets: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.n_atoms = np.asarray(self.n_atoms, dtype=np.int64).reshape(-1)
        self.atomic_numbers = np.asarray(self.atomic_numbers, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        self.offsets = np.concatenate([[0], np.cumsum(self.n_atoms)]).astype(np.int64)
        m = len(self.n_atoms)
        if self.source is None:
            self.source = np.array([""] * m, dtype=object)
        if self.hash is None:
            self.hash = np.array([""] * m, dtype=object)
        self.source = np.asarray(self.source, dtype=object)
        self.hash = np.asarray(self.hash, dtype=object)

    def __len__(self) -> int:
        return len(self.n_atoms)

    @property
    def has(self) -> dict[str, bool]:
        """Which optional fields are present."""
        return {name: getattr(self, name) is not None for name in (*PER_CONFORMATION, *PER_ATOM)}

    def atom_slice(self, index: int) -> slice:
        """Slice into per-atom arrays for conformation ``index``."""
        return slice(int(self.offsets[index]), int(self.offsets[index + 1]))

    def atom_indices(self, indices: np.ndarray) -> np.ndarray:
        """Indices into per-atom arrays of the atoms of conformations ``indices``, in order (vectorised)."""
        lengths = self.n_atoms[indices]
        starts = self.offsets[indices]
        # position of each selected atom = its conformation's start + its rank within the conformation
        first_of_block = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return np.repeat(starts - first_of_block, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)

    def select(self, indices: Sequence[int] | np.ndarray) -> RaggedArrays:
        """A new RaggedArrays holding the conformations ``indices`` (in that order)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        atom_index = self.atom_indices(indices)
        kwargs = {}
        for f in fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            if value is None or f.name == "n_atoms":
                kwargs[f.name] = value
            elif f.name in ("atomic_numbers", "positions", *PER_ATOM):
                kwargs[f.name] = value[atom_index]
            else:
                kwargs[f.name] = value[indices]
        kwargs["n_atoms"] = self.n_atoms[indices]
        return RaggedArrays(**kwargs)

    def to_atoms(self, index: int) -> Atoms:
        """Conformation ``index`` as ASE Atoms, with energy/forces attached as a SinglePointCalculator."""
        from ase.calculators.singlepoint import SinglePointCalculator

        sl = self.atom_slice(index)
        atoms = Atoms(numbers=self.atomic_numbers[sl], positions=self.positions[sl])
        results: dict[str, Any] = {}
        if self.energy is not None:
            results["energy"] = float(self.energy[index])
        if self.forces is not None:
            results["forces"] = self.forces[sl].copy()
        if self.dipole is not None:
            results["dipole"] = self.dipole[index].copy()
        if self.atomic_charges is not None:
            results["charges"] = self.atomic_charges[sl].copy()
        if self.charge is not None:
            atoms.info["charge"] = float(self.charge[index])
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms

    @classmethod
    def from_atoms(cls, images: Iterable[Atoms], source: str = "") -> RaggedArrays:
        """Build from ASE Atoms; energy/forces/dipole/charges are read from attached calculators."""
        images = list(images)
        numbers = [a.numbers for a in images]
        positions = [a.positions for a in images]
        out: dict[str, list] = {"energy": [], "forces": [], "dipole": [], "atomic_charges": [], "charge": []}
        for atoms in images:
            res = atoms.calc.results if atoms.calc is not None else {}
            out["energy"].append(res.get("energy", res.get("free_energy")))
            out["forces"].append(res.get("forces"))
            out["dipole"].append(res.get("dipole"))
            out["atomic_charges"].append(res.get("charges"))
            out["charge"].append(atoms.info.get("charge"))
        kwargs: dict[str, np.ndarray | None] = {}
        for name, values in out.items():
            present = [v is not None for v in values]
            if images and all(present):
                if name in PER_ATOM:
                    kwargs[name] = np.concatenate(
                        [np.asarray(v, float).reshape(-1, *PER_ATOM[name]) for v in values]
                    )
                else:
                    kwargs[name] = np.asarray(values, dtype=float)
            else:
                kwargs[name] = None
        return cls(
            n_atoms=np.array([len(a) for a in images], dtype=np.int64),
            atomic_numbers=np.concatenate(numbers) if images else np.zeros(0, np.int64),
            positions=np.concatenate(positions) if images else np.zeros((0, 3)),
            source=np.array([source] * len(images), dtype=object),
            **kwargs,
        )

    @classmethod
    def concatenate(cls, parts: Sequence[RaggedArrays]) -> RaggedArrays:
        """Concatenate several RaggedArrays; an optional field survives only if every part has it."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3)))
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if not f.init:
                continue
            values = [getattr(p, f.name) for p in parts]
            kwargs[f.name] = None if any(v is None for v in values) else np.concatenate(values)
        return cls(**kwargs)
