"""Runner task ``run_commands``: run many program calls of one job in sequence from a single process.

A reference CalcJob of a cheap method (xTB on a small molecule takes ~20 ms) spends most of its engine time
on per-call bookkeeping when every structure is its own CodeInfo. In driver mode the CalcJob writes the
same per-structure input files and the list of calls (argument lists, never shell strings: the executable
comes from the AiiDA code node, the arguments from our input writers), and this task runs them one after
another with :func:`subprocess.run`. Outputs land in the same files a CodeInfo would have written, so the
parser is unchanged, and a kill mid-batch leaves the finished structures' outputs in place.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

#: One line per finished call, flushed as it goes (kept when the job is killed).
PROGRESS_FILE = "commands.progress"


def run_commands_task(settings: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Settings: ``commands`` (list of ``{"args": [...], "stdout": name, "stderr": name}``) and
    ``environment`` (variables added to the inherited environment). Returns each call's exit status."""
    from aiida_mlpes.core.runner import TaskError

    commands = settings.get("commands")
    if not isinstance(commands, list) or not commands:
        raise TaskError("run_commands needs a non-empty list `commands`")
    environment = {**os.environ, **{str(k): str(v) for k, v in settings.get("environment", {}).items()}}
    statuses: list[int] = []
    with open(workdir / PROGRESS_FILE, "a") as progress:
        for command in commands:
            args = [str(a) for a in command["args"]]
            with (
                open(workdir / command["stdout"], "wb") as out,
                open(workdir / command["stderr"], "wb") as err,
            ):
                try:
                    status = subprocess.run(
                        args, cwd=workdir, stdout=out, stderr=err, env=environment
                    ).returncode
                except OSError as exc:  # executable missing or not executable: nothing else can run either
                    raise TaskError(f"cannot run {args[0]}: {exc}") from exc
            statuses.append(status)
            progress.write(f"{command['stdout']} {status}\n")
            progress.flush()
    return {"n_commands": len(statuses), "n_nonzero": sum(1 for s in statuses if s), "statuses": statuses}
