"""Parser of ``mlpes.sample``: samples -> PESDataset, trajectory -> ArrayData, result.json -> summary Dict.

A driver failure (the task reports an error but wrote the samples collected until then) still outputs
them, with exit code 410; any other task error is exit code 301 from the base parser.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import ExitCode

from aiida_mlpes.calculations.base import MlpesRunCalculation
from aiida_mlpes.calculations.sample import SampleCalculation
from aiida_mlpes.core.dataset import DatasetError
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.parsers.base import MlpesRunParser


class SampleParser(MlpesRunParser):
    def parse(self, **kwargs: Any) -> ExitCode | None:
        exit_code = super().parse(**kwargs)
        if exit_code is None or exit_code.status != self.exit_codes.ERROR_TASK_FAILED.status:
            return exit_code
        if self.temporary_path(SampleCalculation.SAMPLES_FILE) is None:
            return exit_code  # nothing was sampled: bad input or a failure before the first sample
        result = json.loads(
            self.retrieved.base.repository.get_object_content(MlpesRunCalculation.RESULT_FILE)
        )
        problem = self._attach_outputs(result)
        return problem or self.exit_codes.ERROR_DRIVER_FAILED.format(message=result.get("message", ""))

    def parse_result(self, result: dict[str, Any]) -> ExitCode | None:
        if self.temporary_path(SampleCalculation.SAMPLES_FILE) is None:
            return self.exit_codes.ERROR_OUTPUT_MISSING.format(name=SampleCalculation.SAMPLES_FILE)
        return self._attach_outputs(result)

    def _attach_outputs(self, result: dict[str, Any]) -> ExitCode | None:
        try:
            self.out("dataset", PESDataset(file=self.temporary_path(SampleCalculation.SAMPLES_FILE)))
        except (DatasetError, OSError) as exc:
            return self.exit_codes.ERROR_OUTPUT_INVALID.format(message=str(exc))
        path = self.temporary_path(SampleCalculation.TRAJECTORY_FILE)
        if path is not None:
            trajectory = orm.ArrayData()
            with np.load(path) as data:
                for name in data.files:
                    trajectory.set_array(name, data[name])
            self.out("trajectory", trajectory)
        self.out("summary", orm.Dict({k: v for k, v in result.items() if k not in ("status", "traceback")}))
        return None
