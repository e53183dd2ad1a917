"""``aiida-mlpes``: the user command line (set-up, dataset import/show/export/merge).

Commands that touch the database take ``-p/--profile`` (default: the default profile of ``AIIDA_PATH``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import click

DEFAULT_PROFILE = "mlpes"
COMPUTER = "localhost"


def _load(profile: str | None) -> None:
    from aiida import load_profile

    load_profile(profile, allow_switch=True)


profile_option = click.option(
    "-p", "--profile", default=None, help="AiiDA profile (default: the default profile)."
)


@click.group()
@click.version_option(package_name="aiida-mlpes")
def cli() -> None:
    """Machine-learned potential energy surfaces with AiiDA provenance."""


@cli.command()
@click.option(
    "--profile", default=DEFAULT_PROFILE, show_default=True, help="Name of the profile to create/reuse."
)
@click.option("--xtb", "xtb_path", default=None, help="Path of the xtb executable (default: found on PATH).")
def setup(profile: str, xtb_path: str | None) -> None:
    """Create (or reuse) the embedded default: a presto profile, the localhost computer, and the codes
    ``xtb@localhost`` and ``aiida-mlpes-run@localhost``. Safe to run again."""
    from aiida.manage.configuration import get_config, reset_config

    config = get_config(create=True)
    if profile in config.profile_names:
        click.echo(f"profile '{profile}' exists: reusing it")
    else:
        verdi = shutil.which("verdi") or str(Path(sys.executable).with_name("verdi"))
        subprocess.run(
            [verdi, "presto", "--profile-name", profile, "--use-zeromq", "--non-interactive"], check=True
        )
        click.echo(f"created profile '{profile}' (SQLite storage, ZeroMQ broker)")
        reset_config()  # the profile was written by another process: re-read the configuration
    _load(profile)
    from aiida_mlpes.setup_codes import ensure_codes

    for line in ensure_codes(COMPUTER, xtb_path=xtb_path):
        click.echo(line)


@cli.group()
def dataset() -> None:
    """Import, inspect, export and merge PESDataset nodes."""


@dataset.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["extxyz", "db", "npz", "h5"]),
    default=None,
    help="Default: from the extension.",
)
@click.option("--level-of-theory", default="", help='E.g. "GFN2-xTB" or "PBE-D3BJ/def2-SVP".')
@click.option("--energy-unit", default="eV", show_default=True, help="eV, Hartree, kcal/mol, kJ/mol, ...")
@click.option("--length-unit", default="Angstrom", show_default=True, help="Angstrom, Bohr, nm, ...")
@click.option("--dipole-unit", default="eAngstrom", show_default=True, help="eAngstrom, Debye, eBohr")
@click.option("--label", default="", help="Label of the new node.")
@profile_option
def dataset_import(
    path: Path, fmt, level_of_theory, energy_unit, length_unit, dipole_unit, label, profile
) -> None:
    """Import a file (extxyz, ASE db, npz, or one of our .h5 files) as a stored PESDataset."""
    _load(profile)
    from aiida_mlpes.core.dataset import DatasetError
    from aiida_mlpes.core.dataset_io import import_file
    from aiida_mlpes.data.dataset import PESDataset

    try:
        if fmt == "h5" or (fmt is None and path.suffix in (".h5", ".hdf5")):
            node = PESDataset(file=path)
        else:
            arrays = import_file(
                path, fmt, energy_unit=energy_unit, length_unit=length_unit, dipole_unit=dipole_unit
            )
            node = PESDataset.from_arrays(arrays, level_of_theory=level_of_theory)
    except (DatasetError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    node.label = label or path.name
    node.store()
    click.echo(f"Stored PESDataset<{node.pk}> ({node.uuid}): {node.n_conformations} conformations")


def _get_dataset(identifier: str):
    from aiida.orm import load_node

    from aiida_mlpes.data.dataset import PESDataset

    node = load_node(identifier)
    if not isinstance(node, PESDataset):
        raise click.ClickException(f"node {identifier} is a {type(node).__name__}, not a PESDataset")
    return node


@dataset.command("show")
@click.argument("identifier")
@profile_option
def dataset_show(identifier: str, profile) -> None:
    """Summary of a PESDataset (PK, UUID or label)."""
    _load(profile)
    node = _get_dataset(identifier)
    attrs = node.base.attributes.all
    click.echo(f"PESDataset<{node.pk}> {node.uuid}  label: {node.label!r}")
    for key in (
        "n_conformations",
        "n_atoms_total",
        "elements",
        "fields",
        "level_of_theory",
        "energy_min",
        "energy_max",
    ):
        if key in attrs:
            click.echo(f"  {key:16s} {attrs[key]}")
    creator = node.creator
    click.echo(
        f"  {'created by':16s} {creator.process_label}<{creator.pk}>"
        if creator
        else f"  {'created by':16s} import"
    )


@dataset.command("export")
@click.argument("identifier")
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["extxyz", "db", "npz", "h5"]), default=None)
@profile_option
def dataset_export(identifier: str, output: Path, fmt, profile) -> None:
    """Write a PESDataset to OUTPUT (extxyz, ASE db, npz, or the .h5 file itself)."""
    _load(profile)
    from aiida_mlpes.core.dataset_io import export_file

    node = _get_dataset(identifier)
    if output.exists():
        raise click.ClickException(f"{output} exists")
    if fmt == "h5" or (fmt is None and output.suffix in (".h5", ".hdf5")):
        with node.as_path() as path:
            shutil.copyfile(path, output)
    else:
        export_file(node.get_arrays(), output, fmt, level_of_theory=node.level_of_theory)
    click.echo(f"Wrote {node.n_conformations} conformations to {output}")


@dataset.command("list")
@profile_option
def dataset_list(profile) -> None:
    """All PESDatasets with their size and level of theory."""
    _load(profile)
    from aiida.orm import QueryBuilder

    from aiida_mlpes.data.dataset import PESDataset

    query = QueryBuilder().append(
        PESDataset,
        project=["id", "label", "attributes.n_conformations", "attributes.level_of_theory", "ctime"],
    )
    click.echo(f"{'PK':>6}  {'conformations':>13}  {'level of theory':24s}  label")
    for pk, label, n, level, _ in query.order_by({PESDataset: {"id": "asc"}}).all():
        click.echo(f"{pk:>6}  {n:>13}  {level or '-':24s}  {label}")


@dataset.command("merge")
@click.argument("identifiers", nargs=-1, required=True)
@click.option("--no-dedup", is_flag=True, help="Keep duplicate conformations.")
@click.option("--allow-mixed-levels", is_flag=True, help="Merge datasets of different levels of theory.")
@profile_option
def dataset_merge(identifiers, no_dedup: bool, allow_mixed_levels: bool, profile) -> None:
    """Merge PESDatasets through the merge_datasets calcfunction (recorded in the provenance graph)."""
    _load(profile)
    from aiida import orm

    from aiida_mlpes.calculations.merge import merge_datasets

    nodes = {f"dataset_{i}": _get_dataset(identifier) for i, identifier in enumerate(identifiers)}
    try:
        result = merge_datasets(
            deduplicate=orm.Bool(not no_dedup), allow_mixed_levels=orm.Bool(allow_mixed_levels), **nodes
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    stats = result["statistics"].get_dict()
    click.echo(f"Merged into PESDataset<{result['dataset'].pk}>: {stats}")


if __name__ == "__main__":
    cli()
