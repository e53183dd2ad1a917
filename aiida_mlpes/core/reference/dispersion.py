"""DFT-D3(BJ) dispersion energy and forces through tad-dftd3 (optional dependency ``d3``).

Grimme's D3 with Becke-Johnson damping, with the damping parameters of the functional looked up in
tad-dftd3's copy of the s-dftd3 parameter table. Units at the boundary: positions in Angstrom, energy in eV,
forces in eV/Angstrom. The three-body (ATM) term is off by default, as in ORCA's ``D3BJ`` keyword.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from aiida_mlpes.core.units import BOHR, HARTREE

#: Values of the PySCF calculator's ``dispersion`` parameter that this module computes.
DISPERSION_MODELS = ("d3bj",)


def _tad_dftd3() -> Any:
    try:
        import tad_dftd3
    except ImportError as exc:
        raise ValueError(
            f"dispersion 'd3bj' needs the package tad-dftd3 (pip install 'aiida-mlpes[d3]'): {exc}"
        ) from None
    return tad_dftd3


def d3bj_parameters(functional: str, three_body: bool = False) -> dict[str, torch.Tensor]:
    """D3(BJ) damping parameters (s6, s8, a1, a2, s9) of ``functional`` (e.g. "PBE", "B3LYP"), float64.

    ``three_body`` keeps the Axilrod-Teller-Muto term (s9 = 1); otherwise s9 = 0.
    """
    _tad_dftd3()
    from tad_dftd3.param import get_functional_params

    try:
        param = get_functional_params(functional, "bj", dtype=torch.float64, device=torch.device("cpu"))
    except (KeyError, ValueError) as exc:
        raise ValueError(f"no D3(BJ) parameters for functional {functional!r}: {exc}") from None
    param["s9"] = torch.tensor(1.0 if three_body else 0.0, dtype=torch.float64)
    return param


def d3bj_energy_forces(
    numbers: np.ndarray, positions: np.ndarray, functional: str, three_body: bool = False
) -> tuple[float, np.ndarray]:
    """D3(BJ) dispersion energy (eV) and forces (eV/Angstrom, shape (n_atoms, 3)) of one molecule.

    ``numbers``: atomic numbers (n_atoms,); ``positions``: Angstrom (n_atoms, 3).
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (len(numbers), 3):
        raise ValueError(f"positions have shape {positions.shape}, expected ({len(numbers)}, 3)")
    d3 = _tad_dftd3()
    param = d3bj_parameters(functional, three_body)
    z = torch.as_tensor(numbers)
    r = torch.tensor(positions / BOHR, dtype=torch.float64, requires_grad=True)
    energy = d3.dftd3(z, r, param).sum()
    (gradient,) = torch.autograd.grad(energy, r)
    forces = -gradient.detach().numpy() * HARTREE / BOHR
    return float(energy.detach()) * HARTREE, forces
