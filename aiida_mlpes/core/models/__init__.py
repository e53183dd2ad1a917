"""Machine-learned potentials: PhysNet and PaiNN in PyTorch, batching, neighbour lists, save/load.

Public API::

    from aiida_mlpes.core.models import ModelConfig, build_model, save_model, load_model, collate, Committee

Units: positions Angstrom, energies eV (float64 after adding reference energies), forces eV/Angstrom,
charges e, dipoles e*Angstrom.
"""

from .base import AtomisticModel
from .batch import collate
from .committee import Committee, committee_statistics
from .config import ModelConfig
from .io import ModelFileError, build_model, load_model, save_model

__all__ = [
    "AtomisticModel",
    "Committee",
    "ModelConfig",
    "ModelFileError",
    "build_model",
    "collate",
    "committee_statistics",
    "load_model",
    "save_model",
]
