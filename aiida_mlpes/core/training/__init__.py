"""Training of ML potentials with the Asparagus defaults (paper section 3.2; shared/REFERENCE_NUMBERS.md).

Public API::

    from aiida_mlpes.core.training import TrainingConfig, Trainer, train_model

``Trainer(model_config, config, workdir).fit(arrays, train_indices, valid_indices)`` trains a new model;
``Trainer(parent=path, ...)`` fine-tunes an existing one. Units: eV, Angstrom, e.
"""

from .components import evaluate_loss, make_optimizer, resolve_device
from .config import DEFAULT_LOSS_WEIGHTS, TrainingConfig
from .ema import WeightEMA
from .log import read_curve
from .loss import WeightedLoss
from .targets import energy_scale, fit_element_references
from .trainer import Trainer, TrainingDivergedError, TrainingResult

__all__ = [
    "DEFAULT_LOSS_WEIGHTS",
    "Trainer",
    "TrainingConfig",
    "TrainingDivergedError",
    "TrainingResult",
    "WeightEMA",
    "WeightedLoss",
    "energy_scale",
    "evaluate_loss",
    "fit_element_references",
    "make_optimizer",
    "read_curve",
    "resolve_device",
]
