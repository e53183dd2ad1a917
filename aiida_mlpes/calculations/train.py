"""``TrainCalculation`` (``mlpes.train``): train a PhysNet/PaiNN model on a PESDataset with ``aiida-mlpes-run train``.

Inputs: ``dataset``, ``settings`` (Dict with ``model``, ``training``, ``split`` and ``committee_size``, see
:mod:`aiida_mlpes.core.training_task`), optional ``parent_model`` (fine-tuning) and optional
``restart_folder`` (the ``remote_folder`` of an earlier run whose checkpoint is continued). Outputs: ``model``
(PESModel, best EMA weights), ``learning_curve`` (CSV), ``metrics`` (Dict: valid/test MAE, RMSE, 1-r^2).
With ``committee_size`` K >= 2 the model output is one committee file of K members trained as one batched
model (query by committee); ``result.committee`` then holds the mean committee spread on valid and test.
GPUs are requested through scheduler options (``metadata.options``) and ``training.device``; no code changes.
"""

from __future__ import annotations

import json
from typing import Any

from aiida import orm
from aiida.common.datastructures import CalcInfo
from aiida.common.folders import Folder

from aiida_mlpes.calculations.base import MlpesRunCalculation
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.data.model import PESModel
from aiida_mlpes.protocols import StageProtocolMixin

SETTINGS_KEYS = {"model", "training", "split", "committee_size"}


class TrainCalculation(StageProtocolMixin, MlpesRunCalculation):
    PROTOCOL_SECTION = "train"

    """Train (or fine-tune, or continue training) one model."""

    TASK = "train"
    DATASET_FILE = "dataset.h5"
    PARENT_FILE = "parent_model.pt"
    MODEL_FILE = "model.pt"
    CHECKPOINT_FILE = "checkpoint.pt"
    #: ``{"epoch": N}`` of the checkpoint, written next to it (retrieved; the checkpoint stays remote).
    CHECKPOINT_INFO = "checkpoint.json"
    CURVE_FILE = "learning_curve.csv"
    CURVE_PLOT = "learning_curves.png"
    RETRIEVE_TEMPORARY = [MODEL_FILE]
    RETRIEVE = [CURVE_FILE, CURVE_PLOT, CHECKPOINT_INFO]
    #: Seconds kept free before the scheduler's wall time to write the last checkpoint and the outputs.
    WALLTIME_MARGIN = 120.0

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.input("dataset", valid_type=PESDataset, help="The labelled dataset to train on.")
        spec.input(
            "settings",
            valid_type=orm.Dict,
            default=lambda: orm.Dict({}),
            help="'model' (ModelConfig fields), 'training' (TrainingConfig fields), 'split' "
            "({'fractions', 'seed'} or explicit 'train'/'valid'/'test' index lists) and 'committee_size' "
            "(int, default 1; K >= 2 trains a committee of K members as one batched model, one file).",
        )
        spec.input(
            "parent_model",
            valid_type=PESModel,
            required=False,
            help="Start from this model's weights (fine-tuning); its reference energies are kept unless "
            "training.refit_references is true.",
        )
        spec.input(
            "restart_folder",
            valid_type=orm.RemoteData,
            required=False,
            help="Remote folder of an earlier mlpes.train run (same inputs) whose checkpoint is continued.",
        )
        spec.inputs["metadata"]["options"]["parser_name"].default = "mlpes.train"
        spec.inputs.validator = cls.validate_inputs
        spec.output(
            "model", valid_type=PESModel, help="The model with the best validation loss (EMA weights)."
        )
        spec.output("learning_curve", valid_type=orm.SinglefileData, help="Per-epoch losses and MAEs (CSV).")
        spec.output(
            "metrics", valid_type=orm.Dict, help="MAE, RMSE and 1-r^2 per property on valid and test."
        )
        spec.output("result", valid_type=orm.Dict, help="Epochs run, best epoch, stop reason, wall time.")
        spec.exit_code(
            400,
            "ERROR_TRAINING_INCOMPLETE",
            message="Training stopped at the wall-time limit after epoch {epoch} (best epoch {best}); the model "
            "output holds the best weights so far. Resubmit with restart_folder to continue.",
        )

    @classmethod
    def get_builder_from_protocol(
        cls,
        code: orm.AbstractCode,
        dataset: PESDataset,
        protocol: str | None = None,
        overrides: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        committee_size: int = 1,
    ):
        """Training on ``dataset`` with the protocol's model and training settings (the ``train`` section of
        ``construct_pes.yaml``); ``committee_size`` K >= 2 trains a committee. ``overrides`` change ``model``,
        ``training`` or ``split``; ``options`` the job's ``metadata.options`` (e.g. a GPU)."""
        from aiida_mlpes.protocols import deep_merge, stage_inputs

        inputs, defaults = stage_inputs(cls.PROTOCOL_SECTION, protocol, overrides)
        builder = cls.get_builder()
        builder.code = code
        builder.dataset = dataset
        builder.settings = orm.Dict({**inputs, "committee_size": int(committee_size)})
        builder.metadata.options = deep_merge(defaults, options or {})
        return builder

    @staticmethod
    def validate_inputs(inputs: dict[str, Any], _: Any) -> str | None:
        settings = inputs["settings"].get_dict() if "settings" in inputs else {}
        unknown = set(settings) - SETTINGS_KEYS
        if unknown:
            return f"settings: unknown keys {sorted(unknown)}; allowed: {sorted(SETTINGS_KEYS)}"
        from aiida_mlpes.core.models import ModelConfig
        from aiida_mlpes.core.training import TrainingConfig

        size = settings.get("committee_size", 1)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            return f"settings.committee_size must be an integer >= 1 (1: a single model), got {size!r}"
        if "parent_model" in inputs:
            parent_size = inputs["parent_model"].committee_size
            if parent_size == 1 and size > 1:
                return (
                    f"settings.committee_size {size} with a single-model parent_model: the members would be "
                    "identical copies with zero spread; give a committee parent or train a new committee"
                )
            if parent_size > 1 and "committee_size" in settings and size != parent_size:
                return f"settings.committee_size {size} does not match the parent committee's {parent_size}"

        try:
            TrainingConfig.from_dict(dict(settings.get("training") or {}))
            if "parent_model" not in inputs:
                model = dict(settings.get("model") or {})
                model.setdefault("elements", _atomic_numbers(inputs["dataset"]))
                config = ModelConfig.from_dict(model)
                missing = set(_atomic_numbers(inputs["dataset"])) - set(config.elements)
                if missing:
                    return f"settings.model.elements lacks elements {sorted(missing)} present in the dataset"
        except (ValueError, TypeError) as exc:
            return f"settings: {exc}"
        restart = inputs.get("restart_folder")
        computer = getattr(inputs.get("code"), "computer", None)
        if restart is not None and computer is not None and restart.computer.uuid != computer.uuid:
            return "restart_folder must be on the computer of the code (its checkpoint is copied remotely)"
        if "parent_model" in inputs:
            missing = set(inputs["dataset"].elements) - set(inputs["parent_model"].elements)
            if missing:
                return f"the dataset holds elements {sorted(missing)} that the parent model does not know"
        fields = inputs["dataset"].field_names
        weights = dict((settings.get("training") or {}).get("loss_weights") or {})
        if "forces" not in fields and weights.get("forces", 50.0) > 0:
            return "the dataset has no forces; set settings.training.loss_weights.forces = 0 to train on energies"
        if "energy" not in fields:
            return "the dataset has no energies (unlabelled); label it before training"
        return None

    def write_task_inputs(self, folder: Folder) -> dict[str, Any]:
        settings = self.inputs.settings.get_dict()
        training = dict(settings.get("training") or {})
        walltime = self.inputs.metadata.options.get("max_wallclock_seconds")
        from_scheduler = bool(walltime) and "wall_time_limit" not in training
        if from_scheduler:
            training["wall_time_limit"] = max(0.9 * walltime - self.WALLTIME_MARGIN, 0.5 * walltime)
        self.copy_node_file(self.inputs.dataset, self.DATASET_FILE)
        task = {
            "dataset": self.DATASET_FILE,
            "model": settings.get("model"),
            "training": training,
            "split": settings.get("split"),
            "committee_size": settings.get("committee_size"),
            "parent_model": None,
            "restart_checkpoint": self.CHECKPOINT_FILE if "restart_folder" in self.inputs else None,
            # a stop at the scheduler-derived limit is unfinished work (exit 400, resubmit to continue);
            # a wall_time_limit the user set is a budget: reaching it is a normal end
            "wall_time_is_budget": not from_scheduler,
        }
        if "parent_model" in self.inputs:
            self.copy_node_file(self.inputs.parent_model, self.PARENT_FILE)
            task["parent_model"] = self.PARENT_FILE
        return task

    def prepare_for_submission(self, folder: Folder) -> CalcInfo:
        calcinfo = super().prepare_for_submission(folder)
        if "restart_folder" in self.inputs:
            remote = self.inputs.restart_folder
            calcinfo.remote_copy_list = [
                (remote.computer.uuid, f"{remote.get_remote_path()}/{name}", name)
                for name in (self.CHECKPOINT_FILE, self.CURVE_FILE)
            ]
        return calcinfo


def checkpoint_epoch(node: orm.CalcJobNode) -> int | None:
    """Epoch of the checkpoint a finished or killed ``mlpes.train`` job left in its remote folder (from the
    retrieved ``checkpoint.json``); None when it wrote none or its folder is gone."""
    if "retrieved" not in node.outputs or "remote_folder" not in node.outputs:
        return None
    retrieved = node.outputs.retrieved
    if TrainCalculation.CHECKPOINT_INFO not in retrieved.base.repository.list_object_names():
        return None
    try:
        info = json.loads(retrieved.base.repository.get_object_content(TrainCalculation.CHECKPOINT_INFO))
        return int(info["epoch"])
    except (ValueError, KeyError, TypeError):
        return None


def _atomic_numbers(dataset: PESDataset) -> list[int]:
    from ase.data import atomic_numbers

    return sorted(atomic_numbers[symbol] for symbol in dataset.elements)
