"""Pair geometry of a batch in one of two memory layouts, with the few operations message passing needs.

- **dense** (B, n, n): every molecule has the same number of atoms n (at most ``all_pairs_max_atoms``),
  which is the DMC/MD/calculator case (one molecule, many geometries) and that of a training batch of one
  molecule. Pair tensors have shape (B, n, n, ...); sending an atom's features to its pairs is a broadcast
  view (no copy) and summing the messages of atom i is a reduction over one axis (no scatter). The diagonal
  i == i carries the distance ``cutoff``, where every cutoff function (and its derivative) is exactly zero,
  so self-pairs contribute exactly nothing and never produce 0/0 in a derivative.
- **sparse** (P,): a flat list of ordered pairs ``idx_i``/``idx_j`` (all intramolecular pairs, or the
  vesin-torch neighbour list for large molecules); gather = ``index_select``, sum = ``index_add``.

Architectures are written once against :class:`PairGeometry` and run unchanged in both layouts; only the
order of floating-point summation differs (results agree to rounding). Distances in Angstrom.
"""

from __future__ import annotations

import torch

from .neighbors import all_pairs, build_pairs


class PairGeometry:
    """Vectors r_j - r_i (..., 3) and distances (...) of all pairs of a batch, and layout operations.

    Pair tensors have leading shape ``pair_shape``: (B, n, n) dense or (P,) sparse. Atom tensors are flat
    (sum n, ...), molecules in order with contiguous atoms (the :func:`~.batch.collate` layout).
    """

    def __init__(
        self,
        positions: torch.Tensor,
        batch_index: torch.Tensor,
        n_atoms: torch.Tensor,
        cutoff: float,
        all_pairs_max_atoms: int,
        idx_i: torch.Tensor | None = None,
        idx_j: torch.Tensor | None = None,
    ) -> None:
        self.n_mol = n_mol = len(n_atoms)
        self.n_total = len(positions)
        self.batch_index = batch_index
        self.cutoff = float(cutoff)
        self.idx_i: torch.Tensor | None = None
        self.idx_j: torch.Tensor | None = None
        self.offdiagonal: torch.Tensor | None = None
        n = self.n_total // n_mol if n_mol else 0
        self.dense = bool(n_mol and 1 < n <= all_pairs_max_atoms and n * n_mol == self.n_total)
        if self.dense:
            self.dense = bool((n_atoms == n).all())
        self.n = n
        #: whether the pair list holds every intramolecular pair (then it also serves the Coulomb term)
        self.complete = True
        if self.dense:
            pos = positions.view(n_mol, n, 3)
            self.vectors = pos.unsqueeze(1) - pos.unsqueeze(2)  # [b, i, j] = r_j - r_i
            eye = torch.eye(n, dtype=positions.dtype, device=positions.device)
            self.offdiagonal = 1.0 - eye
            squared = (self.vectors * self.vectors).sum(dim=-1) + eye * (self.cutoff * self.cutoff)
            self.distances = torch.sqrt(squared)
            return
        if idx_i is None or idx_j is None:
            max_atoms = int(n_atoms.max()) if n_mol else 0
            self.complete = max_atoms <= all_pairs_max_atoms
            idx_i, idx_j = build_pairs(positions, batch_index, n_atoms, cutoff, all_pairs_max_atoms)
        self.idx_i, self.idx_j = idx_i, idx_j
        self.vectors = positions.index_select(0, idx_j) - positions.index_select(0, idx_i)
        self.distances = torch.linalg.vector_norm(self.vectors, dim=-1)

    # -- atoms -> pairs ---------------------------------------------------------------------------------
    def gather_j(self, x: torch.Tensor) -> torch.Tensor:
        """Atom tensor (sum n, ...) -> value of atom j for every pair (broadcastable to pair shape)."""
        if self.dense:
            return x.unflatten(0, (self.n_mol, 1, self.n))
        assert self.idx_j is not None
        return x.index_select(0, self.idx_j)

    def gather_i(self, x: torch.Tensor) -> torch.Tensor:
        """Atom tensor (sum n, ...) -> value of atom i for every pair (broadcastable to pair shape)."""
        if self.dense:
            return x.unflatten(0, (self.n_mol, self.n, 1))
        assert self.idx_i is not None
        return x.index_select(0, self.idx_i)

    # -- pairs -> atoms / molecules ---------------------------------------------------------------------
    def sum_j(self, x: torch.Tensor) -> torch.Tensor:
        """Pair tensor -> (sum n, ...): for each atom i the sum over its pairs (i, j)."""
        if self.dense:
            return x.sum(dim=2).flatten(0, 1)
        assert self.idx_i is not None
        return x.new_zeros((self.n_total, *x.shape[1:])).index_add_(0, self.idx_i, x)

    def pair_energy_per_molecule(self, x: torch.Tensor) -> torch.Tensor:
        """Pair tensor (pair shape) -> (B,) sum over each molecule's pairs, self-pairs excluded."""
        if self.dense:
            assert self.offdiagonal is not None
            return (x * self.offdiagonal).sum(dim=(1, 2))
        assert self.idx_i is not None
        return x.new_zeros(self.n_mol).index_add_(0, self.batch_index.index_select(0, self.idx_i), x)

    def per_molecule(self, x: torch.Tensor) -> torch.Tensor:
        """Atom tensor (sum n, ...) -> (B, ...) sum over each molecule's atoms."""
        if self.dense:
            return x.unflatten(0, (self.n_mol, self.n)).sum(dim=1)
        return x.new_zeros((self.n_mol, *x.shape[1:])).index_add_(0, self.batch_index, x)

    def per_atom(self, x: torch.Tensor) -> torch.Tensor:
        """Molecule tensor (B, ...) -> (sum n, ...) each atom's molecule's value."""
        return x.index_select(0, self.batch_index)

    def coulomb_pairs(
        self, positions: torch.Tensor, n_atoms: torch.Tensor
    ) -> tuple[PairGeometry, torch.Tensor]:
        """A geometry with all intramolecular pairs (self if it has them) and its distances."""
        if self.complete:
            return self, self.distances
        idx_i, idx_j = all_pairs(n_atoms)
        full = PairGeometry(positions, self.batch_index, n_atoms, self.cutoff, 0, idx_i, idx_j)
        return full, full.distances
