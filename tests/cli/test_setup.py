"""`aiida-mlpes setup` creates the embedded default once and reuses it on every later run."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path


def run_setup(aiida_path: Path) -> str:
    env = {**os.environ, "AIIDA_PATH": str(aiida_path)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    executable = shutil.which("aiida-mlpes", path=env["PATH"])
    result = subprocess.run(
        [executable, "setup", "--profile", "ci"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def count_entities(aiida_path: Path) -> str:
    env = {**os.environ, "AIIDA_PATH": str(aiida_path)}
    code = (
        "from aiida import load_profile, orm\n"
        "from aiida.manage.configuration import get_config\n"
        "load_profile('ci')\n"
        "print(len(get_config().profile_names), orm.QueryBuilder().append(orm.Computer).count(),"
        " orm.QueryBuilder().append(orm.InstalledCode, project='label').all(flat=True))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    ).stdout.strip()


def test_setup_is_idempotent(tmp_path):
    first = run_setup(tmp_path)
    assert "created profile 'ci'" in first
    assert "created code aiida-mlpes-run@localhost" in first
    second = run_setup(tmp_path)
    assert "profile 'ci' exists: reusing it" in second
    assert "created" not in second
    n_profiles, n_computers, codes = count_entities(tmp_path).split(" ", 2)
    assert (n_profiles, n_computers) == ("1", "1")
    assert sorted(ast.literal_eval(codes)) == sorted(
        ["aiida-mlpes-run", "aiida-mlpes-ase"] + (["xtb"] if shutil.which("xtb") else [])
    )
