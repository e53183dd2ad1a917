"""Pieces of the training loop that need no Trainer state: device choice, optimizer, validation, progress bar."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import torch

from .config import TrainingConfig
from .loss import WeightedLoss


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU; a CUDA request on a machine without CUDA raises ValueError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    return torch.device(device)


def make_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """Adam (AMSGrad by default) with coupled L2 weight decay; the fused kernel when the device supports it
    (about 4x faster than the per-tensor loop for PhysNet's 161 weight tensors on CPU)."""
    kwargs: dict[str, Any] = {
        "lr": config.learning_rate,
        "weight_decay": config.weight_decay,
        "amsgrad": config.amsgrad,
    }
    try:
        return torch.optim.Adam(model.parameters(), fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(model.parameters(), foreach=True, **kwargs)


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module, batches: Sequence[Any], loss_fn: WeightedLoss
) -> tuple[float, dict[str, dict[str, float]]]:
    """Loss and per-property MAE/RMSE of ``model`` over pre-collated batches (collate dicts with targets)."""
    was_training = model.training
    model.eval()
    sums: torch.Tensor | None = None
    need_forces = any(p == "forces" for p in loss_fn.properties)
    for inputs in batches:
        out = model(inputs, compute_forces=need_forces, create_graph=False)
        part = loss_fn.error_sums(loss_fn.errors(out, inputs))
        sums = part if sums is None else sums + part
    model.train(was_training)
    if sums is None:
        raise ValueError("evaluate_loss needs at least one batch")
    loss = loss_fn.total_from_sums(sums)
    values = sums.cpu().numpy()
    metrics = {
        name: {"mae": float(row[1] / row[3]), "rmse": float(math.sqrt(row[2] / row[3]))}
        for name, row in zip(loss_fn.properties, values, strict=True)
    }
    return loss, metrics


def progress_bar(enabled: bool | None, total: int, initial: int) -> Any:
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=not enabled, unit="epoch", dynamic_ncols=True)
