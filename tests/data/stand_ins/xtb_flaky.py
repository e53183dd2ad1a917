"""Stand-in for ``xtb`` that injects failures on chosen structures and runs the real xtb otherwise.

Configured by the JSON file named in ``MLPES_STANDIN_CONFIG``::

    {"xtb": "/usr/bin/xtb", "state_dir": "/tmp/...",
     "scf": {"3": 1000},      # structure 3: real SCC failure (--iterations 2) unless --iterations >= 1000
     "kill": [5],             # structure 5: first time, write half an output and kill the job script (walltime)
     "error": [7]}            # structure 7: always an xtb-style fatal error

The structure number is read from the XYZ comment ``aiida-mlpes structure N`` written by ``mlpes.xtb``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    config = json.loads(Path(os.environ["MLPES_STANDIN_CONFIG"]).read_text())
    xyz = Path(argv[0])
    comment = xyz.read_text().splitlines()[1]
    index = int(comment.rsplit(maxsplit=1)[-1]) if comment.startswith("aiida-mlpes structure") else -1
    args = list(argv)
    if str(index) in config.get("scf", {}):
        given = int(args[args.index("--iterations") + 1]) if "--iterations" in args else 250
        if given < int(config["scf"][str(index)]):
            if "--iterations" in args:
                args[args.index("--iterations") + 1] = "2"
            else:
                args += ["--iterations", "2"]
    if index in config.get("kill", []):
        marker = Path(config["state_dir"]) / f"killed_{index}"
        if not marker.exists():
            marker.write_text("killed once\n")
            print(
                "      -----------------------------------------------------------\n"
                "     |                   x T B                                   |\n"
                "   * xtb version 6.5.1 (stand-in) -- the job is killed here",
                flush=True,
            )
            os.kill(os.getppid(), signal.SIGKILL)  # the job script: what a walltime kill does
            return 137
    if index in config.get("error", []):
        print("[ERROR] Program stopped due to fatal error\n-1- stand-in: injected failure", flush=True)
        print("abnormal termination of xtb", file=sys.stderr, flush=True)
        return 1
    os.execv(config["xtb"], [config["xtb"], *args])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
