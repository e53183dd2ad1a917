"""Turn conformations of a :class:`RaggedArrays` into one batch dict of tensors (no Python loop over atoms).

Keys: ``atomic_numbers`` (sum n,) long, ``positions`` (sum n, 3), ``batch`` (sum n,) long conformation index,
``n_atoms`` (B,) long, ``charge`` (B,) total charge in e (0 if absent), and when the arrays hold them the
targets ``energy`` (B,) eV float64, ``forces`` (sum n, 3) eV/A, ``dipole`` (B, 3) e*A, ``atomic_charges``
(sum n,) e. With ``pairs=True`` it also holds ``idx_i``/``idx_j``: all intramolecular pairs (see neighbors.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..ragged import RaggedArrays
from .neighbors import all_pairs


def atom_indices(arrays: RaggedArrays, indices: np.ndarray) -> np.ndarray:
    """Indices into the per-atom arrays for conformations ``indices`` (in that order)."""
    counts = arrays.n_atoms[indices]
    starts = arrays.offsets[indices]
    total = int(counts.sum())
    before = np.cumsum(counts) - counts
    return np.repeat(starts - before, counts) + np.arange(total, dtype=np.int64)


def collate(
    arrays: RaggedArrays,
    indices: Sequence[int] | np.ndarray | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    pairs: bool = False,
    max_pair_atoms: int = 64,
) -> dict[str, torch.Tensor]:
    """Batch the conformations ``indices`` (default: all) of ``arrays`` as tensors on ``device``.

    Positions and per-atom targets get ``dtype``; ``energy`` stays float64 (large totals keep precision).
    ``pairs=True`` adds ``idx_i``/``idx_j`` (all pairs) when no molecule exceeds ``max_pair_atoms``.
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if indices is None:
        indices = np.arange(len(arrays))
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(indices) and (indices.min() < -len(arrays) or indices.max() >= len(arrays)):
        raise ValueError(f"indices out of range for {len(arrays)} conformations")
    indices = indices % max(len(arrays), 1)
    atoms = atom_indices(arrays, indices)
    n_atoms = arrays.n_atoms[indices]
    out = {
        "atomic_numbers": torch.from_numpy(arrays.atomic_numbers[atoms]),
        "positions": torch.from_numpy(arrays.positions[atoms]).to(dtype),
        "batch": torch.from_numpy(np.repeat(np.arange(len(indices), dtype=np.int64), n_atoms)),
        "n_atoms": torch.from_numpy(n_atoms.copy()),
    }
    charge = arrays.charge[indices] if arrays.charge is not None else np.zeros(len(indices))
    out["charge"] = torch.from_numpy(np.asarray(charge, dtype=np.float64)).to(dtype)
    if arrays.energy is not None:
        out["energy"] = torch.from_numpy(np.asarray(arrays.energy[indices], dtype=np.float64))
    if arrays.forces is not None:
        out["forces"] = torch.from_numpy(arrays.forces[atoms]).to(dtype)
    if arrays.dipole is not None:
        out["dipole"] = torch.from_numpy(arrays.dipole[indices]).to(dtype)
    if arrays.atomic_charges is not None:
        out["atomic_charges"] = torch.from_numpy(arrays.atomic_charges[atoms]).to(dtype)
    if pairs and (len(n_atoms) == 0 or int(n_atoms.max()) <= max_pair_atoms):
        out["idx_i"], out["idx_j"] = all_pairs(out["n_atoms"])
    return {key: value.to(device) for key, value in out.items()}
