"""Parser of ``mlpes.merge``: the merged file becomes a PESDataset, the counts a Dict."""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.engine import ExitCode

from aiida_mlpes.calculations.merge_job import MergeCalculation
from aiida_mlpes.core.dataset import DatasetError
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.parsers.base import MlpesRunParser


class MergeParser(MlpesRunParser):
    def parse_result(self, result: dict[str, Any]) -> ExitCode | None:
        path = self.temporary_path(MergeCalculation.OUTPUT_FILE)
        if path is None:
            return self.exit_codes.ERROR_OUTPUT_MISSING.format(name=MergeCalculation.OUTPUT_FILE)
        try:
            self.out("dataset", PESDataset(file=path))
        except DatasetError as exc:
            return self.exit_codes.ERROR_OUTPUT_INVALID.format(message=str(exc))
        self.out("statistics", orm.Dict(result["statistics"]))
        return None
