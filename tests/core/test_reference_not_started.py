"""A program that never starts (missing executable, not executable) is a program error naming its path, for
every reference reader, not a killed run: what the shell of a job script leaves behind is real here."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from aiida_mlpes.core.reference import common
from aiida_mlpes.core.reference.gaussian import read_gaussian
from aiida_mlpes.core.reference.orca import read_orca
from aiida_mlpes.core.reference.xtb import read_xtb


def run_like_a_job_script(shell: str, executable: Path, stdout: str, stderr: str, workdir: Path) -> int:
    """Run ``executable`` the way AiiDA's job script does (``'exe' 'arg' > 'out' 2> 'err'``) under ``shell``."""
    script = workdir / "job.sh"
    line = f"{shlex.quote(str(executable))} 'mol.inp' > {shlex.quote(stdout)} 2> {shlex.quote(stderr)}\n"
    script.write_text(line)
    return subprocess.run([shell, str(script)], cwd=workdir, check=False).returncode


READERS = {
    "xtb": (lambda d: read_xtb(d, namespace="s00000"), "s00000.out"),
    "orca": (lambda d: read_orca(d, "s00000"), "s00000.out"),
    "gaussian": (lambda d: read_gaussian(d, "s00000"), "s00000.log"),
}


@pytest.mark.parametrize("program", sorted(READERS))
@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_missing_executable_is_a_program_error_naming_the_path(program, shell, tmp_path):
    read, stdout = READERS[program]
    executable = tmp_path / "opt" / "bin" / program
    status = run_like_a_job_script(shell, executable, stdout, "s00000.err", tmp_path)
    assert status == 127
    result = read(tmp_path)
    assert result.status == common.ERROR, result.message
    assert str(executable) in result.message and "could not be started" in result.message


def test_executable_without_permission_is_a_program_error(tmp_path):
    executable = tmp_path / "xtb"
    executable.write_text("#!/bin/sh\necho never\n")  # not chmod +x
    assert run_like_a_job_script("bash", executable, "s00000.out", "s00000.err", tmp_path) == 126
    result = read_xtb(tmp_path, namespace="s00000")
    assert result.status == common.ERROR and "Permission denied" in result.message


def test_a_killed_run_is_still_walltime_and_a_program_that_wrote_output_is_not_misread(tmp_path):
    """The new check only fires when the program wrote nothing: output cut short stays 'walltime', even if
    its stderr mentions a missing file."""
    (tmp_path / "s00000.out").write_text(
        "      -----------------------------------------------------------\n"
        "     |                   =====================                   |\n"
        "     |                           x T B                           |\n"
    )
    (tmp_path / "s00000.err").write_text("cannot open restart: No such file or directory\n")
    assert read_xtb(tmp_path, namespace="s00000").status == common.WALLTIME
    assert common.program_not_started("", "") is None
    assert common.program_not_started("", "bash: line 3: /x/orca: No such file or directory\n") == (
        "bash: line 3: /x/orca: No such file or directory"
    )
