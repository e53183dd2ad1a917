"""``MlpesRunParser``: base parser for ``aiida-mlpes-run`` tasks.

Reads ``result.json``: a missing file means the task was killed, by the scheduler at its walltime (exit 120,
``ERROR_SCHEDULER_OUT_OF_WALLTIME``, set by the scheduler's own output parser: SLURM State TIMEOUT) or
otherwise (exit 300); ``status: error`` is reported with the task's own message (exit 301); otherwise :meth:`parse_result` of the subclass creates the outputs.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from aiida.engine import ExitCode
from aiida.parsers import Parser

from aiida_mlpes.calculations.base import MlpesRunCalculation


class MlpesRunParser(Parser):
    """Check the task's result.json, then let the subclass attach outputs."""

    def parse(self, **kwargs: Any) -> ExitCode | None:
        self._temporary = kwargs.get("retrieved_temporary_folder")
        retrieved = self.retrieved
        names = retrieved.base.repository.list_object_names()
        if MlpesRunCalculation.RESULT_FILE not in names:
            if self.node.exit_status == self.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME.status:
                # the scheduler's parser saw the walltime kill (SLURM State TIMEOUT): keep its exit code 120
                self.report_walltime_kill()
                return self.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME
            details = ""
            if MlpesRunCalculation.STDOUT_FILE in names:
                tail = retrieved.base.repository.get_object_content(MlpesRunCalculation.STDOUT_FILE)[-2000:]
                details = f"Last output: {tail}"
            return self.exit_codes.ERROR_NO_RESULT.format(details=details)
        result = json.loads(retrieved.base.repository.get_object_content(MlpesRunCalculation.RESULT_FILE))
        # the task's own wall and CPU seconds (programs it ran included), queryable as extras of the job
        for key in ("wall_time_s", "cpu_time_s"):
            if isinstance(result.get(key), (int, float)):
                self.node.base.extras.set(key, float(result[key]))
        if result.get("status") != "ok":
            self.logger.error(result.get("traceback", ""))
            return self.exit_codes.ERROR_TASK_FAILED.format(message=result.get("message", "unknown error"))
        return self.parse_result(result)

    def report_walltime_kill(self) -> None:
        """Log what a job killed at the scheduler's walltime left (subclasses say how to go on)."""
        self.logger.warning("the scheduler killed the task at its walltime before it wrote result.json")

    def temporary_path(self, name: str) -> pathlib.Path | None:
        """Path of a file retrieved to the temporary folder, or None if it was not produced."""
        if self._temporary is None:
            return None
        path = pathlib.Path(self._temporary) / name
        return path if path.exists() else None

    def parse_result(self, result: dict[str, Any]) -> ExitCode | None:
        """Create outputs from ``result`` (the parsed result.json) and the retrieved files."""
        raise NotImplementedError
