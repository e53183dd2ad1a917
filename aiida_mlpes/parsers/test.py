"""Parser of ``mlpes.test``: metrics -> Dict, plots and CSV -> FolderData, predictions -> SinglefileData."""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.engine import ExitCode

from aiida_mlpes.calculations.test import ModelTestCalculation
from aiida_mlpes.parsers.base import MlpesRunParser


class ModelTestParser(MlpesRunParser):
    def parse_result(self, result: dict[str, Any]) -> ExitCode | None:
        if "metrics" not in result:
            return self.exit_codes.ERROR_OUTPUT_MISSING.format(name="metrics in result.json")
        self.out("metrics", orm.Dict(result["metrics"]))
        plots = orm.FolderData()
        for name in (*ModelTestCalculation.PLOTS, *ModelTestCalculation.TABLES):
            path = self.temporary_path(name)
            if path is not None:
                plots.base.repository.put_object_from_file(str(path), name)
        if not plots.base.repository.list_object_names():
            return self.exit_codes.ERROR_OUTPUT_MISSING.format(name="plots")
        self.out("plots", plots)
        path = self.temporary_path(ModelTestCalculation.PREDICTIONS)
        if path is None:
            return self.exit_codes.ERROR_OUTPUT_MISSING.format(name=ModelTestCalculation.PREDICTIONS)
        self.out("predictions", orm.SinglefileData(file=path))
        return None
