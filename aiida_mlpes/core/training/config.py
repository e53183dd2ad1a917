"""Typed training settings with the Asparagus defaults (paper section 3.2, shared/REFERENCE_NUMBERS.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: Loss weights of the paper: energy 1, forces 50, dipole 25, atomic-charge sum 1.
DEFAULT_LOSS_WEIGHTS = {"energy": 1.0, "forces": 50.0, "dipole": 25.0, "charge": 1.0, "atomic_charges": 0.0}
#: Properties the loss knows; ``charge`` compares the sum of predicted atomic charges with the total charge.
LOSS_PROPERTIES = tuple(DEFAULT_LOSS_WEIGHTS)


@dataclass
class TrainingConfig:
    """Settings of one training run. Units: energies eV, forces eV/Angstrom, times in seconds.

    Attributes:
        max_epochs: epochs to train (an epoch is one pass over the training set).
        batch_size: conformations per optimizer step.
        eval_batch_size: conformations per batch when validating (no effect on results).
        learning_rate: initial AMSGrad learning rate.
        weight_decay: L2 weight decay of the optimizer (Adam's coupled form, as in Asparagus).
        amsgrad: use the AMSGrad variant of Adam.
        lr_decay: learning-rate factor applied after every epoch (exponential schedule).
        min_learning_rate: the schedule never goes below this.
        ema_decay: decay of the exponential moving average of the weights; 0 disables the EMA.
        max_grad_norm: clip the global gradient norm to this value; None disables clipping.
        loss_weights: weight of each property in the smooth-L1 loss; a property whose weight is 0 is
            ignored. ``dipole``, ``charge`` and ``atomic_charges`` count only when the data hold them
            (``charge`` defaults to neutral molecules) and the model predicts charges.
        huber_beta: transition point of the smooth-L1 loss (in the property's units).
        validation_interval: validate (with the EMA weights) every this many epochs.
        early_stopping_patience: stop after this many epochs without a better validation loss; None: never.
        checkpoint_interval: write the resumable checkpoint (and the best model so far) every this many epochs,
            at the end, and when training stops early.
        checkpoint_min_seconds: skip an interval checkpoint if the last one is younger than this (fast epochs
            would otherwise spend their time writing files); 0 writes every ``checkpoint_interval``.
        seed: seeds weight initialisation and the shuffling of the training set.
        device: "cpu", "cuda", "cuda:N" or "auto" (CUDA when available).
        wall_time_limit: stop cleanly (checkpoint written, resumable) after this many seconds; None: no limit.
        refit_references: fit per-element reference energies on the training set. None means yes for a new
            model and no when fine-tuning (the parent's references are kept).
        progress_bar: show a tqdm progress bar; None shows it only when stderr is a terminal.
        threads: torch intra-op threads on CPU; None: torch's setting capped by the cores the job is given
            (OMP_NUM_THREADS, SLURM_CPUS_PER_TASK or the CPU affinity; see core/threads.py).
    """

    max_epochs: int = 1000
    batch_size: int = 32
    eval_batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    amsgrad: bool = True
    lr_decay: float = 0.999
    min_learning_rate: float = 0.0
    ema_decay: float = 0.99
    max_grad_norm: float | None = 1000.0
    loss_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LOSS_WEIGHTS))
    huber_beta: float = 1.0
    validation_interval: int = 5
    early_stopping_patience: int | None = 250
    checkpoint_interval: int = 5
    checkpoint_min_seconds: float = 30.0
    seed: int = 0
    device: str = "auto"
    wall_time_limit: float | None = None
    refit_references: bool | None = None
    progress_bar: bool | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        weights = dict(DEFAULT_LOSS_WEIGHTS)
        unknown = set(self.loss_weights) - set(LOSS_PROPERTIES)
        if unknown:
            raise ValueError(
                f"loss_weights: unknown properties {sorted(unknown)}; known: {', '.join(LOSS_PROPERTIES)}"
            )
        weights.update({k: float(v) for k, v in self.loss_weights.items()})
        self.loss_weights = weights
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        positive_int = (
            "max_epochs",
            "batch_size",
            "eval_batch_size",
            "validation_interval",
            "checkpoint_interval",
        )
        for name in positive_int:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainingConfig.{name} must be a positive integer, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"TrainingConfig.learning_rate must be > 0, got {self.learning_rate}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"TrainingConfig.lr_decay must be in (0, 1], got {self.lr_decay}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"TrainingConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.weight_decay < 0 or self.huber_beta <= 0:
            raise ValueError("TrainingConfig.weight_decay must be >= 0 and huber_beta > 0")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"TrainingConfig.max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        if any(w < 0 for w in self.loss_weights.values()):
            raise ValueError(f"TrainingConfig.loss_weights must be >= 0, got {self.loss_weights}")
        if not any(w > 0 for w in self.loss_weights.values()):
            raise ValueError("TrainingConfig.loss_weights: at least one weight must be > 0")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError("TrainingConfig.early_stopping_patience must be >= 1 or None")
        if self.checkpoint_min_seconds < 0:
            raise ValueError("TrainingConfig.checkpoint_min_seconds must be >= 0")
        if self.wall_time_limit is not None and self.wall_time_limit <= 0:
            raise ValueError("TrainingConfig.wall_time_limit must be > 0 or None")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(
                f"TrainingConfig.device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {self.device!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary of all settings."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        """Build from a dictionary; unknown keys raise ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown training settings {sorted(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)
