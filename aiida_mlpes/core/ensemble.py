"""Ensembles of K models (different seeds) for query-by-committee uncertainty.

The committee's uncertainty is the standard deviation of its members' predictions (perspective eqs. 23-24,
shared/REFERENCE_NUMBERS.md); SPARC-style selection uses the largest per-atom force deviation of a structure.
Units: eV, eV/Angstrom.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from aiida_mlpes.core.evaluation import predict
from aiida_mlpes.core.models import ModelConfig, load_model
from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.core.training import Trainer, TrainingConfig, TrainingResult


def train_ensemble(
    arrays: RaggedArrays,
    train_indices: Sequence[int] | np.ndarray,
    valid_indices: Sequence[int] | np.ndarray,
    model_config: ModelConfig | None,
    config: TrainingConfig,
    workdir: str | Path,
    n_models: int = 4,
    parent: str | Path | Sequence[str | Path] | None = None,
    resume: bool = True,
) -> list[TrainingResult]:
    """Train ``n_models`` members in ``workdir/member_<k>`` with seeds ``config.seed + k``.

    ``parent`` may be one model file (every member fine-tunes it) or one file per member. Members are trained
    one after the other; an interrupted ensemble resumes member by member.
    """
    if n_models < 1:
        raise ValueError(f"n_models must be >= 1, got {n_models}")
    parents: list[str | Path | None]
    if parent is None or isinstance(parent, (str, Path)):
        parents = [parent] * n_models
    else:
        parents = list(parent)
        if len(parents) != n_models:
            raise ValueError(f"{len(parents)} parent models given for an ensemble of {n_models}")
    results = []
    for k in range(n_models):
        member_config = dataclasses.replace(config, seed=config.seed + k)
        trainer = Trainer(model_config, member_config, Path(workdir) / f"member_{k}", parent=parents[k])
        results.append(trainer.fit(arrays, train_indices, valid_indices, resume=resume))
    return results


def committee_predict(
    models: Sequence[torch.nn.Module | str | Path], arrays: RaggedArrays, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """Mean and standard deviation over the committee for every conformation of ``arrays``.

    Returns ``energy`` / ``energy_std`` (M,), ``forces`` / ``forces_std`` (sum n, 3) and
    ``forces_std_max`` (M,): the largest per-atom force deviation ``max_i sqrt(sum_xyz std^2)`` of each
    conformation; ``dipole`` / ``dipole_std`` when the members predict it. Std uses ``ddof=0``.
    """
    if len(models) < 1:
        raise ValueError("committee_predict needs at least one model")
    members = [load_model(m) if isinstance(m, (str, Path)) else m for m in models]
    predictions = [predict(model, arrays, batch_size=batch_size) for model in members]
    out: dict[str, np.ndarray] = {}
    for key in predictions[0]:
        stack = np.stack([p[key] for p in predictions])
        out[key] = stack.mean(axis=0)
        out[f"{key}_std"] = stack.std(axis=0)
    if "forces_std" in out:
        per_atom = np.linalg.norm(out["forces_std"], axis=1)
        owner = np.repeat(np.arange(len(arrays)), arrays.n_atoms)
        worst = np.zeros(len(arrays))
        np.maximum.at(worst, owner, per_atom)
        out["forces_std_max"] = worst
    return out
