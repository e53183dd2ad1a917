"""Base parser for the batched reference CalcJobs (``mlpes.xtb``, ``mlpes.orca``, ``mlpes.gaussian``).

Reads every structure's files with the pure parsers of :mod:`aiida_mlpes.core.reference`, returns the
successful ones as one PESDataset (source = the job's uuid) and lists the others with their failure
category in the ``failures`` Dict. Structures without any file after the last one that has files were
never started (``not_run``): the job was killed (walltime) and exits 400 so the work chain resubmits them.
"""

from __future__ import annotations

import collections
import contextlib
import json
import pathlib
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import ExitCode
from aiida.parsers import Parser

from aiida_mlpes.calculations.reference import (
    CATEGORY_EXIT_CODES,
    DRIVER_RESULTS,
    load_structures,
    n_structures,
)
from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.core.reference import common
from aiida_mlpes.core.reference.common import ReferenceResult
from aiida_mlpes.data.dataset import PESDataset

#: Largest deviation (Angstrom) between input positions and those echoed by the program.
POSITION_TOLERANCE = 1e-3


def results_to_arrays(
    arrays: RaggedArrays, results: Sequence[ReferenceResult], charge: int, source: str
) -> tuple[RaggedArrays | None, list[int]]:
    """The successful ``results`` (one per conformation of ``arrays``) as labelled RaggedArrays.

    Positions are the input ones (exact); dipole and atomic charges are kept only if every successful
    structure has them. Returns the arrays (None if nothing succeeded) and the positions ``k`` kept.
    """
    ok = [k for k, r in enumerate(results) if r.ok]
    if not ok:
        return None, ok
    out = arrays.select(ok)
    good = [results[k] for k in ok]
    out.energy = np.array([r.energy for r in good], dtype=float)
    out.forces = np.concatenate([np.asarray(r.forces, dtype=float).reshape(-1, 3) for r in good])
    out.dipole = (
        np.array([r.dipole for r in good], dtype=float) if all(r.dipole is not None for r in good) else None
    )
    if all(r.atomic_charges is not None for r in good):
        out.atomic_charges = np.concatenate([np.asarray(r.atomic_charges, dtype=float) for r in good])
    else:
        out.atomic_charges = None
    out.charge = np.full(len(ok), float(charge))
    out.source = np.array([source] * len(ok), dtype=object)
    return out, ok


def check_consistency(result: ReferenceResult, numbers: np.ndarray, positions: np.ndarray) -> None:
    """Fail ``result`` if the program echoed other atoms or positions than the input (a mixed-up file)."""
    if not result.ok:
        return
    if result.forces is not None and np.asarray(result.forces).shape != (len(numbers), 3):
        result.fail(
            common.ERROR, f"forces for {len(result.forces)} atoms, but the structure has {len(numbers)}"
        )
        return
    if result.numbers is not None and len(result.numbers) == len(numbers):
        if not np.array_equal(result.numbers, numbers):
            result.fail(common.ERROR, "the output belongs to other atoms than the input structure")
            return
        if result.positions is not None:
            dev = float(np.abs(np.asarray(result.positions) - positions).max())
            if dev > POSITION_TOLERANCE:
                result.fail(common.ERROR, f"the output geometry differs from the input by {dev:.3g} Angstrom")


def read_driver_results(path: pathlib.Path) -> dict[int, dict[str, Any]] | None:
    """Records of the driver's results file by structure position ``k`` (None when there is no file); the
    last line of a structure wins (a call's "started" line comes before its result), a half-written last
    line (killed job) is ignored."""
    if not path.is_file():
        return None
    records: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        records[int(record.pop("index"))] = record
    return records


class ReferenceParser(Parser):
    """Parse a batch of program runs; subclasses implement :meth:`read_structure`."""

    def read_structure(self, folder: pathlib.Path, name: str, parameters: dict[str, Any]) -> ReferenceResult:
        """Parse the files of structure ``name`` in ``folder``."""
        raise NotImplementedError

    @contextlib.contextmanager
    def _files(self, kwargs: dict[str, Any]) -> Iterator[pathlib.Path]:
        temporary = kwargs.get("retrieved_temporary_folder")
        if (
            temporary is not None
            and pathlib.Path(temporary).is_dir()
            and any(pathlib.Path(temporary).iterdir())
        ):
            yield pathlib.Path(temporary)
            return
        with tempfile.TemporaryDirectory() as tmp:
            self.retrieved.base.repository.copy_tree(tmp)
            yield pathlib.Path(tmp)

    def parse(self, **kwargs: Any) -> ExitCode | None:
        calc = self.node
        inputs = calc.inputs
        indices = (
            inputs.indices.get_list() if "indices" in inputs else list(range(n_structures(inputs.structures)))
        )
        arrays = load_structures(inputs.structures, indices)
        parameters = inputs.parameters.get_dict()
        name_format = calc.process_class.NAME_FORMAT
        names = [name_format.format(k) for k in range(len(indices))]

        program = calc.process_class.PROGRAM
        with self._files(kwargs) as folder:
            records = read_driver_results(folder / DRIVER_RESULTS)
            if records is not None:  # parsed by the driver process on the computer
                present = [k in records for k in range(len(names))]
            else:
                existing = {p.name for p in folder.iterdir()}
                present = [any(f.startswith(f"{n}.") for f in existing) for n in names]
            last = max((k for k, p in enumerate(present) if p), default=-1)
            results: list[ReferenceResult] = []
            for k, name in enumerate(names):
                if not present[k]:
                    status = common.NOT_RUN if k > last else common.MISSING_OUTPUT
                    message = (
                        "never started (the job stopped before)" if k > last else "no output file was written"
                    )
                    results.append(ReferenceResult(program=program).fail(status, message))
                    continue
                if records is not None:
                    result = common.result_from_record(program, records[k])
                else:
                    result = self.read_structure(folder, name, parameters)
                sl = arrays.atom_slice(k)
                check_consistency(result, arrays.atomic_numbers[sl], arrays.positions[sl])
                results.append(result)

        failures = {
            str(indices[k]): {"category": r.status, "message": r.message}
            for k, r in enumerate(results)
            if not r.ok
        }
        labelled, ok = results_to_arrays(arrays, results, inputs.charge.value, calc.uuid)
        if labelled is not None:
            level = parameters.get("level_of_theory") or calc.process_class.level_of_theory(parameters)
            self.out("dataset", PESDataset.from_arrays(labelled, level_of_theory=level))
        self.out("failures", orm.Dict(failures))
        for index, failure in list(failures.items())[:20]:
            self.logger.warning(f"structure {index}: {failure['category']}: {failure['message']}")
        return self.exit_code(results, failures, ok)

    def exit_code(
        self, results: list[ReferenceResult], failures: dict[str, Any], ok: list[int]
    ) -> ExitCode | None:
        """0 unless the job stopped early (400) or no structure succeeded (code of the commonest failure)."""
        not_run = [i for i, f in failures.items() if f["category"] == common.NOT_RUN]
        if not_run or self.node.exit_status == 120:
            return self.exit_codes.ERROR_OUT_OF_WALLTIME.format(
                message=f"{len(ok)} of {len(results)} structures done, {len(not_run)} never started"
            )
        if ok:
            return None
        counts = collections.Counter(f["category"] for f in failures.values())
        category = counts.most_common(1)[0][0]
        first = next(f["message"] for f in failures.values() if f["category"] == category)
        label = CATEGORY_EXIT_CODES.get(category, "ERROR_PROGRAM_FAILED")
        return getattr(self.exit_codes, label).format(message=f"{len(failures)} structures; e.g. {first}")
