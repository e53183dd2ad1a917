"""Save and load models as plain dicts of tensors (``torch.load(weights_only=True)``, no pickled classes).

File content: ``format`` ("aiida-mlpes-model"), ``format_version``, ``config`` (ModelConfig.to_dict()),
``state_dict`` (weights plus the float64 reference energies, energy scale and cutoff buffers) and
``metadata`` (user entries plus ``versions`` of python, torch, numpy, ase, aiida-mlpes).

A committee file (:class:`~.committee.Committee`, format version 2) holds all K members in one file: every
``state_dict`` entry has a leading member dimension (K, ...), and ``committee_size`` (K) is stored at the top
level and in the metadata. :func:`load_model` returns the committee module for such a file.
"""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .base import AtomisticModel
from .config import ModelConfig

if TYPE_CHECKING:
    from .committee import Committee

FORMAT = "aiida-mlpes-model"
#: version written for single models (readable by every release) and for committee files
FORMAT_VERSION = 1
COMMITTEE_FORMAT_VERSION = 2


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
    model: AtomisticModel | Committee, path: str | os.PathLike, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` (a model or a committee) to ``path`` atomically (temporary file + rename); returns
    the path."""
    from .committee import Committee

    path = Path(path)
    meta = plain(dict(metadata or {}))
    meta.setdefault("versions", package_versions())
    content: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION}
    if isinstance(model, Committee):
        members = model.member_state_dicts()
        state = {key: torch.stack([m[key].detach().cpu() for m in members]) for key in members[0]}
        meta["committee_size"] = model.size
        content.update(format_version=COMMITTEE_FORMAT_VERSION, committee_size=model.size)
    else:
        state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    content.update(config=model.config.to_dict(), state_dict=state, metadata=meta)
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
    if int(content.get("format_version", -1)) > COMMITTEE_FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has format version {content['format_version']}; "
            f"this aiida-mlpes reads <= {COMMITTEE_FORMAT_VERSION}"
        )
    for key in ("config", "state_dict"):
        if key not in content:
            raise ModelFileError(f"model file {path} lacks its {key!r} entry")
    size = committee_size(content)
    if size != 1:
        if size < 2:
            raise ModelFileError(f"model file {path} has committee_size {size}; a committee has >= 2 members")
        bad = [k for k, v in content["state_dict"].items() if v.dim() == 0 or v.shape[0] != size]
        if bad:
            raise ModelFileError(
                f"committee file {path}: entries {bad[:3]} lack the leading member dimension of {size}"
            )
    return content


def committee_size(content: dict[str, Any]) -> int:
    """Number of members in the content of a model file (1 for a single model)."""
    size = content.get("committee_size", (content.get("metadata") or {}).get("committee_size", 1))
    return int(size)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """Load a model written by :func:`save_model`, in eval mode on ``device`` (``"auto"``: cuda if
    available); ``model.metadata`` holds the stored metadata. A committee file gives a
    :class:`~.committee.Committee` (check ``isinstance``), any other file an :class:`AtomisticModel`."""
    from .committee import Committee

    content = read_model_file(path)
    model: AtomisticModel | Committee
    try:
        config = ModelConfig.from_dict(dict(content["config"]))
        size = committee_size(content)
        if size > 1:
            state = content["state_dict"]
            members = [{key: value[k] for key, value in state.items()} for k in range(size)]
            model = Committee.from_state_dicts(config, members)
        else:
            model = build_model(config)
            model.load_state_dict(content["state_dict"])
    except (ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise ModelFileError(f"model file {path} does not match its stored configuration: {exc}") from exc
    model.metadata = dict(content.get("metadata") or {})
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval()
