"""``mlpes.ase`` parser: the labelled file becomes a PESDataset (source = the job's uuid), failures a Dict.

If the job was killed before ``result.json`` was written (walltime), the structures finished so far are
recovered from the task's progress file and the job exits 400 so the work chain resubmits the rest.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import ExitCode

from aiida_mlpes.calculations.ase import AseCalculation
from aiida_mlpes.calculations.reference import load_structures, n_structures
from aiida_mlpes.core.dataset import read_arrays
from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.core.reference import common
from aiida_mlpes.core.reference.ase_driver import records_to_arrays
from aiida_mlpes.core.reference.task import OUTPUT, PROGRESS, read_progress
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.parsers.base import MlpesRunParser


class AseParser(MlpesRunParser):
    """Attach ``dataset`` and ``failures``; recover partial results after a kill."""

    def parse(self, **kwargs: Any) -> ExitCode | None:
        names = self.retrieved.base.repository.list_object_names()
        self._temporary = kwargs.get("retrieved_temporary_folder")
        if AseCalculation.RESULT_FILE not in names:
            return self._recover()
        return super().parse(**kwargs)

    def _indices(self) -> list[int]:
        inputs = self.node.inputs
        return (
            inputs.indices.get_list() if "indices" in inputs else list(range(n_structures(inputs.structures)))
        )

    def _attach(self, labelled: RaggedArrays | None, failures: dict[str, Any]) -> None:
        parameters = self.node.inputs.parameters.get_dict()
        if labelled is not None and len(labelled):
            labelled.source = np.array([self.node.uuid] * len(labelled), dtype=object)
            labelled.charge = np.full(len(labelled), float(self.node.inputs.charge.value))
            level = AseCalculation.level_of_theory(parameters)
            self.out("dataset", PESDataset.from_arrays(labelled, level_of_theory=level))
        self.out("failures", orm.Dict(failures))

    def parse_result(self, result: dict[str, Any]) -> ExitCode | None:
        failures = {str(i): f for i, f in result.get("failures", {}).items()}
        path = self.temporary_path(OUTPUT)
        labelled = read_arrays(path) if (path is not None and result.get("completed")) else None
        self._attach(labelled, failures)
        if labelled is None:
            return self._all_failed(failures)
        return None

    def _recover(self) -> ExitCode:
        """Killed: rebuild what finished from progress.jsonl; the rest is 'not_run'."""
        indices = self._indices()
        path = self.temporary_path(PROGRESS)
        records = read_progress(path) if path is not None else {}
        arrays = load_structures(self.node.inputs.structures)
        result = records_to_arrays(arrays, records, self.node.inputs.charge.value)
        failures = {str(i): f for i, f in result.failures.items()}
        for i in indices:
            if i not in records:
                failures[str(i)] = {
                    "category": common.NOT_RUN,
                    "message": "never finished (the job was killed)",
                }
        labelled = result.arrays if result.indices else None
        self._attach(labelled, failures)
        return self.exit_codes.ERROR_OUT_OF_WALLTIME.format(
            message=f"{len(result.indices)} of {len(indices)} structures done before the job was killed"
        )

    def _all_failed(self, failures: dict[str, Any]) -> ExitCode:
        from collections import Counter

        from aiida_mlpes.calculations.reference import CATEGORY_EXIT_CODES

        if not failures:
            return self.exit_codes.ERROR_OUTPUT_MISSING.format(name=OUTPUT)
        category = Counter(f["category"] for f in failures.values()).most_common(1)[0][0]
        first = next(f["message"] for f in failures.values() if f["category"] == category)
        if category == common.MISSING_OUTPUT:  # the base CalcJob's 302 message takes a {name}
            return self.exit_codes.ERROR_OUTPUT_MISSING.format(name=f"{OUTPUT} ({first})")
        return getattr(self.exit_codes, CATEGORY_EXIT_CODES.get(category, "ERROR_PROGRAM_FAILED")).format(
            message=f"{len(failures)} structures; e.g. {first}"
        )
