"""The science layer must import without AiiDA (notebooks, remote workers without a profile)."""

import pkgutil
import subprocess
import sys

import aiida_mlpes.core


def test_core_does_not_import_aiida():
    modules = [m.name for m in pkgutil.walk_packages(aiida_mlpes.core.__path__, "aiida_mlpes.core.")]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'aiida' or m.startswith('aiida.'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len(modules) >= 4
