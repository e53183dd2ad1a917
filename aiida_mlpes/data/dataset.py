"""``PESDataset`` (entry point ``mlpes.dataset``): a dataset HDF5 file stored in the AiiDA repository.

The file follows :mod:`aiida_mlpes.core.dataset`; counts, elements, fields and level of theory are copied to
attributes so that datasets can be found with the QueryBuilder without opening files, e.g.::

    QueryBuilder().append(PESDataset, filters={"attributes.level_of_theory": "GFN2-xTB",
                                               "attributes.n_conformations": {">": 100}})
"""

from __future__ import annotations

import contextlib
import pathlib
import tempfile
from collections.abc import Iterator

import numpy as np
from aiida.orm import SinglefileData
from ase.data import chemical_symbols

from aiida_mlpes.core.dataset import Dataset, DatasetError, read_arrays, write_dataset
from aiida_mlpes.core.ragged import RaggedArrays

FILENAME = "dataset.h5"


class PESDataset(SinglefileData):
    """Conformations with energies, forces, dipoles and charges (eV, Angstrom, e) in one HDF5 file."""

    def __init__(self, file: str | pathlib.Path, filename: str = FILENAME, **kwargs) -> None:
        """Store the dataset file ``file``; it is validated and summarised into attributes."""
        path = pathlib.Path(file)
        with Dataset(path) as dataset:
            summary = _summarise(dataset)
        super().__init__(file=path, filename=filename, **kwargs)
        for key, value in summary.items():
            self.base.attributes.set(key, value)

    @classmethod
    def from_arrays(cls, arrays: RaggedArrays, level_of_theory: str = "", **kwargs) -> PESDataset:
        """Build an (unstored) node from RaggedArrays; hashes are computed if missing."""
        with tempfile.TemporaryDirectory() as tmp:
            path = write_dataset(pathlib.Path(tmp) / FILENAME, arrays, level_of_theory=level_of_theory)
            return cls(file=path, **kwargs)

    @contextlib.contextmanager
    def open_dataset(self) -> Iterator[Dataset]:
        """Context manager yielding a read-only :class:`~aiida_mlpes.core.dataset.Dataset`."""
        with self.as_path() as path, Dataset(path) as dataset:
            yield dataset

    def get_arrays(self) -> RaggedArrays:
        """All conformations in memory."""
        with self.as_path() as path:
            return read_arrays(path)

    @property
    def n_conformations(self) -> int:
        return int(self.base.attributes.get("n_conformations"))

    @property
    def level_of_theory(self) -> str:
        return str(self.base.attributes.get("level_of_theory"))

    @property
    def elements(self) -> list[str]:
        return list(self.base.attributes.get("elements"))

    @property
    def field_names(self) -> list[str]:
        """Optional fields present: energy, forces, dipole, charge, atomic_charges."""
        return list(self.base.attributes.get("fields"))

    def __str__(self) -> str:
        return (
            f"{super().__str__()} [{self.n_conformations} conformations of "
            f"{','.join(self.elements)}; {self.level_of_theory or 'no level of theory'}]"
        )


def _summarise(dataset: Dataset) -> dict:
    if len(dataset) == 0:
        raise DatasetError(f"{dataset.path}: a PESDataset needs at least one conformation")
    n_atoms = dataset._h5["n_atoms"][:]
    energy = dataset._h5["energy"][:] if "energy" in dataset.fields else None
    summary = {
        "n_conformations": len(dataset),
        "n_atoms_total": int(n_atoms.sum()),
        "n_atoms_min": int(n_atoms.min()),
        "n_atoms_max": int(n_atoms.max()),
        "elements": [chemical_symbols[z] for z in dataset.elements],
        "fields": dataset.fields,
        "labelled": energy is not None,
        "level_of_theory": dataset.level_of_theory,
        "units": dataset.units,
        "schema_version": int(dataset._h5.attrs["schema_version"]),
    }
    if energy is not None:
        summary["energy_min"] = float(np.min(energy))
        summary["energy_max"] = float(np.max(energy))
    return summary
