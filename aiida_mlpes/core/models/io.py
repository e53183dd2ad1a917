"""Save and load models as plain dicts of tensors (``torch.load(weights_only=True)``, no pickled classes).

File content: ``format`` ("aiida-mlpes-model"), ``format_version``, ``config`` (ModelConfig.to_dict()),
``state_dict`` (weights plus the float64 reference energies, energy scale and cutoff buffers) and
``metadata`` (user entries plus ``versions`` of python, torch, numpy, ase, aiida-mlpes).
"""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

from .base import AtomisticModel
from .config import ModelConfig

FORMAT = "aiida-mlpes-model"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file is missing, corrupt or not written by :func:`save_model`."""


def package_versions() -> dict[str, str]:
    """Versions of the packages that define the model's numerics."""
    import ase
    import numpy

    try:
        from aiida_mlpes import __version__ as own
    except ImportError:  # pragma: no cover
        own = "unknown"
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": str(numpy.__version__),
        "ase": str(ase.__version__),
        "aiida-mlpes": str(own),
    }


def plain(value: Any, where: str = "metadata") -> Any:
    """``value`` as plain Python/tensor types that ``torch.load(weights_only=True)`` accepts."""
    import numpy as np

    if value is None or type(value) in (bool, int, float) or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise ValueError(f"{where} holds a {type(value).__name__}; only plain numbers, strings, lists and dicts")


def build_model(config: ModelConfig | dict[str, Any]) -> AtomisticModel:
    """A freshly initialised model for ``config`` (a ModelConfig or its dict), in ``config.dtype``."""
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    if config.architecture == "physnet":
        from .physnet import PhysNet

        model: AtomisticModel = PhysNet(config)
    else:
        from .painn import PaiNN

        model = PaiNN(config)
    return model.to(torch.float64 if config.dtype == "float64" else torch.float32)


def save_model(
    model: AtomisticModel, path: str | os.PathLike, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` to ``path`` atomically (temporary file + rename); returns the path."""
    path = Path(path)
    meta = plain(dict(metadata or {}))
    meta.setdefault("versions", package_versions())
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    content = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": state,
        "metadata": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(content, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw content of a model file; raises :class:`ModelFileError` with the reason if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise ModelFileError(
            f"cannot read model file {path}: it is corrupt or not a model saved by save_model ({exc})"
        ) from exc
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not an aiida-mlpes model file (missing format tag {FORMAT!r})")
    if int(content.get("format_version", -1)) > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has format version {content['format_version']}; this aiida-mlpes reads <= {FORMAT_VERSION}"
        )
    for key in ("config", "state_dict"):
        if key not in content:
            raise ModelFileError(f"model file {path} lacks its {key!r} entry")
    return content


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> AtomisticModel:
    """Load a model written by :func:`save_model`, in eval mode on ``device`` (``"auto"``: cuda if
    available); ``model.metadata`` holds the stored metadata."""
    content = read_model_file(path)
    try:
        config = ModelConfig.from_dict(dict(content["config"]))
        model = build_model(config)
        model.load_state_dict(content["state_dict"])
    except (ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise ModelFileError(f"model file {path} does not match its stored configuration: {exc}") from exc
    model.metadata = dict(content.get("metadata") or {})
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval()
