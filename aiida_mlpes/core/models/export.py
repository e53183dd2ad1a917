"""TorchScript export of a trained model (PhysNet, PaiNN or a committee) for one molecule.

The exported file runs without aiida-mlpes: ``torch.jit.load(path)`` in a Python (or C++) that has only
torch. It is made from the single model definition (``physnet.py``, ``painn.py``, ``committee.py``): the
model's own :meth:`~.base.AtomisticModel.forward` is traced for the molecule's atomic numbers and total
charge, in the dense all-pairs layout (every pair of atoms; the cutoff functions switch pairs beyond the
cutoff off smoothly), and a small scripted wrapper adds forces by autograd and the unit conversion. A
committee file exports the committee mean (energy and forces of the mean energy).

The exported module's ``forward(positions)`` takes positions (N, 3) of the molecule, atoms in the order of
``atomic_numbers``, and returns ``(energy, forces)``: a 0-d float64 energy and (N, 3) float64 forces.
Units depend on ``units`` at export:

- ``"ase"``: positions in Angstrom, energy in eV, forces in eV/Angstrom (the package's units);
- ``"openmm"``: positions in nm, energy in kJ/mol, forces in kJ/mol/nm (OpenMM's units; the module can be
  given to ``openmmtorch.TorchForce`` with ``setOutputsForces(True)``).

The module also carries ``atomic_numbers`` (N,), ``charge`` (e) and ``units`` as attributes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..units import KJ_PER_MOL
from .base import AtomisticModel
from .committee import Committee

#: length unit -> Angstrom per unit, energy unit -> units per eV, for each ``units`` choice
UNITS: dict[str, tuple[float, float]] = {
    "ase": (1.0, 1.0),
    "openmm": (10.0, 1.0 / KJ_PER_MOL),
}


class _MoleculeEnergy(nn.Module):
    """positions (N, 3) Angstrom -> energy (0-d, eV, float64) of one fixed molecule; the module traced.

    Calls the model's own forward on a one-molecule batch; a committee's member energies are averaged.
    """

    numbers: torch.Tensor  # buffers
    charge: torch.Tensor

    def __init__(self, model: AtomisticModel | Committee, numbers: torch.Tensor, charge: float) -> None:
        super().__init__()
        self.model = model
        self.committee = isinstance(model, Committee)
        self.register_buffer("numbers", numbers)
        self.register_buffer("charge", torch.tensor([float(charge)], dtype=torch.float64))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        n = self.numbers.shape[0]
        batch = {
            "positions": positions,
            "atomic_numbers": self.numbers,
            "batch": torch.zeros(n, dtype=torch.long),
            "n_atoms": torch.tensor([n], dtype=torch.long),
            "charge": self.charge,
        }
        energy = self.model(batch, compute_forces=False)["energy"]
        if self.committee:
            energy = energy.mean(dim=0)
        return energy.reshape(())


class ExportedPotential(nn.Module):
    """Scripted wrapper: unit conversion around the traced energy, forces by autograd (module docstring)."""

    def __init__(
        self,
        energy: torch.jit.ScriptModule,
        numbers: torch.Tensor,
        charge: float,
        units: str,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        length, energy_factor = UNITS[units]
        self.energy = energy
        self.units = units
        self.charge = float(charge)
        self.length_to_angstrom = float(length)
        self.energy_from_ev = float(energy_factor)
        self.dtype = dtype
        self.n_atoms = len(numbers)
        self.register_buffer("atomic_numbers", numbers.clone())

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3) positions -> (energy 0-d, forces (N, 3)), float64, in this module's ``units``.

        Forces come from autograd, so do not call it under ``torch.no_grad()``.
        """
        if positions.dim() != 2 or positions.shape[0] != self.n_atoms or positions.shape[1] != 3:
            raise ValueError("positions must have shape (n_atoms, 3) for the exported molecule")
        x = positions.detach().to(self.dtype).requires_grad_(True)
        energy = self.energy(x * self.length_to_angstrom)
        grad = torch.autograd.grad([energy], [x])[0]
        assert grad is not None
        energy_out = energy.detach().to(torch.float64) * self.energy_from_ev
        forces = -grad.to(torch.float64) * self.energy_from_ev
        return energy_out, forces


def export_torchscript(
    model: AtomisticModel | Committee,
    atomic_numbers: Sequence[int] | np.ndarray,
    path: str | os.PathLike | None = None,
    charge: float = 0.0,
    units: str = "ase",
    positions: np.ndarray | None = None,
) -> torch.jit.ScriptModule:
    """TorchScript module of ``model`` for the molecule ``atomic_numbers`` (see the module docstring).

    Args:
        model: a model or committee (e.g. from :func:`~.io.load_model`), on the CPU.
        atomic_numbers: the molecule's atoms, in the order the positions will have.
        path: where to save the module (``torch.jit.save``); ``None`` saves nothing.
        charge: total charge of the molecule, e.
        units: ``"ase"`` (Angstrom, eV) or ``"openmm"`` (nm, kJ/mol).
        positions: an example geometry (N, 3) in Angstrom to trace at; a random one when omitted.

    The trace is checked against the model at two further random geometries. Molecules larger than
    ``config.all_pairs_max_atoms`` (which need a neighbour list that depends on the geometry), and models
    with D3 dispersion (whose tad-dftd3 code is not traced), raise a ValueError.
    """
    if units not in UNITS:
        raise ValueError(f"units must be one of {sorted(UNITS)}, got {units!r}")
    numbers = torch.as_tensor(np.asarray(atomic_numbers, dtype=np.int64).reshape(-1))
    n = len(numbers)
    config = model.config
    if n < 2:
        raise ValueError(f"TorchScript export needs a molecule of at least 2 atoms, got {n}")
    if n > config.all_pairs_max_atoms:
        raise ValueError(
            f"TorchScript export covers molecules up to all_pairs_max_atoms={config.all_pairs_max_atoms} "
            f"atoms (all pairs); this one has {n}"
        )
    if config.dispersion:
        raise ValueError("TorchScript export does not support models with D3 dispersion (dispersion=True)")
    model = model.cpu().eval()
    model.species(numbers)  # unknown elements: the model's clear error before tracing
    dtype = model.dtype
    rng = np.random.default_rng(0)
    if positions is None:
        example = _random_molecule(n, rng)
    else:
        example = np.asarray(positions, dtype=np.float64)
        if example.shape != (n, 3):
            raise ValueError(f"positions must have shape ({n}, 3), got {example.shape}")
    examples = [example, _random_molecule(n, rng), _random_molecule(n, rng)]
    inputs = [(torch.as_tensor(x, dtype=dtype),) for x in examples]
    wrapper = _MoleculeEnergy(model, numbers, charge)
    with warnings.catch_warnings():
        # shapes are fixed per molecule (TracerWarnings about them are expected); torch >= 2.10 marks
        # TorchScript deprecated in favour of torch.export, but OpenMM-Torch and C++ users load TorchScript
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=DeprecationWarning)
        traced = torch.jit.trace(wrapper, inputs[0], check_inputs=inputs[1:], check_tolerance=1e-5)
        module = torch.jit.script(ExportedPotential(traced, numbers, charge, units, dtype))
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        module.save(str(path))
    return module


def _random_molecule(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random geometry (n, 3) in Angstrom with atoms 1-1.5 Angstrom apart along a random walk."""
    steps = rng.normal(size=(n, 3))
    steps *= rng.uniform(1.0, 1.5, size=(n, 1)) / np.linalg.norm(steps, axis=1, keepdims=True)
    steps[0] = 0.0
    return np.cumsum(steps, axis=0)


def load_exported(module: Any) -> Any:
    """An exported module, or the path of its file loaded with ``torch.jit.load`` on the CPU (quietly: torch
    >= 2.10 marks TorchScript deprecated, but it still loads and runs)."""
    if isinstance(module, (str, os.PathLike)):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=DeprecationWarning)
            return torch.jit.load(os.fspath(module), map_location="cpu")
    if not hasattr(module, "atomic_numbers") or not hasattr(module, "units"):
        raise TypeError("expected a module made by export_torchscript (or the path of its file)")
    return module


def exported_info(module: Any) -> dict[str, Any]:
    """``atomic_numbers`` (list), ``charge`` (e) and ``units`` of an exported module."""
    return {
        "atomic_numbers": [int(z) for z in module.atomic_numbers.tolist()],
        "charge": float(module.charge),
        "units": str(module.units),
    }
