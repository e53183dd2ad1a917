"""Runner tasks ``train`` and ``test`` (``aiida-mlpes-run train input.json``), used by ``mlpes.train`` and
``mlpes.test``. File names in the settings are relative to the working directory.

``train`` settings::

    {"dataset": "dataset.h5", "model": {ModelConfig fields} | null, "training": {TrainingConfig fields},
     "parent_model": "parent.pt" | null, "split": {"fractions": [0.8, 0.1, 0.1], "seed": 0} or
     {"train": [...], "valid": [...], "test": [...]}, "restart_checkpoint": "restart.pt" | null,
     "threads": int | null, "committee_size": int (default 1)}

writes ``model.pt`` (best EMA weights), ``checkpoint.pt`` (resumable), ``learning_curve.csv``,
``learning_curves.png`` and returns metrics of the best model on the valid and test splits. With
``committee_size`` K >= 2 the K members are trained as one batched committee and ``model.pt`` is one
committee file; the metrics are those of the committee mean, and ``committee`` in the result reports the
mean committee energy std (eV) and mean ``forces_std_max`` (eV/Angstrom) on the valid and test splits.
A parent committee file is fine-tuned member by member (``committee_size`` may then be left out). A run stopped by
``training.wall_time_limit`` returns ``complete: false`` (resubmitting it with its checkpoint continues it),
unless ``wall_time_is_budget`` says the limit was the user's own budget: then reaching it is a normal end.

``test`` settings: ``{"model": "model.pt", "dataset": "dataset.h5", "subset": "all"|"train"|"valid"|"test",
"split": {...}, "indices": [...] | null, "batch_size": 256}``; writes predictions and plots.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from aiida_mlpes.core.runner import TaskError

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
CURVE_FILE = "learning_curve.csv"
CURVE_PLOT = "learning_curves.png"
SPLIT_NAMES = ("train", "valid", "test")


def resolve_split(arrays: Any, split: dict[str, Any] | None) -> dict[str, np.ndarray]:
    """Train/valid/test indices: explicit lists, or a reproducible split of the hashes (default 80/10/10, seed 0)."""
    from aiida_mlpes.core.dataset import split_indices

    split = dict(split or {})
    if any(name in split for name in SPLIT_NAMES):
        missing = [name for name in ("train", "valid") if name not in split]
        if missing:
            raise TaskError(f"split: explicit indices need 'train' and 'valid' (missing {missing})")
        out = {name: np.asarray(split.get(name, []), dtype=np.int64) for name in SPLIT_NAMES}
        for name, idx in out.items():
            if len(idx) and (idx.min() < 0 or idx.max() >= len(arrays)):
                raise TaskError(f"split: {name} indices out of range for {len(arrays)} conformations")
        return out
    unknown = set(split) - {"fractions", "seed"}
    if unknown:
        raise TaskError(f"split: unknown keys {sorted(unknown)}; give 'fractions' and 'seed' or index lists")
    try:
        return split_indices(arrays.hash, split.get("fractions", (0.8, 0.1, 0.1)), int(split.get("seed", 0)))
    except ValueError as exc:
        raise TaskError(f"split: {exc}") from None


def _set_threads(settings: dict[str, Any]) -> None:
    if settings.get("threads"):
        import torch

        torch.set_num_threads(int(settings["threads"]))


def run_train_task(settings: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Runner task ``train`` (see the module docstring)."""
    from aiida_mlpes.core.dataset import read_arrays
    from aiida_mlpes.core.evaluation import compute_metrics, plot_learning_curves, predict
    from aiida_mlpes.core.models import ModelConfig, load_model
    from aiida_mlpes.core.training import Trainer, TrainingConfig, TrainingDivergedError

    workdir = Path(workdir)
    _set_threads(settings)
    try:
        arrays = read_arrays(workdir / settings["dataset"])
        training = TrainingConfig.from_dict(dict(settings.get("training") or {}))
        parent = settings.get("parent_model")
        model_config = None
        if parent is None:
            model_settings = dict(settings.get("model") or {})
            model_settings.setdefault("elements", sorted({int(z) for z in arrays.atomic_numbers}))
            model_config = ModelConfig.from_dict(model_settings)
        split = resolve_split(arrays, settings.get("split"))
        size = _committee_size(settings, workdir / parent if parent else None)
        restart = settings.get("restart_checkpoint")
        if restart:
            if not (workdir / restart).is_file():
                raise TaskError(f"restart checkpoint {restart} not found in the working directory")
            if Path(restart).name != CHECKPOINT_FILE:
                shutil.copyfile(workdir / restart, workdir / CHECKPOINT_FILE)
        trainer = Trainer(
            model_config, training, workdir, parent=workdir / parent if parent else None, committee_size=size
        )
        result = trainer.fit(arrays, split["train"], split["valid"], resume=bool(restart))
    except (ValueError, KeyError, TrainingDivergedError) as exc:
        raise TaskError(str(exc)) from None

    shutil.copyfile(result.best_model, workdir / MODEL_FILE)
    (workdir / Trainer.BEST_MODEL).unlink()
    model = load_model(workdir / MODEL_FILE, device=trainer.device)
    metrics = {}
    spread: dict[str, Any] = {}
    for name in ("valid", "test"):
        if len(split[name]):
            subset = arrays.select(split[name])
            prediction = predict(model, subset, training.eval_batch_size)
            metrics[name] = compute_metrics(prediction, subset)
            if "energy_std" in prediction:
                spread[name] = {
                    "energy_std_mean": float(np.mean(prediction["energy_std"])),
                    "forces_std_max_mean": float(np.mean(prediction.get("forces_std_max", np.nan))),
                }
    plot_learning_curves(workdir / CURVE_FILE, workdir / CURVE_PLOT)
    output: dict[str, Any] = {
        "complete": result.stop_reason != "wall_time" or bool(settings.get("wall_time_is_budget", False)),
        "stop_reason": result.stop_reason,
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "best_valid_loss": result.best_valid_loss,
        "training_wall_time_s": result.wall_time,
        "loss_properties": result.loss_properties,
        "n_conformations": {name: len(idx) for name, idx in split.items()},
        "metrics": metrics,
        "files": {"model": MODEL_FILE, "checkpoint": CHECKPOINT_FILE, "learning_curve": CURVE_FILE},
    }
    if trainer.committee_size > 1:
        output["committee"] = {"size": trainer.committee_size, **spread}
    return output


def _committee_size(settings: dict[str, Any], parent: Path | None) -> int | None:
    """The ``committee_size`` setting checked (an int >= 1); None (or 1) means a single model, or the
    parent committee's size when a committee file is fine-tuned."""
    size = settings.get("committee_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise TaskError(f"committee_size must be an integer >= 1 (1: a single model), got {size!r}")
    if size == 1 and parent is not None:
        from aiida_mlpes.core.models.io import committee_size, read_model_file

        parent_size = committee_size(read_model_file(parent))
        if parent_size > 1:
            raise TaskError(
                f"committee_size 1 but the parent model is a committee of {parent_size}; "
                f"set committee_size to {parent_size} or leave it out"
            )
    return size


def run_test_task(settings: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Runner task ``test``: metrics, predictions (CSV/NPZ) and plots of a model on (a subset of) a dataset."""
    from aiida_mlpes.core.dataset import read_arrays
    from aiida_mlpes.core.evaluation import evaluate_model
    from aiida_mlpes.core.models import ModelFileError, load_model

    workdir = Path(workdir)
    _set_threads(settings)
    try:
        arrays = read_arrays(workdir / settings["dataset"])
        model = load_model(workdir / settings["model"])
        subset = settings.get("subset", "all")
        if settings.get("indices") is not None:
            indices = np.asarray(settings["indices"], dtype=np.int64)
            if len(indices) == 0 or indices.min() < 0 or indices.max() >= len(arrays):
                raise TaskError(f"indices must be non-empty and within 0..{len(arrays) - 1}")
        elif subset == "all":
            indices = np.arange(len(arrays))
        elif subset in SPLIT_NAMES:
            indices = resolve_split(arrays, settings.get("split"))[subset]
            if len(indices) == 0:
                raise TaskError(f"the {subset} split of this dataset is empty")
        else:
            raise TaskError(f"subset must be 'all', 'train', 'valid' or 'test', got {subset!r}")
        data = arrays.select(indices)
        out = evaluate_model(model, data, workdir, batch_size=int(settings.get("batch_size", 256)))
    except (ValueError, KeyError, ModelFileError) as exc:
        raise TaskError(str(exc)) from None
    return {
        "metrics": out["metrics"],
        "n_conformations": len(data),
        "files": sorted(Path(p).name for p in out["files"]),
    }
