"""Import and export of datasets: extxyz (ASE), ASE databases and npz files, with explicit units.

Every importer returns RaggedArrays in eV/Angstrom/e with ``source = "import:<file name>"``; units of the
file are given by the caller (``energy_unit="Hartree"``, ``length_unit="Bohr"`` ...) and converted here.
Exporters write the public units and say so (npz ``units`` entry, ASE db metadata).

extxyz keeps 8 decimals of per-atom columns (ASE's fixed format), so HDF5 -> extxyz -> HDF5 agrees to
5e-9 Angstrom / eV/Angstrom, and extxyz -> HDF5 -> extxyz reproduces the file byte for byte. ASE db and
npz keep every bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ase.db
import ase.io
import numpy as np

from aiida_mlpes.core.dataset import DatasetError, validate
from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.core.units import (
    PUBLIC_UNITS,
    charge_factor,
    dipole_factor,
    energy_factor,
    force_factor,
    length_factor,
)

FORMATS = ("extxyz", "db", "npz", "md17")
#: Keys of Asparagus-style npz files (padded arrays) and the field each one holds.
ASPARAGUS_KEYS = {
    "R": "positions",
    "Z": "atomic_numbers",
    "E": "energy",
    "F": "forces",
    "N": "n_atoms",
    "D": "dipole",
    "Q": "charge",
}


def guess_format(path: str | Path) -> str:
    """File format from the extension: .xyz/.extxyz -> extxyz, .db -> db, .npz -> npz."""
    suffix = Path(path).suffix.lower()
    table = {".xyz": "extxyz", ".extxyz": "extxyz", ".db": "db", ".npz": "npz"}
    if suffix not in table:
        raise DatasetError(
            f"{path}: cannot tell the format from the extension {suffix!r}; use one of {FORMATS}"
        )
    return table[suffix]


def _convert(
    arrays: RaggedArrays, energy_unit: str, length_unit: str, dipole_unit: str, charge_unit: str
) -> RaggedArrays:
    e, length = energy_factor(energy_unit), length_factor(length_unit)
    if length != 1.0:
        arrays.positions = arrays.positions * length
    if arrays.energy is not None and e != 1.0:
        arrays.energy = arrays.energy * e
    if arrays.forces is not None and e / length != 1.0:
        arrays.forces = arrays.forces * force_factor(energy_unit, length_unit)
    if arrays.dipole is not None and dipole_factor(dipole_unit) != 1.0:
        arrays.dipole = arrays.dipole * dipole_factor(dipole_unit)
    q = charge_factor(charge_unit)
    for name in ("charge", "atomic_charges"):
        if getattr(arrays, name) is not None and q != 1.0:
            setattr(arrays, name, getattr(arrays, name) * q)
    return arrays


def import_file(
    path: str | Path,
    fmt: str | None = None,
    energy_unit: str = "eV",
    length_unit: str = "Angstrom",
    dipole_unit: str = "eAngstrom",
    charge_unit: str = "e",
    keys: dict[str, str] | None = None,
) -> RaggedArrays:
    """Read a file into RaggedArrays in public units (eV, Angstrom, e*Angstrom, e).

    Args:
        path: extxyz/xyz, ASE database (.db) or npz file.
        fmt: "extxyz", "db" or "npz"; guessed from the extension when omitted.
        energy_unit, length_unit, dipole_unit, charge_unit: the units used in the file (forces are taken to
            be in energy_unit/length_unit).
        keys: for npz, a map from field name (``positions``, ``energy`` ...) to the key in the file, when it
            differs from both our names and Asparagus's (R, Z, E, F, N, D, Q).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    fmt = fmt or guess_format(path)
    try:
        if fmt == "extxyz":
            arrays = RaggedArrays.from_atoms(ase.io.read(path, index=":", format="extxyz"))
        elif fmt == "db":
            arrays = _read_db(path)
        elif fmt == "npz":
            arrays = _read_npz(path, keys or {})
        elif fmt == "md17":
            arrays = _read_md17(path)
        else:
            raise DatasetError(f"{path}: unknown format {fmt!r}; use one of {FORMATS}")
    except DatasetError:
        raise
    except Exception as exc:  # parsing errors of ASE/numpy: name the file
        raise DatasetError(f"{path}: cannot read as {fmt}: {type(exc).__name__}: {exc}") from exc
    if len(arrays) == 0:
        raise DatasetError(f"{path}: contains no conformations")
    arrays.source = np.array([f"import:{path.name}"] * len(arrays), dtype=object)
    arrays.hash = None  # recomputed by the writer after unit conversion
    arrays.__post_init__()
    arrays = _convert(arrays, energy_unit, length_unit, dipole_unit, charge_unit)
    validate(arrays, str(path))
    return arrays


def _read_md17(path: Path) -> RaggedArrays:
    """MD17-style xyz: the comment line is the energy, atom lines are ``symbol x y z fx fy fz``.

    Written by hand because ASE's xyz readers drop the force columns and the bare energy of this format.
    """
    from ase.data import atomic_numbers

    lines = path.read_text().splitlines()
    n_atoms, numbers, positions, forces, energy = [], [], [], [], []
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        n = int(lines[i])
        energy.append(float(lines[i + 1].split()[0]))
        for line in lines[i + 2 : i + 2 + n]:
            symbol, *values = line.split()
            if len(values) != 6:
                raise DatasetError(f"{path}: line {line!r} needs 'symbol x y z fx fy fz'")
            if symbol not in atomic_numbers:
                raise DatasetError(f"{path}: unknown element {symbol!r} in conformation {len(energy) - 1}")
            numbers.append(atomic_numbers[symbol])
            positions.append(values[:3])
            forces.append(values[3:])
        n_atoms.append(n)
        i += 2 + n
    return RaggedArrays(
        n_atoms=np.array(n_atoms),
        atomic_numbers=np.array(numbers),
        positions=np.array(positions, float),
        energy=np.array(energy),
        forces=np.array(forces, float),
    )


def _read_db(path: Path) -> RaggedArrays:
    with ase.db.connect(path) as db:
        images = []
        for row in db.select():
            atoms = row.toatoms()
            data = row.data or {}
            if "charge" in data:
                atoms.info["charge"] = float(data["charge"])
            images.append(atoms)
    return RaggedArrays.from_atoms(images)


def _read_npz(path: Path, keys: dict[str, str]) -> RaggedArrays:
    with np.load(path, allow_pickle=False) as npz:
        files = set(npz.files)
        if {"R", "Z"} <= files and "positions" not in files:
            return _read_padded(path, {k: npz[k] for k in files if k in ASPARAGUS_KEYS})
        names = (
            "n_atoms",
            "atomic_numbers",
            "positions",
            "energy",
            "forces",
            "dipole",
            "charge",
            "atomic_charges",
        )
        found = {name: npz[keys.get(name, name)] for name in names if keys.get(name, name) in files}
    missing = [n for n in ("atomic_numbers", "positions") if n not in found]
    if missing:
        raise DatasetError(f"{path}: npz lacks the keys {missing} (present: {sorted(files)})")
    positions = found["positions"]
    if positions.ndim == 3:  # padded (M, Nmax, 3) with our names
        return _read_padded(path, {{v: k for k, v in ASPARAGUS_KEYS.items()}[k]: v for k, v in found.items()})
    if "n_atoms" not in found:
        raise DatasetError(f"{path}: flat npz needs 'n_atoms' to know where conformations start")
    return RaggedArrays(**found)


def _read_padded(path: Path, data: dict[str, np.ndarray]) -> RaggedArrays:
    """Asparagus-style padded arrays: R (M, Nmax, 3), Z (M, Nmax) with 0 padding, N (M,)."""
    positions, numbers = np.asarray(data["R"], float), np.asarray(data["Z"])
    if positions.ndim != 3 or positions.shape[-1] != 3 or numbers.shape != positions.shape[:2]:
        raise DatasetError(
            f"{path}: field 'R' has shape {positions.shape} and 'Z' {numbers.shape}; expected "
            "(M, Nmax, 3) and (M, Nmax)"
        )
    n_atoms = np.asarray(data["N"], int) if "N" in data else (numbers > 0).sum(axis=1)
    if n_atoms.shape != (len(positions),):
        raise DatasetError(f"{path}: field 'N' has shape {n_atoms.shape}, expected ({len(positions)},)")
    mask = np.arange(numbers.shape[1])[None, :] < n_atoms[:, None]
    if np.any(numbers[mask] <= 0):
        conf = int(np.flatnonzero((numbers <= 0) & mask)[0] // numbers.shape[1])
        raise DatasetError(
            f"{path}: conformation {conf} has atomic number 0 inside its first N atoms (field 'Z')"
        )
    kwargs: dict[str, Any] = {
        "n_atoms": n_atoms,
        "atomic_numbers": numbers[mask],
        "positions": positions[mask],
    }
    if "E" in data:
        kwargs["energy"] = np.asarray(data["E"], float).reshape(-1)
    if "F" in data:
        forces = np.asarray(data["F"], float)
        if forces.shape != positions.shape:
            raise DatasetError(f"{path}: field 'F' has shape {forces.shape}, expected {positions.shape}")
        kwargs["forces"] = forces[mask]
    if "D" in data:
        kwargs["dipole"] = np.asarray(data["D"], float).reshape(-1, 3)
    if "Q" in data:
        kwargs["charge"] = np.asarray(data["Q"], float).reshape(-1)
    return RaggedArrays(**kwargs)


def export_file(
    arrays: RaggedArrays, path: str | Path, fmt: str | None = None, level_of_theory: str = ""
) -> Path:
    """Write RaggedArrays (public units) to extxyz, an ASE database or npz (flat, our field names)."""
    path = Path(path)
    fmt = fmt or guess_format(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; remove it first")
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        if fmt == "extxyz":
            images = [arrays.to_atoms(i) for i in range(len(arrays))]
            for atoms, source in zip(images, arrays.source, strict=True):
                if source:  # an empty value would swallow the next key of the comment line
                    atoms.info["source"] = str(source)
            ase.io.write(tmp, images, format="extxyz")
        elif fmt == "db":
            with ase.db.connect(tmp, type="db", append=False) as db:
                db.metadata = {"units": PUBLIC_UNITS, "level_of_theory": level_of_theory}
                for i in range(len(arrays)):
                    data = {} if arrays.charge is None else {"charge": float(arrays.charge[i])}
                    db.write(arrays.to_atoms(i), source=str(arrays.source[i]), data=data)
        elif fmt == "npz":
            out: dict[str, Any] = {
                "n_atoms": arrays.n_atoms,
                "atomic_numbers": arrays.atomic_numbers,
                "positions": arrays.positions,
                "source": arrays.source.astype(str),
                "units": np.array(json.dumps(PUBLIC_UNITS)),
                "level_of_theory": np.array(level_of_theory),
            }
            for name, value in arrays.has.items():
                if value:
                    out[name] = getattr(arrays, name)
            with open(tmp, "wb") as handle:
                np.savez(handle, **out)
        else:
            raise DatasetError(f"{path}: unknown format {fmt!r}; use one of {FORMATS}")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
