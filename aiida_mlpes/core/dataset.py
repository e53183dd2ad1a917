"""The HDF5 dataset of labelled (or unlabelled) molecular conformations.

One file holds M conformations in ragged layout (DESIGN.md):

==================  ===========  =====================================================
``n_atoms``         (M,)         atoms per conformation
``atomic_numbers``  (sum n,)     Z of every atom
``positions``       (sum n, 3)   Angstrom
``energy``          (M,)         eV (optional: sampled structures are unlabelled)
``forces``          (sum n, 3)   eV/Angstrom (optional)
``dipole``          (M, 3)       e*Angstrom (optional)
``charge``          (M,)         total charge, e (optional)
``atomic_charges``  (sum n,)     e (optional)
``source``          (M,)         uuid of the calculation node, or "import:<name>"
``hash``            (M,)         hash of Z and rounded positions, for deduplication
==================  ===========  =====================================================

File attributes: ``schema_version``, ``units`` (JSON), ``level_of_theory``. Floats are float64 on disk.
Every write goes to a temporary file in the same folder that replaces the target only when complete, so
an error never leaves a half-written dataset behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from ase import Atoms

from aiida_mlpes.core.ragged import PER_ATOM, PER_CONFORMATION, RaggedArrays
from aiida_mlpes.core.units import PUBLIC_UNITS

SCHEMA_VERSION = 1
#: Decimals (Angstrom) to which positions are rounded before hashing: 1e-6 Angstrom.
HASH_DECIMALS = 6
OPTIONAL_FIELDS = (*PER_CONFORMATION, *PER_ATOM)
_STR = h5py.string_dtype("utf-8")
_HASH = np.dtype("S32")
_CHUNK_ROWS = 4096


class DatasetError(ValueError):
    """Bad dataset content or an incompatible operation; the message names file, field and conformation."""


def conformation_hashes(arrays: RaggedArrays, decimals: int = HASH_DECIMALS) -> np.ndarray:
    """Hash of atomic numbers and positions rounded to ``decimals`` Angstrom, one hex string per conformation.

    Conformations of equal size are hashed from one contiguous byte matrix, which keeps the per-conformation
    Python work to a single digest call.
    """
    rounded = np.round(arrays.positions, decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    numbers = arrays.atomic_numbers.astype(np.int16)
    out = np.empty(len(arrays), dtype=object)
    for size in np.unique(arrays.n_atoms):
        members = np.flatnonzero(arrays.n_atoms == size)
        atoms = arrays.atom_indices(members)
        block = np.concatenate(
            [
                numbers[atoms].reshape(len(members), -1).view(np.uint8),
                rounded[atoms].reshape(len(members), -1).view(np.uint8),
            ],
            axis=1,
        )
        for i, row in zip(members, block, strict=True):
            out[i] = hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest()
    return out


def validate(arrays: RaggedArrays, name: str = "<memory>") -> None:
    """Raise DatasetError naming the file, field and conformation of the first problem found."""
    m, total = len(arrays), int(arrays.n_atoms.sum())
    if np.any(arrays.n_atoms < 1):
        bad = int(np.flatnonzero(arrays.n_atoms < 1)[0])
        raise DatasetError(f"{name}: conformation {bad} has no atoms (field 'n_atoms')")
    expected = {"atomic_numbers": (total,), "positions": (total, 3)}
    for field, trailing in PER_CONFORMATION.items():
        expected[field] = (m, *trailing)
    for field, trailing in PER_ATOM.items():
        expected[field] = (total, *trailing)
    for field, shape in expected.items():
        value = getattr(arrays, field)
        if value is None:
            continue
        if value.shape != shape:
            raise DatasetError(f"{name}: field {field!r} has shape {value.shape}, expected {shape}")
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            flat = ~np.isfinite(value.reshape(len(value), -1)).all(axis=1)
            row = int(np.flatnonzero(flat)[0])
            conf = (
                row if field in PER_CONFORMATION else int(np.searchsorted(arrays.offsets, row, "right") - 1)
            )
            raise DatasetError(f"{name}: field {field!r} of conformation {conf} is NaN or infinite")
    bad_z = (arrays.atomic_numbers < 1) | (arrays.atomic_numbers > 118)
    if np.any(bad_z):
        row = int(np.flatnonzero(bad_z)[0])
        conf = int(np.searchsorted(arrays.offsets, row, "right") - 1)
        raise DatasetError(
            f"{name}: unknown element with atomic number {int(arrays.atomic_numbers[row])} "
            f"in conformation {conf} (field 'atomic_numbers')"
        )


class DatasetWriter:
    """Create or extend a dataset file transactionally.

    Use as a context manager: all appends go to a temporary file that replaces ``path`` on a clean exit and
    is deleted on an exception, so the target is never partially written.

    Args:
        path: the dataset file (.h5).
        level_of_theory: e.g. "GFN2-xTB" or "PBE-D3BJ/def2-SVP"; must match when appending to a file.
        mode: "w" to create (fails if the file exists unless ``overwrite``), "a" to append to an existing file.
        overwrite: allow replacing an existing file in mode "w".
    """

    def __init__(
        self, path: str | Path, level_of_theory: str = "", mode: str = "w", overwrite: bool = False
    ) -> None:
        self.path = Path(path)
        self.level_of_theory = level_of_theory
        if mode not in ("w", "a"):
            raise ValueError(f"mode must be 'w' or 'a', not {mode!r}")
        if mode == "w" and self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it")
        if mode == "a" and not self.path.exists():
            raise FileNotFoundError(f"cannot append: {self.path} does not exist")
        self.mode = mode
        self._file: h5py.File | None = None
        self._tmp: Path | None = None
        self._fields: set[str] | None = None

    def __enter__(self) -> DatasetWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        if self.mode == "a":
            with open(self.path, "rb") as src, open(self._tmp, "wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
            self._file = h5py.File(self._tmp, "a")
            existing = self._file.attrs.get("level_of_theory", "")
            if self.level_of_theory and existing and self.level_of_theory != existing:
                raise DatasetError(
                    f"{self.path}: level of theory {existing!r} differs from {self.level_of_theory!r}"
                )
            self.level_of_theory = existing or self.level_of_theory
            self._fields = {f for f in OPTIONAL_FIELDS if f in self._file}
        else:
            self._file = h5py.File(self._tmp, "w")
            self._file.attrs["schema_version"] = SCHEMA_VERSION
            self._file.attrs["units"] = json.dumps(PUBLIC_UNITS)
            self._file.attrs["level_of_theory"] = self.level_of_theory
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._file is not None and self._tmp is not None
        self._file.attrs["level_of_theory"] = self.level_of_theory
        self._file.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)

    def _create(self, name: str, trailing: tuple[int, ...], dtype: Any) -> None:
        assert self._file is not None
        self._file.create_dataset(
            name,
            shape=(0, *trailing),
            maxshape=(None, *trailing),
            dtype=dtype,
            chunks=(_CHUNK_ROWS, *trailing),
        )

    def append(self, arrays: RaggedArrays, name: str = "<memory>") -> int:
        """Validate and append conformations; missing hashes are computed. Returns the new count."""
        if self._file is None:
            raise RuntimeError("DatasetWriter must be used as a context manager")
        if len(arrays) == 0:
            return int(self._file["n_atoms"].shape[0]) if "n_atoms" in self._file else 0
        validate(arrays, name)
        present = {f for f in OPTIONAL_FIELDS if getattr(arrays, f) is not None}
        if self._fields is None:
            self._fields = present
            self._create("n_atoms", (), np.int32)
            self._create("atomic_numbers", (), np.int16)
            self._create("positions", (3,), np.float64)
            for f in present:
                trailing = PER_CONFORMATION[f] if f in PER_CONFORMATION else PER_ATOM[f]
                self._create(f, trailing, np.float64)
            self._create("source", (), _STR)
            self._create("hash", (), _HASH)
        elif present != self._fields and len(arrays):
            missing, extra = sorted(self._fields - present), sorted(present - self._fields)
            raise DatasetError(
                f"{name}: fields do not match {self.path.name}: missing {missing}, not in the file {extra}"
            )
        hashes = arrays.hash
        if hashes is None or any(h == "" for h in hashes):
            hashes = conformation_hashes(arrays)
        per_atom: dict[str, Any] = {"atomic_numbers": arrays.atomic_numbers, "positions": arrays.positions}
        per_conf: dict[str, Any] = {"n_atoms": arrays.n_atoms, "source": arrays.source, "hash": hashes}
        for f in self._fields:
            (per_atom if f in PER_ATOM else per_conf)[f] = getattr(arrays, f)
        for key, value in {**per_atom, **per_conf}.items():
            ds = self._file[key]
            start = ds.shape[0]
            ds.resize(start + len(value), axis=0)
            if key == "hash":
                value = np.asarray(value, dtype=_HASH)
            elif key == "source":
                value = np.asarray(value, dtype=object)
            ds[start:] = value
        return int(self._file["n_atoms"].shape[0])


class Dataset:
    """Read access to a dataset file: length, random access, iteration, whole-file reads and splits.

    The HDF5 handle is opened lazily and dropped when pickled, so a Dataset can be sent to worker processes.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"dataset file {self.path} does not exist")
        self._file: h5py.File | None = None
        self._offsets: np.ndarray | None = None
        try:
            file = self._h5
        except OSError as exc:
            raise DatasetError(f"{self.path}: not a readable HDF5 file ({exc})") from None
        if "schema_version" not in file.attrs:
            raise DatasetError(f"{self.path}: not an aiida-mlpes dataset (no 'schema_version' attribute)")
        if int(file.attrs["schema_version"]) > SCHEMA_VERSION:
            raise DatasetError(
                f"{self.path}: schema version {file.attrs['schema_version']} is newer than this code"
            )

    @property
    def _h5(self) -> h5py.File:
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return self._file

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_file": None, "_offsets": None}

    def close(self) -> None:
        """Close the HDF5 handle (reopened on the next access)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def level_of_theory(self) -> str:
        return str(self._h5.attrs.get("level_of_theory", ""))

    @property
    def units(self) -> dict[str, str]:
        return json.loads(self._h5.attrs["units"])

    @property
    def fields(self) -> list[str]:
        """Optional fields present in this file (energy, forces, dipole, charge, atomic_charges)."""
        return [f for f in OPTIONAL_FIELDS if f in self._h5]

    @property
    def offsets(self) -> np.ndarray:
        if self._offsets is None:
            n_atoms = self._h5["n_atoms"][:] if "n_atoms" in self._h5 else np.zeros(0, int)
            self._offsets = np.concatenate([[0], np.cumsum(n_atoms, dtype=np.int64)])
        return self._offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def elements(self) -> list[int]:
        """Sorted unique atomic numbers."""
        if "atomic_numbers" not in self._h5:
            return []
        return sorted(int(z) for z in np.unique(self._h5["atomic_numbers"][:]))

    def read(self, indices: Sequence[int] | np.ndarray | None = None) -> RaggedArrays:
        """All conformations (or ``indices``) as RaggedArrays in memory."""
        m = len(self)
        if m == 0:
            return RaggedArrays(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3)))
        h5 = self._h5
        kwargs: dict[str, Any] = {
            "n_atoms": h5["n_atoms"][:],
            "atomic_numbers": h5["atomic_numbers"][:],
            "positions": h5["positions"][:],
            "source": h5["source"].asstr()[:].astype(object),
            "hash": h5["hash"][:].astype(str).astype(object),
        }
        for f in self.fields:
            kwargs[f] = h5[f][:]
        arrays = RaggedArrays(**kwargs)
        if indices is not None:
            indices = np.asarray(indices, dtype=np.int64)
            if indices.size and (indices.min() < -m or indices.max() >= m):
                raise IndexError(f"{self.path}: index out of range for {m} conformations")
            arrays = arrays.select(indices % m)
        return arrays

    def __getitem__(self, index: int) -> Atoms:
        """Conformation ``index`` as ASE Atoms with its labels in a SinglePointCalculator."""
        m = len(self)
        if not -m <= index < m:
            raise IndexError(f"{self.path}: conformation {index} out of range (M = {m})")
        index %= m
        sl = slice(int(self.offsets[index]), int(self.offsets[index + 1]))
        h5 = self._h5
        kwargs: dict[str, Any] = {
            "n_atoms": h5["n_atoms"][index : index + 1],
            "atomic_numbers": h5["atomic_numbers"][sl],
            "positions": h5["positions"][sl],
        }
        for f in self.fields:
            kwargs[f] = h5[f][sl] if f in PER_ATOM else h5[f][index : index + 1]
        atoms = RaggedArrays(**kwargs).to_atoms(0)
        atoms.info["source"] = h5["source"].asstr()[index]
        return atoms

    def __iter__(self) -> Iterator[Atoms]:
        arrays = self.read()
        for i in range(len(arrays)):
            yield arrays.to_atoms(i)

    def split(self, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> dict[str, np.ndarray]:
        """Reproducible train/valid/test indices; see :func:`split_indices`."""
        return split_indices(self._h5["hash"][:] if len(self) else np.zeros(0, object), fractions, seed)


def split_indices(
    hashes: Sequence[str] | np.ndarray, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, np.ndarray]:
    """Split conformations into train/valid/test, each conformation for good, from its own hash.

    Every distinct hash gets a number u in [0, 1) from a BLAKE2b hash of the hash keyed with ``seed``; u below
    ``fractions[0]`` is train, below ``fractions[0] + fractions[1]`` valid, else test. A conformation's split
    therefore depends only on its hash and the seed: it never changes when the dataset grows, and equal hashes
    (duplicates) share one split. The fractions are met statistically (binomially; within a few percent for
    thousands of distinct hashes).

    Tiny sets: when this rule leaves train empty (>= 1 distinct hash) or valid empty (>= 2 distinct hashes,
    valid fraction > 0), the distinct hash whose u lies nearest to that split's interval is moved into it,
    taken from the split with the most distinct hashes (never emptying train). Such a move is the only way an
    assignment can change as the dataset grows, and it happens only while a split would otherwise be empty.

    Returns sorted index arrays under "train", "valid", "test".
    """
    parts = np.asarray(fractions, dtype=float)
    if parts.shape != (3,) or np.any(parts < 0) or not np.isclose(parts.sum(), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    hashes = np.asarray(hashes)
    if len(hashes) == 0:
        raise DatasetError("cannot split an empty dataset")
    text = np.array([h.decode() if isinstance(h, bytes) else str(h) for h in hashes.reshape(-1)], dtype=str)
    unique, inverse = np.unique(text, return_inverse=True)
    u = np.array([_keyed_uniform(h, seed) for h in unique])
    edges = np.array([0.0, parts[0], parts[0] + parts[1], 1.0])
    group_split = np.searchsorted(edges[1:3], u, side="right")
    group_split[u >= edges[2]] = 2  # guard against round-off when the last fraction is 0
    needs = [(0, 1, parts[0] > 0), (1, 2, parts[1] > 0)]
    for target, minimum, wanted in needs:
        if not wanted or len(unique) < minimum or np.any(group_split == target):
            continue
        counts = np.bincount(group_split, minlength=3)
        donors = [k for k in (0, 1, 2) if k != target and counts[k] > (1 if k == 0 else 0)]
        if not donors:
            continue
        donor = max(donors, key=lambda k: (counts[k], -k))
        members = np.flatnonzero(group_split == donor)
        distance = np.maximum(edges[target] - u[members], u[members] - edges[target + 1])
        group_split[members[np.argmin(distance)]] = target
    names = ("train", "valid", "test")
    conf_split = group_split[inverse.reshape(-1)]
    return {name: np.flatnonzero(conf_split == k) for k, name in enumerate(names)}


def _keyed_uniform(text: str, seed: int) -> float:
    """A number in [0, 1) from BLAKE2b of ``text`` keyed with ``seed`` (uniform over hashes, fixed forever)."""
    key = int(seed).to_bytes(16, "little", signed=True)
    digest = hashlib.blake2b(str(text).encode(), key=key, digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def write_dataset(
    path: str | Path, arrays: RaggedArrays, level_of_theory: str = "", overwrite: bool = False
) -> Path:
    """Write ``arrays`` to a new dataset file atomically; returns the path. Refuses empty data."""
    if len(arrays) == 0:
        raise DatasetError(f"{path}: refusing to write an empty dataset (no conformations)")
    with DatasetWriter(path, level_of_theory=level_of_theory, overwrite=overwrite) as writer:
        writer.append(arrays, name=str(path))
    return Path(path)


def read_arrays(path: str | Path) -> RaggedArrays:
    """All conformations of a dataset file as RaggedArrays."""
    with Dataset(path) as dataset:
        return dataset.read()


def merge_files(
    paths: Sequence[str | Path],
    output: str | Path,
    deduplicate: bool = True,
    allow_mixed_levels: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Merge dataset files into ``output``, dropping duplicates (by hash) when ``deduplicate``.

    Refuses (DatasetError) to merge files of different levels of theory or units unless
    ``allow_mixed_levels``; then the output's level of theory lists all of them joined by " + ".
    Only optional fields present in every input are kept; dropping a field requires ``allow_mixed_levels``
    too, since it changes what the data can train. Memory holds one input at a time.
    Returns statistics: counts read, written and dropped as duplicates.
    """
    if not paths:
        raise DatasetError("nothing to merge: no input datasets given")
    infos = []
    for p in paths:
        with Dataset(p) as ds:
            infos.append((str(p), ds.level_of_theory, ds.units, set(ds.fields), len(ds)))
    levels = sorted({info[1] for info in infos})
    units = {json.dumps(info[2], sort_keys=True) for info in infos}
    fields = (
        set.intersection(*(info[3] for info in infos if info[4] > 0)) if any(i[4] for i in infos) else set()
    )
    if not allow_mixed_levels:
        if len(levels) > 1:
            listing = "; ".join(f"{p}: {lvl!r}" for p, lvl, *_ in infos)
            raise DatasetError(
                f"refusing to merge different levels of theory ({listing}); pass allow_mixed_levels=True"
            )
        if len(units) > 1:
            raise DatasetError("refusing to merge datasets stored in different units")
        for p, _, _, f, n in infos:
            if n and f != fields:
                raise DatasetError(
                    f"{p}: fields {sorted(f)} differ from the common fields {sorted(fields)}; merging would drop "
                    "some; pass allow_mixed_levels=True to accept that"
                )
    seen = np.zeros(0, dtype=_HASH)
    stats = {"read": 0, "written": 0, "duplicates": 0}
    with DatasetWriter(
        output, level_of_theory=" + ".join(lvl for lvl in levels if lvl), overwrite=overwrite
    ) as w:
        for p in paths:
            arrays = read_arrays(p)
            stats["read"] += len(arrays)
            keep = np.ones(len(arrays), dtype=bool)
            if deduplicate:
                hashes = np.asarray(arrays.hash, dtype=_HASH)
                first = np.zeros(len(arrays), dtype=bool)
                first[np.unique(hashes, return_index=True)[1]] = True  # first copy within this file
                keep = first & ~np.isin(hashes, seen)
                seen = np.union1d(seen, hashes)
            for dropped in set(OPTIONAL_FIELDS) - fields:
                setattr(arrays, dropped, None)
            if keep.any():
                w.append(arrays.select(np.flatnonzero(keep)), name=str(p))
            stats["written"] += int(keep.sum())
            stats["duplicates"] += int((~keep).sum())
    return stats


def run_merge_task(settings: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Runner task ``merge``: settings ``inputs`` (file names), ``output``, ``deduplicate``, ``allow_mixed_levels``."""
    stats = merge_files(
        [workdir / name for name in settings["inputs"]],
        workdir / settings.get("output", "dataset.h5"),
        deduplicate=settings.get("deduplicate", True),
        allow_mixed_levels=settings.get("allow_mixed_levels", False),
    )
    return {"statistics": stats}
