"""``MergeCalculation`` (``mlpes.merge``): merge PESDatasets as a CalcJob on any computer.

The calcfunction :func:`~aiida_mlpes.calculations.merge.merge_datasets` merges in the engine's process;
this CalcJob does the same work where the data are (e.g. a cluster's scratch for very large datasets).
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.common.folders import Folder

from aiida_mlpes.calculations.base import MlpesRunCalculation
from aiida_mlpes.data.dataset import PESDataset


class MergeCalculation(MlpesRunCalculation):
    """Merge the PESDatasets in ``datasets`` (deduplicated by hash) into ``dataset``."""

    TASK = "merge"
    OUTPUT_FILE = "merged.h5"
    RETRIEVE_TEMPORARY = [OUTPUT_FILE]

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.input_namespace("datasets", valid_type=PESDataset, dynamic=True, help="The datasets to merge.")
        spec.input(
            "deduplicate", valid_type=orm.Bool, default=lambda: orm.Bool(True), help="Drop duplicates."
        )
        spec.input(
            "allow_mixed_levels",
            valid_type=orm.Bool,
            default=lambda: orm.Bool(False),
            help="Merge datasets of different levels of theory or fields.",
        )
        spec.inputs["metadata"]["options"]["parser_name"].default = "mlpes.merge"
        spec.inputs.validator = cls.validate_inputs
        spec.output("dataset", valid_type=PESDataset, help="The merged dataset.")
        spec.output("statistics", valid_type=orm.Dict, help="Counts read, written and dropped as duplicates.")

    @staticmethod
    def validate_inputs(inputs: dict[str, Any], _) -> str | None:
        if len(inputs.get("datasets", {})) < 1:
            return "give at least one dataset in the `datasets` namespace"
        levels = {node.level_of_theory for node in inputs["datasets"].values()}
        if len(levels) > 1 and not inputs["allow_mixed_levels"].value:
            return f"datasets have different levels of theory {sorted(levels)}; set allow_mixed_levels to merge them"
        return None

    def write_task_inputs(self, folder: Folder) -> dict[str, Any]:
        names = []
        for key in sorted(self.inputs.datasets):
            name = f"input_{key}.h5"
            self.copy_node_file(self.inputs.datasets[key], name)
            names.append(name)
        return {
            "inputs": names,
            "output": self.OUTPUT_FILE,
            "deduplicate": self.inputs.deduplicate.value,
            "allow_mixed_levels": self.inputs.allow_mixed_levels.value,
        }
