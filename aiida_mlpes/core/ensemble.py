"""Ensembles of K models (different seeds) for query-by-committee uncertainty.

:func:`train_committee` trains the K members in one process as one batched :class:`Committee` (one model
file); :func:`train_ensemble` trains K independent runs one after another (one file per member).

The committee's uncertainty is the standard deviation of its members' predictions (perspective eqs. 23-24,
shared/REFERENCE_NUMBERS.md); SPARC-style selection uses the largest per-atom force deviation of a structure.
Units: eV, eV/Angstrom.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from aiida_mlpes.core.evaluation import predict
from aiida_mlpes.core.models import AtomisticModel, Committee, ModelConfig, load_model
from aiida_mlpes.core.models.committee import check_committee_size
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
    n_models = check_committee_size(n_models)
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


def train_committee(
    arrays: RaggedArrays,
    train_indices: Sequence[int] | np.ndarray,
    valid_indices: Sequence[int] | np.ndarray,
    model_config: ModelConfig | None,
    config: TrainingConfig,
    workdir: str | Path,
    n_models: int = 4,
    parent: str | Path | None = None,
    resume: bool = True,
) -> TrainingResult:
    """Train ``n_models`` (>= 2) members in one process as one batched :class:`Committee` (member k: seed
    ``config.seed + k``, own data order); ``result.best_model`` is one committee file. ``parent`` (a
    committee file of ``n_models`` members) is fine-tuned member by member."""
    size = check_committee_size(n_models)
    trainer = Trainer(model_config, config, workdir, parent=parent, committee_size=size)
    return trainer.fit(arrays, train_indices, valid_indices, resume=resume)


def committee_predict(
    models: Committee | str | Path | Sequence[torch.nn.Module | str | Path],
    arrays: RaggedArrays,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """Mean and standard deviation over the committee for every conformation of ``arrays``.

    ``models`` is a committee (module or file) or a list of models/files (stacked into one committee when
    they share a ModelConfig; every member is evaluated in one batched call). Returns ``energy`` /
    ``energy_std`` (M,), ``forces`` / ``forces_std`` (sum n, 3) and ``forces_std_max`` (M,): the largest
    per-atom force deviation ``max_i sqrt(sum_xyz std^2)`` of each conformation; ``dipole`` / ``dipole_std``
    when the members predict it. Std uses ``ddof=0``.
    """
    if isinstance(models, (str, Path)):
        models = load_model(models)
    if isinstance(models, torch.nn.Module) and not isinstance(models, Committee):
        raise ValueError("committee_predict needs a committee (>= 2 members); got a single model")
    if isinstance(models, Committee):
        return predict(models, arrays, batch_size=batch_size)
    members = [load_model(m) if isinstance(m, (str, Path)) else m for m in cast(Sequence[Any], models)]
    check_committee_size(len(members))
    if not all(isinstance(m, AtomisticModel) for m in members):
        raise ValueError("committee_predict: give one committee, or a list of single models")
    configs = {str(m.config.to_dict()) for m in members}
    if len(configs) == 1:
        return predict(Committee.from_members(members), arrays, batch_size=batch_size)
    predictions = [predict(model, arrays, batch_size=batch_size) for model in members]
    out: dict[str, np.ndarray] = {}
    for key in predictions[0]:
        stack = np.stack([p[key] for p in predictions])
        out[key] = stack.mean(axis=0)
        out[f"{key}_std"] = np.std(stack - stack[:1], axis=0)
    if "forces_std" in out:
        per_atom = np.linalg.norm(out["forces_std"], axis=1)
        owner = np.repeat(np.arange(len(arrays)), arrays.n_atoms)
        worst = np.zeros(len(arrays))
        np.maximum.at(worst, owner, per_atom)
        out["forces_std_max"] = worst
    return out
