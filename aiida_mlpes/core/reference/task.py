"""Runner task ``reference_ase``: label a dataset file with an ASE calculator (``aiida-mlpes-run``).

Settings (input.json)::

    {"dataset": "structures.h5", "indices": [0, 3, ...] (optional), "calculator": {"calculator": "tblite",
     "method": "GFN2-xTB"}, "charge": 0, "multiplicity": 1, "output": "labelled.h5",
     "progress": "progress.jsonl", "level_of_theory": "..."}

Writes ``output`` (the successful structures, in input order) and, after every structure, one JSON line to
``progress`` so a job killed by the walltime still gives back what it finished. Returns ``completed``
(input indices, in the order of the output file) and ``failures`` (index -> category, message).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiida_mlpes.core.dataset import read_arrays, write_dataset
from aiida_mlpes.core.reference.ase_driver import label_arrays, records_to_arrays, settings_label
from aiida_mlpes.core.reference.validation import validate_structures
from aiida_mlpes.core.runner import TaskError, set_threads
from aiida_mlpes.core.threads import REFERENCE_THREADS

OUTPUT = "labelled.h5"
PROGRESS = "progress.jsonl"


def read_progress(path: str | Path) -> dict[int, dict[str, Any]]:
    """Per-structure records written so far (a half-written last line is ignored)."""
    records: dict[int, dict[str, Any]] = {}
    path = Path(path)
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        records[int(rec.pop("index"))] = rec
    return records


def run_ase_label_task(settings: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Label ``settings['dataset']`` (or its ``indices``) with the calculator in ``settings['calculator']``."""
    try:
        arrays = read_arrays(workdir / settings["dataset"])
        calc_settings = dict(settings["calculator"])
    except KeyError as exc:
        raise TaskError(f"reference_ase settings miss {exc}") from None
    charge = int(settings.get("charge", 0))
    multiplicity = int(settings.get("multiplicity", 1))
    indices = settings.get("indices")
    indices = list(range(len(arrays))) if indices is None else [int(i) for i in indices]
    try:
        validate_structures(
            arrays.select(indices),
            charge,
            multiplicity,
            min_distance=float(settings.get("min_distance", 0.5)),
        )
    except ValueError as exc:
        raise TaskError(str(exc)) from None
    if not settings.get("threads"):  # else the runner has set them; see REFERENCE_THREADS
        set_threads(REFERENCE_THREADS)

    progress_path = workdir / settings.get("progress", PROGRESS)
    with progress_path.open("w") as progress:

        def on_result(index: int, record: dict[str, Any]) -> None:
            progress.write(json.dumps({"index": index, **record}) + "\n")
            progress.flush()

        try:
            result = label_arrays(arrays, calc_settings, charge, multiplicity, indices, on_result=on_result)
        except ValueError as exc:
            raise TaskError(str(exc)) from None

    if result.indices:
        write_dataset(
            workdir / settings.get("output", OUTPUT),
            result.arrays,
            level_of_theory=settings.get("level_of_theory") or settings_label(calc_settings),
            overwrite=True,
        )
    return {
        "completed": result.indices,
        "failures": {str(i): f for i, f in result.failures.items()},
    }


def recover_from_progress(dataset_path: str | Path, progress_path: str | Path, charge: int = 0):
    """Rebuild the labelled structures from a progress file (after a kill): a ``LabelResult``."""
    return records_to_arrays(read_arrays(dataset_path), read_progress(progress_path), charge)
