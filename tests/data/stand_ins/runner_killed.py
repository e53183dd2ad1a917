"""Stand-in for ``aiida-mlpes-run`` whose first run of ``reference_ase`` is killed like a walltime kill.

It runs the real task code, but the first time (no marker file in ``MLPES_STANDIN_STATE``) it kills its job
script after ``MLPES_KILL_AFTER`` structures, before ``result.json`` is written: only progress.jsonl is left.
Later runs are the plain ``aiida-mlpes-run``.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from aiida_mlpes.core import runner

    marker = Path(os.environ["MLPES_STANDIN_STATE"]) / "killed_once"
    if marker.exists():
        return runner.main(argv)
    marker.write_text("killed\n")
    kill_after = int(os.environ.get("MLPES_KILL_AFTER", "1"))
    from aiida_mlpes.core.reference import ase_driver

    original = ase_driver.label_arrays

    def label_and_die(*args, **kwargs):
        on_result = kwargs.get("on_result")
        count = {"n": 0}

        def wrapped(index, record):
            on_result(index, record)
            count["n"] += 1
            if count["n"] >= kill_after:
                os.kill(os.getppid(), signal.SIGKILL)  # the job script, as a walltime kill would
                os._exit(137)

        kwargs["on_result"] = wrapped
        return original(*args, **kwargs)

    import aiida_mlpes.core.reference.task as task

    task.label_arrays = label_and_die
    return runner.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
