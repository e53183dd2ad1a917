"""The part every architecture shares: element table, reference energies, charges, Coulomb, forces.

An architecture (PhysNet, PaiNN) only implements :meth:`AtomisticModel.atomic_outputs`, returning per-atom
energies and raw charges; this class turns them into molecular energies (eV), forces (eV/Angstrom, from
autograd), atomic charges constrained to the total charge (e) and dipoles (e*Angstrom).

Energy = energy_scale * (sum_i E_i) + E_coulomb + E_dispersion + sum_i E_ref(Z_i), the last sum in float64.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from ase.data import chemical_symbols
from torch import nn

from .config import ModelConfig
from .layers import lookup, polynomial_cutoff, times_features
from .pairs import PairGeometry

if TYPE_CHECKING:
    from .dispersion import D3Dispersion

#: Coulomb constant in eV*Angstrom/e^2 (ase.units: Hartree * Bohr).
COULOMB_EV_ANGSTROM = 14.399645351950543


class AtomisticModel(nn.Module):
    """Base class: batch handling, energy assembly, charges, electrostatics and forces."""

    # buffers (registered in __init__) and optional submodule, declared for type checkers
    elements: torch.Tensor
    element_index: torch.Tensor
    cutoff: torch.Tensor
    element_energies: torch.Tensor
    energy_scale: torch.Tensor
    dispersion: D3Dispersion | None
    #: metadata stored with the model file (set by :func:`~.io.load_model`)
    metadata: dict[str, Any]

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        elements = torch.tensor(config.elements, dtype=torch.long)
        table = torch.full((max(config.elements) + 1,), -1, dtype=torch.long)
        table[elements] = torch.arange(len(elements))
        self.register_buffer("elements", elements)
        self.register_buffer("element_index", table)
        self.register_buffer("cutoff", torch.tensor(float(config.cutoff), dtype=torch.float64))
        self.register_buffer("element_energies", torch.zeros(len(elements), dtype=torch.float64))
        self.register_buffer("energy_scale", torch.ones((), dtype=torch.float64))
        self.dispersion = None
        if config.dispersion:
            from .dispersion import D3Dispersion

            self.dispersion = D3Dispersion(config.elements, config.dispersion_functional)

    def _apply(self, fn, recurse=True):
        """Keep reference energies, scale and cutoff in float64 whatever ``.to(dtype)`` does."""
        keep = {name: getattr(self, name) for name in ("element_energies", "energy_scale", "cutoff")}
        super()._apply(fn, recurse)
        for name, value in keep.items():
            setattr(self, name, value.to(device=getattr(self, name).device, dtype=torch.float64))
        return self

    # -- to implement -------------------------------------------------------------------------------
    def atomic_outputs(
        self, species: torch.Tensor, pairs: PairGeometry, atom_charge: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-atom energies (N,) in units of ``energy_scale`` and raw charges (N,) in e (or None).

        ``species`` are indices into ``config.elements``; ``pairs`` holds the pair vectors r_j - r_i and
        distances (Angstrom) in the batch's layout (:mod:`.pairs`); ``atom_charge`` (N,) is the total charge
        of each atom's molecule (e).
        """
        raise NotImplementedError

    # -- public -------------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return torch.float64 if self.config.dtype == "float64" else torch.float32

    def set_reference(self, element_energies: Sequence[float] | np.ndarray, energy_scale: float) -> None:
        """Set per-element reference energies (eV, indexed like ``config.elements``) and the scale (eV)."""
        values = torch.as_tensor(np.asarray(element_energies, dtype=np.float64).reshape(-1))
        if len(values) != len(self.config.elements):
            raise ValueError(
                f"element_energies has {len(values)} entries; expected one per element {self.config.elements}"
            )
        if not np.isfinite(float(energy_scale)) or float(energy_scale) <= 0:
            raise ValueError(f"energy_scale must be a positive finite number (eV), got {energy_scale}")
        self.element_energies.copy_(values)
        self.energy_scale.fill_(float(energy_scale))

    def species(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        """Atomic numbers -> indices into ``config.elements``; unknown elements raise a ValueError."""
        z = atomic_numbers.to(torch.long)
        table = self.element_index
        if len(z) and (int(z.max()) >= len(table) or int(z.min()) < 1):
            index = torch.full_like(z, -1)
            ok = (z >= 1) & (z < len(table))
            index[ok] = table[z[ok]]
        else:
            index = table[z]
        if len(index) and bool((index < 0).any()):
            unknown = sorted({int(v) for v in z[index < 0]})
            names = ", ".join(
                f"{chemical_symbols[v] if 0 < v < len(chemical_symbols) else '?'} (Z={v})" for v in unknown
            )
            raise ValueError(
                f"element(s) {names} not in the model's training elements "
                f"{[chemical_symbols[e] for e in self.config.elements]}"
            )
        return index

    def forward(
        self, batch: dict[str, torch.Tensor], compute_forces: bool = True, create_graph: bool = False
    ) -> dict[str, torch.Tensor]:
        """Energies (B,) eV float64, forces (sum n, 3) eV/A, atomic_charges (sum n,) e, dipole (B, 3) e*A.

        ``batch`` is a :func:`collate` dict (each molecule's atoms contiguous, molecules in order). A batch of
        one molecule size (at most ``all_pairs_max_atoms``) runs in the dense pair layout (:mod:`.pairs`);
        otherwise optional ``idx_i``/``idx_j`` give a precomputed pair list (all intramolecular ordered
        pairs, or at least all within the cutoff; the Coulomb term uses it too).
        """
        positions = batch["positions"]
        if positions.dtype != self.dtype:
            positions = positions.to(self.dtype)
        batch_index = batch["batch"]
        n_atoms = batch["n_atoms"]
        n_mol = len(n_atoms)
        species = self.species(batch["atomic_numbers"])
        charge = batch.get("charge")
        if charge is None:
            charge = positions.new_zeros(n_mol)
        charge = charge.to(positions.dtype)

        with torch.enable_grad() if compute_forces else contextlib.nullcontext():
            if compute_forces and not positions.requires_grad:
                positions = positions.detach().requires_grad_(True)
            pairs = PairGeometry(
                positions,
                batch_index,
                n_atoms,
                self.config.cutoff,
                self.config.all_pairs_max_atoms,
                batch.get("idx_i"),
                batch.get("idx_j"),
            )
            energy_atomic, raw_charges = self.atomic_outputs(species, pairs, pairs.per_atom(charge))
            scale = self.energy_scale.to(energy_atomic.dtype)
            energy = pairs.per_molecule(energy_atomic)
            # a committee stack (committee.py) has one scale per member and member-blocked molecules
            if scale.dim() == 0:
                energy = energy * scale
            else:
                energy = times_features(energy.unsqueeze(1), scale.unsqueeze(1)).squeeze(1)
            out: dict[str, torch.Tensor] = {}
            if raw_charges is not None:
                excess = (pairs.per_molecule(raw_charges) - charge) / n_atoms.to(raw_charges.dtype)
                charges = raw_charges - pairs.per_atom(excess)
                out["atomic_charges"] = charges
                out["dipole"] = pairs.per_molecule(charges.unsqueeze(1) * positions)
                if self.config.electrostatics:
                    energy = energy + self.coulomb(charges, *pairs.coulomb_pairs(positions, n_atoms))
            if self.dispersion is not None:
                energy = energy + self.dispersion(species, positions, batch_index, n_atoms)
            if compute_forces:
                (grad,) = torch.autograd.grad(
                    energy.sum(), positions, create_graph=create_graph, retain_graph=create_graph
                )
                out["forces"] = -grad
        reference = pairs.per_molecule(lookup(self.element_energies, species, 1))
        out["energy"] = energy.to(torch.float64) + reference
        if compute_forces and not create_graph:
            out = {k: v.detach() for k, v in out.items()}
        return out

    def coulomb(self, charges: torch.Tensor, pairs: PairGeometry, distances: torch.Tensor) -> torch.Tensor:
        """Shielded Coulomb energy per molecule (eV), PhysNet eq. 13, over all ordered pairs (halved).

        chi(r) = phi(2r)/sqrt(r^2 + 1) + (1 - phi(2r))/r: shielded at short range, 1/r beyond ``r_sr / 2``.
        """
        r_sr = self.config.short_range_cutoff or self.config.cutoff
        switch = polynomial_cutoff(distances, 0.5 * r_sr)
        chi = switch * torch.rsqrt(distances * distances + 1.0) + (1.0 - switch) / distances
        pair_energy = (0.5 * COULOMB_EV_ANGSTROM) * pairs.gather_i(charges) * pairs.gather_j(charges) * chi
        return pairs.pair_energy_per_molecule(pair_energy)
