"""The training loop: AMSGrad, exponential LR decay, EMA, gradient clipping, validation, best-model keeping,
early stopping and resumable checkpoints (Asparagus defaults; paper section 3.2).

Files written to ``workdir``: ``checkpoint.pt`` (everything needed to resume bit for bit), ``best_model.pt``
(the EMA weights with the lowest validation loss, a :func:`save_model` file) and ``learning_curve.csv``.

With ``committee_size=K >= 2`` the same loop trains a :class:`~aiida_mlpes.core.models.Committee` of K
members as one batched model: member k starts from seed ``seed + k`` and sees the training set in its own
order (:func:`~aiida_mlpes.core.models.committee.member_orders`); the loss is the sum of the members' losses
(each member's gradient comes from its own loss only), gradients are clipped per member, and Adam and the
EMA act element-wise, so members stay independent. Validation, best-epoch selection and early stopping use
the members' mean loss; logged losses and MAEs are member averages.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from aiida_mlpes.core.models import (
    AtomisticModel,
    Committee,
    ModelConfig,
    build_model,
    load_model,
    save_model,
)
from aiida_mlpes.core.models.committee import (
    check_committee_size,
    composition_signature,
    member_orders,
    unstack_members,
)
from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.core.threads import default_threads

from .components import evaluate_loss, make_optimizer, progress_bar, resolve_device
from .config import TrainingConfig
from .ema import WeightEMA
from .log import CurveLog
from .loss import WeightedLoss
from .targets import DeviceBatches, check_elements, check_finite, energy_scale, fit_element_references

LOGGER = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "aiida-mlpes-training-checkpoint"
CHECKPOINT_VERSION = 1


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


@dataclass
class TrainingResult:
    """Outcome of :meth:`Trainer.fit`. Losses are the weighted smooth-L1 loss; metrics in eV, eV/A, e*A, e."""

    best_model: Path
    checkpoint: Path
    learning_curve: Path
    epochs: int
    best_epoch: int
    best_valid_loss: float
    stop_reason: str
    wall_time: float
    valid_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    loss_properties: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (paths as strings)."""
        data = asdict(self)
        for key in ("best_model", "checkpoint", "learning_curve"):
            data[key] = str(data[key])
        return data


class Trainer:
    """Train a new model (``model_config``) or fine-tune an existing one (``parent``: model file or module).

    Args:
        model_config: hyperparameters of a new model; ignored when ``parent`` is given.
        config: training settings (defaults: the paper's).
        workdir: folder for the checkpoint, best model and learning curve; created if missing.
        parent: a model file (:func:`save_model`) or model to start from (fine-tuning / transfer learning).
            A committee parent fine-tunes member by member.
        committee_size: train a committee of this many members (>= 2) as one batched model; None or 1
            trains one model (or, with a committee parent, as many members as the parent has).
    """

    CHECKPOINT = "checkpoint.pt"
    #: A few bytes naming the epoch of the checkpoint, written right after it (what a job's parser retrieves
    #: to tell a walltime kill with a checkpoint from one without, without moving the checkpoint itself).
    CHECKPOINT_INFO = "checkpoint.json"
    BEST_MODEL = "best_model.pt"
    CURVE = "learning_curve.csv"

    def __init__(
        self,
        model_config: ModelConfig | None = None,
        config: TrainingConfig | None = None,
        workdir: str | Path = ".",
        parent: str | Path | torch.nn.Module | None = None,
        committee_size: int | None = None,
    ) -> None:
        if model_config is None and parent is None:
            raise ValueError("Trainer needs a model_config for a new model or a parent model to fine-tune")
        self.config = config or TrainingConfig()
        self.workdir = Path(workdir)
        self.device = resolve_device(self.config.device)
        if self.device.type == "cpu":
            # a rule, not a timing: the given threads, else the cores the job is given (core/threads.py)
            torch.set_num_threads(int(self.config.threads or default_threads()))
        self.parent = parent
        size = None if committee_size is None or committee_size == 1 else check_committee_size(committee_size)
        self.model: AtomisticModel | Committee
        self.model_config: ModelConfig
        if parent is not None:
            if isinstance(parent, torch.nn.Module):
                import copy

                # a parent module is a model or committee (documented); the cast informs the type checker
                self.model = cast(AtomisticModel, copy.deepcopy(parent).to(self.device))
            else:
                self.model = load_model(parent, device=str(self.device))
            if isinstance(self.model, Committee):
                if size is not None and size != self.model.size:
                    raise ValueError(
                        f"committee_size {size} does not match the parent committee's {self.model.size} members"
                    )
            elif size is not None:
                raise ValueError(
                    f"committee_size {size} with a single-model parent: its {size} copies would be identical "
                    "members with zero spread; fine-tune a committee file, or train a new committee"
                )
            self.model_config = self.model.config
        else:
            assert model_config is not None  # checked at the top
            self.model_config = model_config
            if size is None:
                torch.manual_seed(self.config.seed)
                self.model = build_model(model_config).to(self.device)
            else:
                self.model = Committee.from_config(model_config, size, seed=self.config.seed).to(self.device)
        self.committee_size = self.model.size if isinstance(self.model, Committee) else 1
        self.dtype = torch.float64 if self.model_config.dtype == "float64" else torch.float32
        self.model.train()

    @property
    def checkpoint_path(self) -> Path:
        return self.workdir / self.CHECKPOINT

    # -- set-up -------------------------------------------------------------------------------------------
    def _loss_properties(self, arrays: RaggedArrays) -> list[str]:
        """Properties with a positive weight that the data (and model) provide; errors for energy/forces."""
        weights = self.config.loss_weights
        properties = []
        for name, weight in weights.items():
            if weight <= 0:
                continue
            if name in ("energy", "forces"):
                if getattr(arrays, name) is None:
                    raise ValueError(
                        f"the dataset has no '{name}' but the loss weights {name} with {weight:g}; "
                        f"set loss_weights['{name}'] = 0 to train without it"
                    )
                properties.append(name)
            elif not self.model_config.predict_charges:
                LOGGER.info("loss term %r skipped: the model does not predict charges", name)
            elif name != "charge" and getattr(arrays, name) is None:
                LOGGER.info("loss term %r skipped: the dataset has no %r", name, name)
            else:
                properties.append(name)
        if not properties:
            raise ValueError(f"no loss term applies to this dataset with loss_weights {weights}")
        return properties

    def _check_indices(self, arrays: RaggedArrays, train: np.ndarray, valid: np.ndarray) -> None:
        for name, idx in (("train", train), ("valid", valid)):
            if len(idx) == 0:
                raise ValueError(f"the {name} split is empty")
            if idx.min() < 0 or idx.max() >= len(arrays):
                raise ValueError(f"{name} indices out of range for a dataset of {len(arrays)} conformations")
        overlap = np.intersect1d(train, valid)
        if len(overlap):
            LOGGER.warning("%d conformations are in both the train and valid splits", len(overlap))

    def _prepare(
        self, arrays: RaggedArrays, train: np.ndarray, valid: np.ndarray
    ) -> tuple[list[str], RaggedArrays, RaggedArrays]:
        """Check the input (before any work) and return the loss properties and the two subsets."""
        self._check_indices(arrays, train, valid)
        properties = self._loss_properties(arrays)
        train_arrays, valid_arrays = arrays.select(train), arrays.select(valid)
        for name, part, numbering in (("train", train_arrays, train), ("valid", valid_arrays, valid)):
            try:
                check_elements(part, self.model_config.elements, numbering=numbering)
                fields = ["positions", *[p for p in properties if p != "charge"], "charge"]
                check_finite(part, fields, numbering=numbering)
            except ValueError as exc:
                raise ValueError(f"{name} split: {exc}") from None
        return properties, train_arrays, valid_arrays

    def _train_epoch(
        self, data: DeviceBatches, loss_fn: WeightedLoss, batch_size: int, need_forces: bool
    ) -> list[float]:
        """One pass over the shuffled training set; returns [loss, (loss_p, mae_p) per property], averaged
        over conformations. Only one host synchronisation (at the end)."""
        model, cfg = self.model, self.config
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        sums: torch.Tensor | None = None
        order = self.rng.permutation(len(data))
        orders = None
        if isinstance(model, Committee):
            orders = member_orders(order, self.signature, self.member_rngs)
        for start in range(0, len(data), batch_size):
            if orders is None:
                inputs = data.batch(order[start : start + batch_size])
            else:
                # one collate of the K member blocks (same atoms in every block), split into members
                inputs = unstack_members(
                    data.batch(orders[:, start : start + batch_size].reshape(-1)), len(orders)
                )
            out = model(inputs, compute_forces=need_forces, create_graph=need_forces)
            loss, rows = loss_fn(out, inputs)
            self.optimizer.zero_grad(set_to_none=True)
            # a committee's loss is the mean over members: scale to their sum (each member its own loss)
            (loss * self.committee_size if orders is not None else loss).backward()
            if cfg.max_grad_norm is not None:
                if isinstance(model, Committee):
                    model.clip_grad_norm_(cfg.max_grad_norm)
                else:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm, foreach=True)
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update()
            weighted = torch.cat([loss.detach().reshape(1), rows.reshape(-1)]) * len(inputs["n_atoms"])
            sums = weighted if sums is None else sums + weighted
        if sums is None:
            raise ValueError("the training set is empty")
        return (sums / len(data)).tolist()

    # -- training -----------------------------------------------------------------------------------------
    def fit(
        self,
        arrays: RaggedArrays,
        train_indices: Sequence[int] | np.ndarray,
        valid_indices: Sequence[int] | np.ndarray,
        max_epochs: int | None = None,
        resume: bool = True,
    ) -> TrainingResult:
        """Train on ``arrays[train_indices]``, validate on ``arrays[valid_indices]``.

        ``max_epochs`` overrides ``config.max_epochs``; with ``resume`` an existing checkpoint in ``workdir``
        is continued (same result as an uninterrupted run). Raises ValueError on bad input before training
        and :class:`TrainingDivergedError` when the loss becomes NaN.
        """
        cfg = self.config
        max_epochs = int(max_epochs or cfg.max_epochs)
        train = np.asarray(train_indices, dtype=np.int64).reshape(-1)
        valid = np.asarray(valid_indices, dtype=np.int64).reshape(-1)
        properties, train_arrays, valid_arrays = self._prepare(arrays, train, valid)
        self.workdir.mkdir(parents=True, exist_ok=True)

        refit = cfg.refit_references if cfg.refit_references is not None else self.parent is None
        if refit:
            references = fit_element_references(train_arrays, self.model_config.elements)
            current_scale = self.model.energy_scale
            assert isinstance(current_scale, torch.Tensor)  # a registered buffer
            scale = (
                float(current_scale)
                if self.parent is not None
                else energy_scale(train_arrays, self.model_config.elements, references)
            )
            self.model.set_reference(references, scale)

        model = self.model
        loss_fn = WeightedLoss({p: cfg.loss_weights[p] for p in properties}, cfg.huber_beta)
        self.optimizer = make_optimizer(model, cfg)
        min_factor = cfg.min_learning_rate / cfg.learning_rate
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda epoch: max(cfg.lr_decay**epoch, min_factor)
        )
        self.ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.rng = np.random.default_rng(cfg.seed)
        # committee members: own shuffling streams, independent of the shared one
        self.member_rngs = [np.random.default_rng([cfg.seed, 1, k]) for k in range(self.committee_size)]
        self.signature = composition_signature(train_arrays.n_atoms, train_arrays.atomic_numbers)
        train_data = DeviceBatches(train_arrays, self.device, self.dtype)
        valid_batches = DeviceBatches(valid_arrays, self.device, self.dtype).batches(
            np.arange(len(valid)), cfg.eval_batch_size
        )
        split = {"train": train, "valid": valid}

        state: dict[str, Any] = {
            "epoch": 0,
            "best_loss": math.inf,
            "best_epoch": 0,
            "best_metrics": {},
            "elapsed": 0.0,
            "stop": "",
        }
        curve = CurveLog(self.workdir / self.CURVE, properties)
        self._checkpoint_epoch = None
        self._best_state: dict[str, torch.Tensor] | None = None
        self._best_written = True
        if resume and self.checkpoint_path.exists():
            state = self._load_checkpoint(split)
            self._checkpoint_epoch = state["epoch"]
            curve.truncate(state["epoch"])
            LOGGER.info("resumed from %s at epoch %d", self.checkpoint_path, state["epoch"])
        else:
            for name in (self.CHECKPOINT, self.CHECKPOINT_INFO, self.BEST_MODEL):
                (self.workdir / name).unlink(missing_ok=True)
            curve.start()

        start_time = last_checkpoint = time.perf_counter()
        start_epoch, elapsed_before = state["epoch"], state["elapsed"]
        stop_reason = state["stop"] if state["stop"] == "early_stopping" else ""
        need_forces = "forces" in properties
        eval_model = self.ema.module if self.ema is not None else model
        progress = progress_bar(cfg.progress_bar, max_epochs, start_epoch)
        try:
            for epoch in range(start_epoch + 1, max_epochs + 1):
                if stop_reason:
                    break
                train_stats = self._train_epoch(train_data, loss_fn, cfg.batch_size, need_forces)
                if not math.isfinite(train_stats[0]):
                    raise TrainingDivergedError(self._diverged_message(epoch))
                self.scheduler.step()
                lr = self.optimizer.param_groups[0]["lr"]
                out_of_time = cfg.wall_time_limit is not None and (
                    time.perf_counter() - start_time >= cfg.wall_time_limit
                )

                valid_loss: float | None = None
                valid_metrics: dict[str, dict[str, float]] = {}
                improved = False
                if epoch % cfg.validation_interval == 0 or epoch == max_epochs or out_of_time:
                    valid_loss, valid_metrics = evaluate_loss(eval_model, valid_batches, loss_fn)
                    if not math.isfinite(valid_loss):
                        raise TrainingDivergedError(self._diverged_message(epoch))
                    if valid_loss < state["best_loss"]:
                        improved = True
                        state.update(best_loss=valid_loss, best_epoch=epoch, best_metrics=valid_metrics)
                        self._best_state = {k: v.detach().clone() for k, v in eval_model.state_dict().items()}
                        self._best_written = False
                    progress.set_postfix(valid=f"{valid_loss:.3g}", best=state["best_epoch"], refresh=False)
                elapsed = elapsed_before + time.perf_counter() - start_time
                curve.append(epoch, lr, elapsed, train_stats, valid_loss, valid_metrics, improved)
                progress.update(1)

                patience = cfg.early_stopping_patience
                if (
                    patience is not None
                    and valid_loss is not None
                    and epoch - state["best_epoch"] >= patience
                ):
                    stop_reason = "early_stopping"
                elif out_of_time:
                    stop_reason = "wall_time"
                state.update(epoch=epoch, elapsed=elapsed, stop=stop_reason)
                due = epoch % cfg.checkpoint_interval == 0 and (
                    time.perf_counter() - last_checkpoint >= cfg.checkpoint_min_seconds
                )
                if stop_reason or due or epoch == max_epochs:
                    self._save_checkpoint(state, split)
                    self._write_best(eval_model, state)
                    last_checkpoint = time.perf_counter()
        except KeyboardInterrupt:
            LOGGER.warning("interrupted; the checkpoint of epoch %s can be resumed", self._checkpoint_epoch)
            raise
        finally:
            progress.close()
            curve.close()

        self._write_best(eval_model, state)
        return TrainingResult(
            best_model=self.workdir / self.BEST_MODEL,
            checkpoint=self.checkpoint_path,
            learning_curve=self.workdir / self.CURVE,
            epochs=state["epoch"],
            best_epoch=state["best_epoch"],
            best_valid_loss=state["best_loss"],
            stop_reason=stop_reason or "max_epochs",
            wall_time=state["elapsed"],
            valid_metrics=state["best_metrics"],
            loss_properties=properties,
        )

    # -- persistence --------------------------------------------------------------------------------------
    def _diverged_message(self, epoch: int) -> str:
        kept = (
            f"the last good checkpoint (epoch {self._checkpoint_epoch}) is kept in {self.checkpoint_path}"
            if self._checkpoint_epoch is not None
            else "no checkpoint had been written yet"
        )
        return (
            f"the training loss became NaN/inf in epoch {epoch}; training stopped and {kept}. "
            f"Try a lower learning_rate (now {self.config.learning_rate:g}) or check the data for outliers."
        )

    def _write_best(self, model: torch.nn.Module, state: dict[str, Any]) -> None:
        """Write ``best_model.pt`` from the in-memory best weights (or ``model`` if none was validated yet)."""
        if self._best_written and (self.workdir / self.BEST_MODEL).exists():
            return
        metadata = {
            "best_epoch": state["best_epoch"],
            "best_valid_loss": state["best_loss"],
            "valid_metrics": state["best_metrics"],
            "training_config": self.config.to_dict(),
        }
        if self._best_state is not None:
            import copy

            model = copy.deepcopy(model)
            model.load_state_dict(self._best_state)
        save_model(cast(AtomisticModel | Committee, model), self.workdir / self.BEST_MODEL, metadata=metadata)
        self._best_written = True

    def _save_checkpoint(self, state: dict[str, Any], split: dict[str, np.ndarray]) -> None:
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model_config": self.model_config.to_dict(),
            "training_config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "numpy_rng": self.rng.bit_generator.state,
            "member_rngs": [rng.bit_generator.state for rng in self.member_rngs],
            "committee_size": self.committee_size,
            "torch_rng": torch.get_rng_state(),
            "state": dict(state),
            "best_state": self._best_state,
            "split": {name: torch.as_tensor(idx) for name, idx in split.items()},
        }
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, self.checkpoint_path)
        self._checkpoint_epoch = state["epoch"]
        info = self.workdir / (self.CHECKPOINT_INFO + ".tmp")
        info.write_text(json.dumps({"epoch": int(state["epoch"]), "checkpoint": self.CHECKPOINT}))
        os.replace(info, self.workdir / self.CHECKPOINT_INFO)

    def _load_checkpoint(self, split: dict[str, np.ndarray]) -> dict[str, Any]:
        path = self.checkpoint_path
        try:
            payload = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:
            raise ValueError(
                f"cannot read the checkpoint {path}: it is corrupt or not a checkpoint ({exc})"
            ) from exc
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not an aiida-mlpes training checkpoint")
        if payload["model_config"] != self.model_config.to_dict():
            raise ValueError(f"{path} was written for a different model configuration; use another workdir")
        if int(payload.get("committee_size", 1)) != self.committee_size:
            raise ValueError(
                f"{path} was written for a committee of {payload.get('committee_size', 1)} members, not "
                f"{self.committee_size}; use another workdir"
            )
        for name, idx in split.items():
            if not np.array_equal(payload["split"][name].cpu().numpy(), idx):
                raise ValueError(f"{path} was written for a different {name} split; use another workdir")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.ema is not None and payload["ema"] is not None:
            self.ema.load_state_dict(payload["ema"])
        self.rng.bit_generator.state = payload["numpy_rng"]
        for rng, member_state in zip(self.member_rngs, payload.get("member_rngs", []), strict=False):
            rng.bit_generator.state = member_state
        torch.set_rng_state(payload["torch_rng"].cpu())
        self._best_state = payload.get("best_state")
        self._best_written = False
        return dict(payload["state"])
