"""Idempotent creation of the codes of the embedded default on a computer (``localhost`` by default)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from aiida import orm
from aiida.common.exceptions import NotExistent

XTB_LABEL = "xtb"
RUNNER_LABEL = "aiida-mlpes-run"
#: The aiida-mlpes-run code with default plugin ``mlpes.ase``: the reference code of ASE calculators (tblite, PySCF).
ASE_LABEL = "aiida-mlpes-ase"
ASE_DESCRIPTION = "aiida-mlpes-run as the reference code of ASE calculators (tblite, PySCF)"


def ensure_computer(label: str = "localhost") -> orm.Computer:
    """The ``core.local``/``core.direct`` computer ``label``, created and configured if missing."""
    try:
        computer = orm.load_computer(label)
    except NotExistent:
        computer = orm.Computer(
            label=label,
            hostname="localhost",
            description="This machine",
            transport_type="core.local",
            scheduler_type="core.direct",
            workdir=str(Path.home() / ".aiida_run"),
        ).store()
        computer.set_minimum_job_poll_interval(0.0)
    if not computer.is_user_configured(orm.User.collection.get_default()):
        computer.configure(safe_interval=0.0)
    if computer.transport_type == "core.local" and (computer.get_minimum_job_poll_interval() or 0) > 0.1:
        # a local `ps` costs milliseconds; presto's 1 s adds up to a second per job of engine time
        computer.set_minimum_job_poll_interval(0.1)
    return computer


def _ensure_code(
    label: str, computer: orm.Computer, executable: str, plugin: str | None, description: str
) -> str:
    try:
        code = orm.load_code(f"{label}@{computer.label}")
        if str(code.filepath_executable) != executable:
            return f"code {code.full_label} exists (executable {code.filepath_executable}); not changed"
        return f"code {code.full_label} exists: reusing it"
    except NotExistent:
        code = orm.InstalledCode(
            label=label,
            computer=computer,
            filepath_executable=executable,
            default_calc_job_plugin=plugin,
            description=description,
        )
        if label in (RUNNER_LABEL, ASE_LABEL):
            # The runner is the venv's console script; torch decides its own threading.
            code.prepend_text = f'export PATH="{Path(executable).parent}:$PATH"'
        else:
            code.prepend_text = "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}"
        code.store()
        return f"created code {code.full_label} -> {executable}"


def ensure_codes(computer_label: str = "localhost", xtb_path: str | None = None) -> Iterator[str]:
    """Create the computer and the ``xtb``, ``aiida-mlpes-run`` and ``aiida-mlpes-ase`` codes if missing; yield
    what was done."""
    computer = ensure_computer(computer_label)
    yield f"computer {computer.label}: {computer.transport_type}/{computer.scheduler_type}"
    xtb = xtb_path or shutil.which("xtb")
    xtb = xtb and str(Path(xtb).absolute())
    if xtb is None:
        yield "xtb not found on PATH: code xtb not created (install it: apt-get install xtb)"
    else:
        yield _ensure_code(XTB_LABEL, computer, xtb, "mlpes.xtb", "GFN-xTB (Debian package)")
    runner = str(
        Path(shutil.which("aiida-mlpes-run") or Path(sys.executable).with_name("aiida-mlpes-run")).absolute()
    )
    yield _ensure_code(
        RUNNER_LABEL, computer, runner, None, "aiida-mlpes task runner (sample/train/test/characterize)"
    )
    yield _ensure_code(ASE_LABEL, computer, runner, "mlpes.ase", ASE_DESCRIPTION)


def ensure_ase_code(runner: orm.InstalledCode) -> tuple[orm.InstalledCode, str | None]:
    """The ``aiida-mlpes-ase`` code on the runner's computer (the runner's executable with default plugin
    ``mlpes.ase``, which ``ReferenceWorkChain`` needs for ASE calculators), created if missing; and the line
    saying it was created (None when it existed)."""
    computer = runner.computer
    try:
        return orm.load_code(f"{ASE_LABEL}@{computer.label}"), None
    except NotExistent:
        line = _ensure_code(
            ASE_LABEL,
            computer,
            str(runner.filepath_executable),
            "mlpes.ase",
            ASE_DESCRIPTION,
        )
        return orm.load_code(f"{ASE_LABEL}@{computer.label}"), line
