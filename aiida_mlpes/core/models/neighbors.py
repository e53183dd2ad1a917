"""Pair lists for a batch of isolated molecules (no periodic boundaries).

Two strategies, chosen per batch by molecule size:

- ``all_pairs``: every ordered pair (i, j != i) inside each molecule, built with a few vectorised index
  operations from ``n_atoms`` alone (no distances). For small molecules (the usual ML-PES case: with a cutoff of
  8 Angstrom an NH3 is fully connected) this is the cheapest, and it can be cached for a fixed molecule.
  Pairs beyond the cutoff stay in the list; the cutoff functions make their contribution exactly zero.
- ``radius_pairs``: a vesin-torch neighbour list over the whole batch in one call, with the molecules
  translated far apart so that no pair crosses two molecules. Used for large molecules.
"""

from __future__ import annotations

import torch


def all_pairs(n_atoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered intramolecular pairs (i, j), i != j, for molecules of sizes ``n_atoms`` (B,).

    Returns two long tensors of length sum n (n - 1), on the device of ``n_atoms``, sorted by i.
    """
    n_atoms = n_atoms.to(torch.long)
    device = n_atoms.device
    if len(n_atoms) == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    first = int(n_atoms[0])
    if bool((n_atoms == first).all()):
        return _uniform_pairs(len(n_atoms), first, device)
    offsets = torch.cumsum(n_atoms, 0) - n_atoms
    squares = n_atoms * n_atoms
    total = int(squares.sum())
    mol = torch.repeat_interleave(torch.arange(len(n_atoms), device=device), squares, output_size=total)
    start = torch.cumsum(squares, 0) - squares
    local = torch.arange(total, device=device) - start[mol]
    size = n_atoms[mol]
    li = torch.div(local, size, rounding_mode="floor")
    lj = local - li * size
    keep = li != lj
    base = offsets[mol]
    return (base + li)[keep], (base + lj)[keep]


def _uniform_pairs(n_mol: int, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs for ``n_mol`` molecules of ``n`` atoms each (fast path: one broadcast)."""
    local = torch.arange(n, device=device)
    li = local.repeat_interleave(n)
    lj = local.repeat(n)
    keep = li != lj
    li, lj = li[keep], lj[keep]
    base = (torch.arange(n_mol, device=device) * n).unsqueeze(1)
    return (base + li).reshape(-1), (base + lj).reshape(-1)


def radius_pairs(
    positions: torch.Tensor, batch: torch.Tensor, n_atoms: torch.Tensor, cutoff: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ordered pairs closer than ``cutoff`` (Angstrom) within each molecule, from one vesin-torch call.

    Molecules are translated apart along x (in float64, detached) so the list never mixes molecules.
    """
    from vesin_torch import NeighborList

    points = positions.detach().to(torch.float64).cpu()
    batch_cpu = batch.cpu()
    if len(points) == 0:
        empty = torch.zeros(0, dtype=torch.long, device=positions.device)
        return empty, empty
    n_mol = len(n_atoms)
    lo = torch.full((n_mol, 3), float("inf"), dtype=torch.float64).scatter_reduce(
        0, batch_cpu.unsqueeze(1).expand(-1, 3), points, "amin"
    )
    hi = torch.full((n_mol, 3), float("-inf"), dtype=torch.float64).scatter_reduce(
        0, batch_cpu.unsqueeze(1).expand(-1, 3), points, "amax"
    )
    spacing = float((hi - lo)[:, 0].max()) + 2.0 * cutoff + 1.0
    shift = torch.zeros(n_mol, 3, dtype=torch.float64)
    shift[:, 0] = torch.arange(n_mol, dtype=torch.float64) * spacing
    points = points - lo[batch_cpu] + shift[batch_cpu]
    calculator = NeighborList(cutoff=float(cutoff), full_list=True)
    i, j = calculator.compute(points, torch.zeros(3, 3, dtype=torch.float64), False, quantities="ij")
    return i.to(torch.long).to(positions.device), j.to(torch.long).to(positions.device)


def build_pairs(
    positions: torch.Tensor,
    batch: torch.Tensor,
    n_atoms: torch.Tensor,
    cutoff: float,
    all_pairs_max_atoms: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair list for a batch: :func:`all_pairs` if every molecule is small enough, else :func:`radius_pairs`."""
    if len(n_atoms) == 0 or int(n_atoms.max()) <= all_pairs_max_atoms:
        return all_pairs(n_atoms)
    return radius_pairs(positions, batch, n_atoms, cutoff)
