"""Training targets: per-element reference energies, energy scale, input checks and batched target tensors.

Reference energies are fitted by least squares in float64, so that the float32 network only learns the
small remainder ``E - sum_i e_ref(Z_i)``; the model adds the references back in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ase.data import chemical_symbols

from aiida_mlpes.core.models import collate
from aiida_mlpes.core.ragged import RaggedArrays


def composition_matrix(arrays: RaggedArrays, elements: Sequence[int]) -> np.ndarray:
    """Counts of each element (columns ordered like ``elements``) per conformation, shape (M, len(elements)).

    Raises ValueError naming the first conformation that holds an element outside ``elements``.
    """
    element_array = np.asarray(list(elements), dtype=np.int64)
    check_elements(arrays, element_array.tolist())
    lookup = np.full(max(int(element_array.max()), int(arrays.atomic_numbers.max(initial=0))) + 1, -1)
    lookup[element_array] = np.arange(len(element_array))
    column = lookup[arrays.atomic_numbers]
    conformation = np.repeat(np.arange(len(arrays)), arrays.n_atoms)
    counts = np.zeros((len(arrays), len(element_array)), dtype=np.float64)
    np.add.at(counts, (conformation, column), 1.0)
    return counts


def check_elements(
    arrays: RaggedArrays,
    elements: Sequence[int],
    what: str = "the model",
    numbering: np.ndarray | None = None,
) -> None:
    """Raise ValueError if the data hold an element that ``elements`` lacks (names element and conformation;
    ``numbering`` maps positions in ``arrays`` to the conformation numbers reported)."""
    known = np.isin(arrays.atomic_numbers, np.asarray(list(elements), dtype=np.int64))
    if known.all():
        return
    atom = int(np.flatnonzero(~known)[0])
    z = int(arrays.atomic_numbers[atom])
    conformation = int(np.searchsorted(arrays.offsets, atom, side="right") - 1)
    conformation = int(numbering[conformation]) if numbering is not None else conformation
    missing = sorted({int(v) for v in arrays.atomic_numbers[~known]})
    names = ", ".join(f"{chemical_symbols[v]} (Z={v})" for v in missing)
    raise ValueError(
        f"the data contain elements {names} that {what} does not know (its elements: "
        f"{[int(e) for e in elements]}); first in conformation {conformation} (Z={z})"
    )


def fit_element_references(arrays: RaggedArrays, elements: Sequence[int]) -> np.ndarray:
    """Per-element reference energies (eV, float64, ordered like ``elements``) from a least-squares fit
    ``E_m ~ sum_Z count_mZ e_Z`` over the conformations of ``arrays``.

    When the compositions do not determine every reference (e.g. a single molecule), the minimum-norm
    solution is returned; it still reproduces the mean energy of each composition.
    """
    if arrays.energy is None:
        raise ValueError("cannot fit reference energies: the data have no 'energy'")
    counts = composition_matrix(arrays, elements)
    solution, *_ = np.linalg.lstsq(counts, np.asarray(arrays.energy, dtype=np.float64), rcond=None)
    return solution


def energy_scale(arrays: RaggedArrays, elements: Sequence[int], references: np.ndarray) -> float:
    """Scale of the network's atomic energies (eV): the RMS force component when forces are present,
    otherwise the standard deviation of the per-atom residual energy; 1 if either is zero."""
    if arrays.forces is not None and arrays.forces.size:
        scale = float(np.sqrt(np.mean(np.square(arrays.forces))))
    else:
        residual = arrays.energy - composition_matrix(arrays, elements) @ references
        scale = float(np.std(residual / arrays.n_atoms)) if len(arrays) > 1 else 0.0
    return scale if np.isfinite(scale) and scale > 0 else 1.0


def check_finite(arrays: RaggedArrays, names: Sequence[str], numbering: np.ndarray | None = None) -> None:
    """Raise ValueError naming the field and conformation of the first NaN/inf among ``names``."""
    for name in names:
        value = getattr(arrays, name)
        if value is None:
            continue
        bad = ~np.isfinite(value.reshape(len(value), -1)).all(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            if name in ("positions", "forces", "atomic_charges"):  # per-atom rows
                row = int(np.searchsorted(arrays.offsets, row, side="right") - 1)
            conformation = int(numbering[row]) if numbering is not None else row
            raise ValueError(f"field '{name}' is not finite in conformation {conformation}")


#: collate keys with one row per atom; the others (except "batch") have one row per conformation.
PER_ATOM_KEYS = ("atomic_numbers", "positions", "forces", "atomic_charges")


class DeviceBatches:
    """A whole set of conformations collated once onto ``device``; batches are cut from it by indexing.

    Each batch is a :func:`collate` dict (inputs and targets: ``energy`` float64, ``forces``, ``dipole``,
    ``charge``, ``atomic_charges``), so per step only the index arrays travel to the device.
    """

    def __init__(self, arrays: RaggedArrays, device: torch.device, dtype: torch.dtype) -> None:
        self.full = collate(arrays, None, device=device, dtype=dtype)
        self.n_atoms = arrays.n_atoms
        self.offsets = arrays.offsets
        self.device = device
        self.per_atom = [k for k in PER_ATOM_KEYS if k in self.full]
        self.per_conf = [k for k in self.full if k not in PER_ATOM_KEYS and k != "batch"]

    def __len__(self) -> int:
        return len(self.n_atoms)

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """The collate dict of conformations ``indices`` (in that order)."""
        counts = self.n_atoms[indices]
        before = np.cumsum(counts) - counts
        atoms = np.repeat(self.offsets[indices] - before, counts) + np.arange(int(counts.sum()))
        owner = np.repeat(np.arange(len(indices)), counts)
        index = torch.from_numpy(np.concatenate([atoms, owner, indices])).to(self.device, non_blocking=True)
        n = len(atoms)
        atom_index, conf_index = index[:n], index[2 * n :]
        out = {k: self.full[k].index_select(0, atom_index) for k in self.per_atom}
        out.update({k: self.full[k].index_select(0, conf_index) for k in self.per_conf})
        out["batch"] = index[n : 2 * n]
        return out

    def batches(self, order: np.ndarray, size: int) -> list[dict[str, torch.Tensor]]:
        """Consecutive batches of ``size`` conformations taken from ``order``."""
        return [self.batch(order[start : start + size]) for start in range(0, len(order), size)]
