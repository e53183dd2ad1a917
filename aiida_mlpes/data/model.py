"""``PESModel`` (entry point ``mlpes.model``): a trained PhysNet/PaiNN model file in the AiiDA repository.

The file is the one :func:`aiida_mlpes.core.models.save_model` writes (a dict of tensors, read with
``torch.load(weights_only=True)``). Hyperparameters, the element table, the reference energies and the
versions of the packages that trained it are copied to attributes, so models can be found with the
QueryBuilder without opening files, e.g.::

    QueryBuilder().append(PESModel, filters={"attributes.architecture": "physnet",
                                             "attributes.elements": {"contains": ["N"]}})

A committee file (K members in one file) has ``committee_size`` K; a single model has 1. ``load()`` returns
the committee module for a committee file, and ``calculator()`` gives its mean and spread.
"""

from __future__ import annotations

import pathlib
import tempfile
from typing import Any

from aiida.orm import SinglefileData
from ase.data import chemical_symbols

FILENAME = "model.pt"


def _read_model_file(path: pathlib.Path) -> dict[str, Any]:
    from aiida_mlpes.core.models.io import read_model_file

    return read_model_file(path)


class PESModel(SinglefileData):
    """A trained ML potential (energies eV, forces eV/Angstrom, charges e, dipoles e*Angstrom)."""

    def __init__(self, file: str | pathlib.Path, filename: str = FILENAME, **kwargs: Any) -> None:
        """Store the model file ``file``; it is validated (corrupt files raise ValueError) and summarised."""
        path = pathlib.Path(file)
        content = _read_model_file(path)
        super().__init__(file=path, filename=filename, **kwargs)
        for key, value in _summarise(content).items():
            self.base.attributes.set(key, value)

    @classmethod
    def from_model(cls, model: Any, metadata: dict[str, Any] | None = None, **kwargs: Any) -> PESModel:
        """An (unstored) node from an in-memory model (see ``save_model``)."""
        from aiida_mlpes.core.models import save_model

        with tempfile.TemporaryDirectory() as tmp:
            path = save_model(model, pathlib.Path(tmp) / FILENAME, metadata=metadata)
            return cls(file=path, **kwargs)

    def load(self, device: str = "cpu") -> Any:
        """The model as a torch module in eval mode on ``device`` (``torch.load(weights_only=True)``)."""
        from aiida_mlpes.core.models import load_model

        with self.as_path() as path:
            return load_model(path, device=device)

    def calculator(self, device: str = "cpu", **kwargs: Any) -> Any:
        """An ASE calculator (``MLPESCalculator``) for this model on ``device``."""
        from aiida_mlpes.core.calculator import MLPESCalculator

        return MLPESCalculator(self.load(device), device=device, **kwargs)

    @property
    def architecture(self) -> str:
        return str(self.base.attributes.get("architecture"))

    @property
    def elements(self) -> list[str]:
        return list(self.base.attributes.get("elements"))

    @property
    def committee_size(self) -> int:
        """Members in the file: K for a committee, 1 for a single model."""
        return int(self.base.attributes.get("committee_size", 1))

    @property
    def model_config(self) -> dict[str, Any]:
        """The ModelConfig as a dict (hyperparameters, element table, cutoff)."""
        return dict(self.base.attributes.get("config"))

    @property
    def versions(self) -> dict[str, str]:
        """Versions of python, torch, numpy, ase and aiida-mlpes that wrote the model."""
        return dict(self.base.attributes.get("versions", {}))

    def __str__(self) -> str:
        committee = f", committee of {self.committee_size}" if self.committee_size > 1 else ""
        return f"{super().__str__()} [{self.architecture} for {','.join(self.elements)}{committee}]"


def _summarise(content: dict[str, Any]) -> dict[str, Any]:
    from aiida_mlpes.core.models.io import committee_size

    config = dict(content["config"])
    size = committee_size(content)
    state = content["state_dict"]
    if size > 1:  # every entry has a leading member axis; the references are shared, show member 0's
        state = {key: value[0] for key, value in state.items()}
    metadata = dict(content.get("metadata") or {})
    numbers = [int(z) for z in config["elements"]]
    summary: dict[str, Any] = {
        "architecture": config["architecture"],
        "elements": [chemical_symbols[z] for z in numbers],
        "atomic_numbers": numbers,
        "cutoff": float(config["cutoff"]),
        "n_features": int(config["n_features"]),
        "n_rbf": int(config["n_rbf"]),
        "n_blocks": int(config["n_blocks"]),
        "dtype": config["dtype"],
        "config": config,
        "n_parameters": _count_parameters(config) * size,
        "committee_size": size,
        "versions": {str(k): str(v) for k, v in dict(metadata.get("versions", {})).items()},
        "format_version": int(content.get("format_version", 0)),
    }
    if "element_energies" in state:
        summary["element_energies"] = [float(v) for v in state["element_energies"].reshape(-1)]
    if "energy_scale" in state:
        summary["energy_scale"] = float(state["energy_scale"])
    for key in ("best_epoch", "best_valid_loss", "valid_metrics"):
        if key in metadata:
            summary[key] = metadata[key]
    return summary


def _count_parameters(config: dict[str, Any]) -> int:
    from aiida_mlpes.core.models import build_model

    return int(sum(p.numel() for p in build_model(config).parameters()))
