"""``aiida-mlpes``: the user command line (set-up; build a PES from a structure file and report on it:
``build`` in :mod:`aiida_mlpes.cli_build`, ``report`` in :mod:`aiida_mlpes.build_report`; datasets: import,
show, export, list, merge; models: list, show, export, lineage, retrain).

Commands that touch the database take ``-p/--profile`` (default: the profile already loaded, else the default
profile of ``AIIDA_PATH``). A node that does not exist or has the wrong type is one line on stderr and exit
status 1, never a traceback.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import click

from aiida_mlpes.build_report import report
from aiida_mlpes.cli_build import build
from aiida_mlpes.cli_export import torchscript_options, write_torchscript

DEFAULT_PROFILE = "mlpes"
COMPUTER = "localhost"


def _load(profile: str | None) -> None:
    from aiida import load_profile
    from aiida.manage import get_manager

    if profile is None and get_manager().get_profile() is not None:
        return  # called in-process with a profile loaded (tests, verdi shell): keep it
    load_profile(profile, allow_switch=True)


def _get_node(identifier: str, cls: type, kind: str):
    """The node with this PK, UUID or label, which must be a ``cls``; else a one-line ClickException."""
    from aiida.common.exceptions import MultipleObjectsError, NotExistent
    from aiida.orm import load_node

    try:
        node = load_node(identifier)
    except NotExistent:
        raise click.ClickException(f"no node with PK, UUID or label {identifier!r}") from None
    except MultipleObjectsError:
        raise click.ClickException(f"{identifier!r} matches several nodes: give the PK or UUID") from None
    except ValueError as exc:
        raise click.ClickException(f"{identifier!r} is not a node identifier: {exc}") from None
    if not isinstance(node, cls):
        raise click.ClickException(f"node {identifier} is a {type(node).__name__}, not a {kind}")
    return node


profile_option = click.option(
    "-p", "--profile", default=None, help="AiiDA profile (default: the default profile)."
)


@click.group()
@click.version_option(package_name="aiida-mlpes")
def cli() -> None:
    """Machine-learned potential energy surfaces with AiiDA provenance."""


cli.add_command(build)
cli.add_command(report)


@cli.command()
@click.option(
    "--profile", default=DEFAULT_PROFILE, show_default=True, help="Name of the profile to create/reuse."
)
@click.option("--xtb", "xtb_path", default=None, help="Path of the xtb executable (default: found on PATH).")
def setup(profile: str, xtb_path: str | None) -> None:
    """Create (or reuse) the embedded default: a presto profile, the localhost computer, and the codes
    ``xtb@localhost``, ``aiida-mlpes-run@localhost`` and ``aiida-mlpes-ase@localhost`` (aiida-mlpes-run with default
    plugin mlpes.ase, for tblite and PySCF references). Safe to run again."""
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
    from aiida_mlpes.data.dataset import PESDataset

    return _get_node(identifier, PESDataset, "PESDataset")


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


@cli.group()
def model() -> None:
    """List, inspect, export, trace and retrain PESModel nodes (trained potentials)."""


def _get_model(identifier: str):
    from aiida_mlpes.data.model import PESModel

    return _get_node(identifier, PESModel, "PESModel")


@model.command("list")
@profile_option
def model_list(profile) -> None:
    """All PESModels: architecture, elements, size and the process that made them."""
    _load(profile)
    from aiida.common.links import LinkType
    from aiida.orm import ProcessNode, QueryBuilder

    from aiida_mlpes.data.model import PESModel

    models = QueryBuilder().append(
        PESModel,
        tag="model",
        project=["id", "label", "attributes.architecture", "attributes.elements", "attributes.n_parameters"],
    )
    creators = QueryBuilder().append(PESModel, tag="model", project="id")
    creators.append(
        ProcessNode,
        with_outgoing="model",
        edge_filters={"type": LinkType.CREATE.value},
        project=["id", "attributes.process_label"],
    )
    made_by = {pk: f"{label}<{c_pk}>" for pk, c_pk, label in creators.all()}
    click.echo(
        f"{'PK':>6}  {'architecture':12s}  {'elements':12s}  {'parameters':>10}  {'created by':24s}  label"
    )
    for pk, label, arch, elements, n_par in models.order_by({"model": {"id": "asc"}}).all():
        made = made_by.get(pk, "import")
        click.echo(f"{pk:>6}  {arch:12s}  {','.join(elements):12s}  {n_par:>10}  {made:24s}  {label}")


@model.command("show")
@click.argument("identifier")
@profile_option
def model_show(identifier: str, profile) -> None:
    """Summary of a PESModel (PK, UUID or label): hyperparameters, training result, package versions."""
    _load(profile)
    node = _get_model(identifier)
    attrs = node.base.attributes.all
    click.echo(f"PESModel<{node.pk}> {node.uuid}  label: {node.label!r}")
    for key in (
        "architecture",
        "elements",
        "cutoff",
        "n_features",
        "n_rbf",
        "n_blocks",
        "dtype",
        "n_parameters",
        "energy_scale",
        "best_epoch",
        "best_valid_loss",
    ):
        if key in attrs:
            click.echo(f"  {key:16s} {attrs[key]}")
    click.echo(f"  {'versions':16s} {', '.join(f'{k} {v}' for k, v in sorted(node.versions.items())) or '-'}")
    creator = node.creator
    if creator is None:
        click.echo(f"  {'created by':16s} import")
        return
    click.echo(f"  {'created by':16s} {creator.process_label}<{creator.pk}>")
    if "dataset" in creator.inputs:
        data = creator.inputs.dataset
        click.echo(f"  {'trained on':16s} PESDataset<{data.pk}> ({data.n_conformations} conformations)")
    if "metrics" in creator.outputs:
        for subset, values in creator.outputs.metrics.get_dict().items():
            maes = {k: v.get("mae") for k, v in values.items() if isinstance(v, dict) and "mae" in v}
            text = ", ".join(f"{k} {v:.4g}" for k, v in maes.items() if isinstance(v, (int, float)))
            click.echo(f"  {subset + ' MAE':16s} {text or '-'}")


@model.command("export")
@click.argument("identifier")
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@torchscript_options
@profile_option
def model_export(identifier, output: Path, force, torchscript, molecule, units, charge, profile) -> None:
    """Write the model file of a PESModel to OUTPUT (read it with aiida_mlpes.core.models.load_model), or
    with --torchscript a module that runs with torch alone (docs/openmm.md)."""
    _load(profile)
    node = _get_model(identifier)
    if output.exists() and not force:
        raise click.ClickException(f"{output} exists (use --force to overwrite)")
    if torchscript:
        return click.echo(write_torchscript(node, output, molecule, units, charge))
    with node.as_path() as path:
        shutil.copyfile(path, output)
    click.echo(f"Wrote PESModel<{node.pk}> ({node.architecture}, {','.join(node.elements)}) to {output}")


@model.command("lineage")
@click.argument("identifier")
@profile_option
def model_lineage(identifier: str, profile) -> None:
    """Where a model came from: its training run and package versions, the datasets and merges its data
    went through, and the reference calculations that labelled it (program, code, version, level)."""
    _load(profile)
    from aiida_mlpes.lineage import format_lineage
    from aiida_mlpes.lineage import model_lineage as trace

    for line in format_lineage(trace(_get_model(identifier))):
        click.echo(line)


@model.command("retrain")
@click.argument("identifier")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="New training.max_epochs.")
@click.option("--submit", is_flag=True, help="Submit to the daemon instead of running here.")
@profile_option
def model_retrain(identifier: str, epochs: int | None, submit: bool, profile) -> None:
    """Train again from the stored inputs of the TrainCalculation that made a model (get_builder_restart),
    optionally with another number of epochs."""
    _load(profile)
    from aiida import orm
    from aiida.engine import run_get_node
    from aiida.engine import submit as submit_process

    node = _get_model(identifier)
    training = node.creator
    if not isinstance(training, orm.CalcJobNode) or training.process_type != "aiida.calculations:mlpes.train":
        made = f"{training.process_label}<{training.pk}>" if training else "an import"
        raise click.ClickException(f"PESModel<{node.pk}> was not made by a mlpes.train run but by {made}")
    builder = training.get_builder_restart()
    if epochs is not None:
        settings = training.inputs.settings.get_dict() if "settings" in training.inputs else {}
        settings.setdefault("training", {})["max_epochs"] = epochs
        builder.settings = orm.Dict(settings)
    if submit:
        process = submit_process(builder)
        click.echo(f"Submitted TrainCalculation<{process.pk}>; follow it with `verdi process list`")
        return
    results, new = run_get_node(builder)
    if not new.is_finished_ok:
        raise click.ClickException(
            f"TrainCalculation<{new.pk}> failed with exit status {new.exit_status}: {new.exit_message}"
        )
    click.echo(f"TrainCalculation<{new.pk}> finished: new PESModel<{results['model'].pk}>")


if __name__ == "__main__":
    cli()
