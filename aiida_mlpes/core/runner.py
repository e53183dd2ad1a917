"""``aiida-mlpes-run TASK input.json``: the executable behind our own CalcJobs.

A CalcJob writes ``input.json`` (task settings; file names relative to the working directory) and calls
this entry point on the (possibly remote) computer. The task function reads its inputs, calls ``core/``
and writes its outputs to the working directory, where the parser picks them up. Every task writes
``result.json`` with at least ``{"status": "ok"}`` or ``{"status": "error", "message": ...}``, so a failure
is reported with its reason rather than as a missing file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: Task name -> "module:function"; the function takes (settings: dict, workdir: Path) and returns a
#: JSON-serialisable dict merged into result.json. Imported lazily so one task's heavy imports (torch)
#: do not slow down another's.
TASKS: dict[str, str] = {
    "merge": "aiida_mlpes.core.dataset:run_merge_task",
    "run_commands": "aiida_mlpes.core.commands:run_commands_task",
    "reference_ase": "aiida_mlpes.core.reference.task:run_ase_label_task",
    "sample": "aiida_mlpes.core.sampling.task:run_sample_task",
    "train": "aiida_mlpes.core.training_task:run_train_task",
    "test": "aiida_mlpes.core.training_task:run_test_task",
    "characterize": "aiida_mlpes.core.characterize.task:run_characterize_task",
}

RESULT_FILE = "result.json"


class TaskError(RuntimeError):
    """An error the task reports with a clear message (bad input, failed driver ...)."""


def resolve(task: str) -> Callable[[dict[str, Any], Path], dict[str, Any]]:
    """Return the function that implements ``task``."""
    try:
        target = TASKS[task]
    except KeyError:
        raise TaskError(f"unknown task {task!r}; known tasks: {', '.join(sorted(TASKS))}") from None
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def set_threads(n: int) -> None:
    """Limit torch and OpenMP/BLAS threads of this process to ``n``."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    else:
        import torch

        torch.set_num_threads(n)


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, recursively (JSON null)."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, np.ndarray):
        return finite_or_none(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of the programs it ran and waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_task(task: str, input_file: Path, workdir: Path | None = None) -> dict[str, Any]:
    """Run ``task`` with the settings in ``input_file``; write and return ``result.json`` contents."""
    workdir = Path(workdir or input_file.parent)
    start = time.perf_counter()
    cpu_start = _cpu_seconds()
    try:
        settings = json.loads(Path(input_file).read_text())
        if settings.get("threads"):
            set_threads(int(settings["threads"]))
        result = {"status": "ok", **(resolve(task)(settings, workdir) or {})}
    except TaskError as exc:
        result = {"status": "error", "message": str(exc)}
    except Exception as exc:
        result = {
            "status": "error",
            "message": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    result["task"] = task
    result["wall_time_s"] = time.perf_counter() - start
    result["cpu_time_s"] = _cpu_seconds() - cpu_start
    result = finite_or_none(result)  # JSON has no NaN, and AiiDA cannot store it
    (workdir / RESULT_FILE).write_text(json.dumps(result, indent=2, default=str))
    return result


def main(argv: list[str] | None = None) -> int:
    """Console entry point; exit status 0 on success, 1 when the task reported an error."""
    parser = argparse.ArgumentParser(prog="aiida-mlpes-run", description=__doc__)
    parser.add_argument("task", help=f"one of: {', '.join(sorted(TASKS))}")
    parser.add_argument("input", type=Path, help="input.json with the task settings")
    args = parser.parse_args(argv)
    result = run_task(args.task, args.input, Path.cwd())
    if result["status"] != "ok":
        print(f"aiida-mlpes-run {args.task}: {result['message']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
