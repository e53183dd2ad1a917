"""Optional Grimme D3(BJ) dispersion through the maintained ``tad-dftd3`` package (PyTorch, autodiff).

Enabled by ``ModelConfig(dispersion=True, dispersion_functional="pbe")``; the package is not a
dependency of aiida-mlpes (``pip install tad-dftd3``). Energies in eV, positions in Angstrom; tad-dftd3
works in bohr and hartree inside. Forces come from autograd (the numpy latency engine declines such models).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..units import BOHR, HARTREE


class D3Dispersion(nn.Module):
    """D3(BJ) dispersion energy per molecule (eV) for the damping parameters of ``functional``."""

    elements: torch.Tensor  # buffer: atomic numbers indexed by species

    def __init__(self, elements: Sequence[int], functional: str = "pbe") -> None:
        super().__init__()
        try:
            from tad_dftd3.param import get_functional_params
        except ImportError as exc:
            raise ImportError(
                "ModelConfig(dispersion=True) needs the optional package tad-dftd3: pip install tad-dftd3"
            ) from exc
        try:
            params = get_functional_params(functional, damping="bj", dtype=torch.float64)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"no D3(BJ) parameters for dispersion_functional={functional!r}: {exc}") from exc
        self.functional = functional
        self.register_buffer("elements", torch.tensor(list(elements), dtype=torch.long), persistent=False)
        for key, value in params.items():
            self.register_buffer(f"param_{key}", value.clone(), persistent=False)
        self.param_names = list(params)

    def forward(
        self, species: torch.Tensor, positions: torch.Tensor, batch_index: torch.Tensor, n_atoms: torch.Tensor
    ) -> torch.Tensor:
        """(B,) dispersion energies in eV for the flat batch (species index into ``elements``)."""
        from tad_dftd3 import dftd3

        n_mol = len(n_atoms)
        width = int(n_atoms.max()) if n_mol else 0
        offsets = torch.cumsum(n_atoms, 0) - n_atoms
        local = torch.arange(len(species), device=species.device) - offsets[batch_index]
        numbers = torch.zeros(n_mol, width, dtype=torch.long, device=species.device)
        numbers[batch_index, local] = self.elements[species]
        coords = positions.new_zeros(n_mol, width, 3).index_put((batch_index, local), positions / BOHR)
        param = {name: getattr(self, f"param_{name}").to(positions.dtype) for name in self.param_names}
        return dftd3(numbers, coords, param).sum(dim=-1) * HARTREE
