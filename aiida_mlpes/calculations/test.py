"""``ModelTestCalculation`` (``mlpes.test``): test a PESModel on a PESDataset with ``aiida-mlpes-run test``.

Outputs: ``metrics`` (Dict: MAE, RMSE, 1-r^2 per property), ``plots`` (FolderData: prediction vs reference,
error histogram, error vs energy) and ``predictions`` (NPZ: reference and predicted arrays; CSV in ``plots``).
Named ``ModelTest...`` so that pytest does not mistake the class for a test case.
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.common.folders import Folder

from aiida_mlpes.calculations.base import MlpesRunCalculation
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.data.model import PESModel

SETTINGS_KEYS = {"subset", "split", "indices", "batch_size"}


class ModelTestCalculation(MlpesRunCalculation):
    """Evaluate a model on a dataset (all of it, one split, or given indices)."""

    TASK = "test"
    DATASET_FILE = "dataset.h5"
    MODEL_FILE = "model.pt"
    PLOTS = ["correlation.png", "error_histogram.png", "error_vs_energy.png"]
    TABLES = ["predictions.csv"]
    PREDICTIONS = "predictions.npz"
    RETRIEVE_TEMPORARY = [*PLOTS, *TABLES, PREDICTIONS]

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.input("model", valid_type=PESModel, help="The model to test.")
        spec.input("dataset", valid_type=PESDataset, help="The labelled reference data.")
        spec.input(
            "settings",
            valid_type=orm.Dict,
            default=lambda: orm.Dict({"subset": "all"}),
            help="'subset' ('all', 'train', 'valid', 'test' with 'split' as for mlpes.train) or 'indices'; "
            "'batch_size'.",
        )
        spec.inputs["metadata"]["options"]["parser_name"].default = "mlpes.test"
        spec.inputs.validator = cls.validate_inputs
        spec.output(
            "metrics", valid_type=orm.Dict, help="MAE, RMSE and 1-r^2 per property (eV, eV/A, e*A, e)."
        )
        spec.output("plots", valid_type=orm.FolderData, help="PNG plots and the per-conformation CSV.")
        spec.output(
            "predictions", valid_type=orm.SinglefileData, help="Reference and predicted arrays (NPZ)."
        )

    @staticmethod
    def validate_inputs(inputs: dict[str, Any], _: Any) -> str | None:
        settings = inputs["settings"].get_dict() if "settings" in inputs else {}
        unknown = set(settings) - SETTINGS_KEYS
        if unknown:
            return f"settings: unknown keys {sorted(unknown)}; allowed: {sorted(SETTINGS_KEYS)}"
        if settings.get("subset", "all") not in ("all", "train", "valid", "test"):
            return f"settings.subset must be 'all', 'train', 'valid' or 'test', got {settings['subset']!r}"
        missing = set(inputs["dataset"].elements) - set(inputs["model"].elements)
        if missing:
            return f"the dataset holds elements {sorted(missing)} that the model was not trained on"
        if "energy" not in inputs["dataset"].field_names:
            return "the dataset has no energies (unlabelled): nothing to compare with"
        return None

    def write_task_inputs(self, folder: Folder) -> dict[str, Any]:
        self.copy_node_file(self.inputs.dataset, self.DATASET_FILE)
        self.copy_node_file(self.inputs.model, self.MODEL_FILE)
        return {"dataset": self.DATASET_FILE, "model": self.MODEL_FILE, **self.inputs.settings.get_dict()}
