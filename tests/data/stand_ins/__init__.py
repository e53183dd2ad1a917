"""Stand-in executables that replay real program outputs (from shared/realdata) or inject failures."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def install_stand_in(name: str, folder: Path) -> Path:
    """Copy stand-in ``name`` (e.g. ``"replay.py"``) into ``folder`` as an executable run by this Python."""
    import stat
    import sys

    target = Path(folder) / name.replace(".py", "")
    target.write_text(f"#!{sys.executable}\n" + (HERE / name).read_text())
    target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return target
