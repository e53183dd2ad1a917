"""Runner task ``run_commands``: run many program calls of one job from a single process.

A reference CalcJob of a cheap method (xTB on a small molecule takes ~20 ms) spends most of its engine time
on per-call bookkeeping when every structure is its own CodeInfo. In driver mode the CalcJob writes one
settings file with the list of calls (argument lists, never shell strings: the executable comes from the
AiiDA code node, the arguments from our input writers) and each call's input files, and this task writes
those files and runs the calls with :mod:`subprocess`, up to ``processes`` at a time (the cores the job was
given; each program single-threaded). A call whose executable is missing gets the shell's message in its
stderr file and status 127, as in a job script. Outputs land in the same files a CodeInfo would have written, so the
parser is unchanged. Calls start in list order, so a kill mid-batch leaves the finished structures'
outputs in place and the never-started ones without files.

A call may also name the program whose output it leaves (``"parse": {"program": "xtb", "namespace":
"s00000"}``): its output is then parsed right after it ends, by the pure parsers of
:mod:`aiida_mlpes.core.reference`, and the result written as one JSON line (``{"index": k, ...}``) to the
``results`` file, so the job sends back one small file instead of four per structure. A line marking the
call as started (category ``walltime``) comes first, so a call the job's end interrupted counts as tried.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiida_mlpes.core.reference.common import ERROR, WALLTIME, ReferenceResult, result_to_record

#: One line per finished call, flushed as it goes (kept when the job is killed).
PROGRESS_FILE = "commands.progress"
#: Output readers by program: ``reader(directory, namespace=...) -> ReferenceResult``.
READERS = {"xtb": "aiida_mlpes.core.reference.xtb:read_xtb"}
#: Parsed results, one JSON line per call that names its program.
RESULTS_FILE = "results.jsonl"
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def run_commands_task(settings: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Settings: ``commands`` (list of ``{"args": [...], "stdout": name, "stderr": name, "files":
    {name: text}}``; ``files`` optional, written before the call), ``environment`` (variables added to the
    inherited environment) and ``processes`` (calls run at once, default 1). Returns each call's exit
    status, in list order."""
    from aiida_mlpes.core.runner import TaskError

    commands = settings.get("commands")
    if not isinstance(commands, list) or not commands:
        raise TaskError("run_commands needs a non-empty list `commands`")
    processes = settings.get("processes", 1)
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise TaskError(f"run_commands: processes must be an integer >= 1, got {processes!r}")
    for command in commands:
        for name in [command["stdout"], command["stderr"], *command.get("files", {})]:
            if not _PLAIN_NAME.match(str(name)):
                raise TaskError(f"run_commands: {name!r} is not a plain file name")
    environment = {**os.environ, **{str(k): str(v) for k, v in settings.get("environment", {}).items()}}
    statuses: list[int | None] = [None] * len(commands)
    lock = threading.Lock()
    readers = {}
    for command in commands:
        program = command.get("parse", {}).get("program")
        if program is not None and program not in readers:
            if program not in READERS:
                raise TaskError(f"run_commands: no output reader for program {program!r}")
            module, function = READERS[program].split(":")
            readers[program] = getattr(importlib.import_module(module), function)
    results_name = str(settings.get("results", RESULTS_FILE))
    if not _PLAIN_NAME.match(results_name):
        raise TaskError(f"run_commands: {results_name!r} is not a plain file name")

    with (
        open(workdir / PROGRESS_FILE, "a") as progress,
        open(workdir / results_name, "a") if readers else contextlib.nullcontext() as results,
    ):

        def run(index: int) -> None:
            command = commands[index]
            if results is not None and "parse" in command:
                # replaced by the parsed record when the call ends; what stays if the job is killed first
                started = {
                    "index": index,
                    "status": WALLTIME,
                    "message": "started, but the job stopped before",
                }
                with lock:
                    results.write(json.dumps(started) + "\n")
                    results.flush()
            for name, text in command.get("files", {}).items():
                (workdir / name).write_text(text)
            args = [str(a) for a in command["args"]]
            with (
                open(workdir / command["stdout"], "wb") as out,
                open(workdir / command["stderr"], "wb") as err,
            ):
                try:
                    status = subprocess.run(
                        args, cwd=workdir, stdout=out, stderr=err, env=environment
                    ).returncode
                except OSError as exc:
                    # executable missing or not executable: report it as a shell would (message in the
                    # call's stderr, status 127/126), so the parser names the path for every structure
                    err.write(f"{args[0]}: {exc.strerror or exc}\n".encode())
                    status = 127 if isinstance(exc, FileNotFoundError) else 126
            record = None
            if "parse" in command:
                spec = command["parse"]
                try:
                    parsed = readers[spec["program"]](workdir, namespace=spec.get("namespace"))
                except Exception as exc:  # a garbled output file fails this structure, not the job
                    parsed = ReferenceResult(program=spec["program"]).fail(
                        ERROR, f"cannot read the output: {type(exc).__name__}: {exc}"
                    )
                record = json.dumps({"index": index, **result_to_record(parsed)})
            with lock:
                statuses[index] = status
                if results is not None and record is not None:
                    results.write(record + "\n")
                    results.flush()
                progress.write(f"{command['stdout']} {status}\n")
                progress.flush()

        if processes == 1:
            for index in range(len(commands)):
                run(index)
        else:
            # threads only wait for their subprocess; calls are submitted (and so started) in list order
            with ThreadPoolExecutor(max_workers=processes) as pool:
                futures = [pool.submit(run, index) for index in range(len(commands))]
                try:
                    for future in futures:
                        future.result()
                except BaseException:
                    for future in futures:
                        future.cancel()  # calls not started yet stay without files ("not run")
                    raise
    done = [s for s in statuses if s is not None]
    return {"n_commands": len(done), "n_nonzero": sum(1 for s in done if s), "statuses": done}
