"""Stand-in executables that replay real program outputs (from shared/realdata) or inject failures, and a
helper that makes the reference entry points visible to aiida before they are in the installed metadata."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

#: group, name -> import path of every reference plugin.
ENTRY_POINTS = {
    ("aiida.calculations", "mlpes.xtb"): "aiida_mlpes.calculations.xtb:XtbCalculation",
    ("aiida.calculations", "mlpes.orca"): "aiida_mlpes.calculations.orca:OrcaCalculation",
    ("aiida.calculations", "mlpes.gaussian"): "aiida_mlpes.calculations.gaussian:GaussianCalculation",
    ("aiida.calculations", "mlpes.ase"): "aiida_mlpes.calculations.ase:AseCalculation",
    ("aiida.parsers", "mlpes.xtb"): "aiida_mlpes.parsers.xtb:XtbParser",
    ("aiida.parsers", "mlpes.orca"): "aiida_mlpes.parsers.orca:OrcaParser",
    ("aiida.parsers", "mlpes.gaussian"): "aiida_mlpes.parsers.gaussian:GaussianParser",
    ("aiida.parsers", "mlpes.ase"): "aiida_mlpes.parsers.ase:AseParser",
    ("aiida.workflows", "mlpes.reference"): "aiida_mlpes.workflows.reference:ReferenceWorkChain",
    ("aiida.workflows", "mlpes.reference_base"): "aiida_mlpes.workflows.reference:ReferenceBaseWorkChain",
}


def ensure_entry_points() -> None:
    """Add the reference entry points to aiida's cached entry-point table if the installed package metadata
    does not have them yet (editable install made before they were added to pyproject.toml)."""
    from importlib.metadata import EntryPoint, EntryPoints

    import aiida.plugins.entry_point as ep

    current = ep.eps()
    known = {(e.group, e.name) for e in current}
    missing = [
        EntryPoint(name=n, value=v, group=g) for (g, n), v in ENTRY_POINTS.items() if (g, n) not in known
    ]
    if not missing:
        return
    table = EntryPoints(list(current) + missing)
    ep.eps = lambda: table  # the module calls eps() by its global name
    ep.eps_select.cache_clear()
    ep.get_entry_point_from_class.cache_clear()
    ep.is_registered_entry_point.cache_clear()


def install_stand_in(name: str, folder: Path) -> Path:
    """Copy stand-in ``name`` (e.g. ``"replay.py"``) into ``folder`` as an executable run by this Python."""
    import stat
    import sys

    target = Path(folder) / name.replace(".py", "")
    target.write_text(f"#!{sys.executable}\n" + (HERE / name).read_text())
    target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return target
