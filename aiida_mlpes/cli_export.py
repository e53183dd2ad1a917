"""``aiida-mlpes model export --torchscript``: a PESModel as a TorchScript module for one molecule.

The molecule (atomic numbers, atom order and an example geometry) comes from ``--molecule`` (any file ASE
reads, Angstrom) or else from the first conformation of the dataset the model was trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def torchscript_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--torchscript``, ``--molecule``, ``--units`` and ``--charge`` options of ``model export``."""
    options = [
        click.option(
            "--torchscript",
            is_flag=True,
            help="Write a TorchScript module for one molecule (needs torch only).",
        ),
        click.option(
            "--molecule",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="--torchscript: the molecule (a file ASE reads); default: the first training conformation.",
        ),
        click.option(
            "--units",
            type=click.Choice(["ase", "openmm"]),
            default="ase",
            show_default=True,
            help="--torchscript: positions/energy in Angstrom/eV (ase) or nm/kJ/mol (openmm).",
        ),
        click.option(
            "--charge", type=float, default=0.0, show_default=True, help="--torchscript: total charge, e."
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def molecule_atoms(node: Any, molecule: Path | None) -> Any:
    """ASE Atoms of the molecule to export for: ``molecule``'s first image, or the first conformation of the
    training dataset of ``node`` (a PESModel); a ClickException when there is neither."""
    if molecule is not None:
        from ase.io import read

        try:
            return read(molecule, index=0)
        except Exception as exc:  # ASE raises many types for unreadable files
            raise click.ClickException(f"cannot read a molecule from {molecule}: {exc}") from exc
    creator = node.creator
    if creator is None or "dataset" not in creator.inputs:
        raise click.ClickException(
            f"PESModel<{node.pk}> has no training dataset to take the molecule from: pass --molecule FILE"
        )
    return creator.inputs.dataset.get_arrays().to_atoms(0)


def write_torchscript(node: Any, output: Path, molecule: Path | None, units: str, charge: float) -> str:
    """Export ``node`` (a PESModel) for the molecule to ``output``; returns a one-line summary."""
    from aiida_mlpes.core.models import load_model
    from aiida_mlpes.core.models.export import export_torchscript

    atoms = molecule_atoms(node, molecule)
    with node.as_path() as path:
        model = load_model(path)
    try:
        export_torchscript(
            model, atoms.numbers, output, charge=charge, units=units, positions=atoms.positions
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    unit_text = "Angstrom -> eV, eV/Angstrom" if units == "ase" else "nm -> kJ/mol, kJ/mol/nm"
    return (
        f"Wrote PESModel<{node.pk}> as TorchScript for {atoms.get_chemical_formula()} "
        f"({unit_text}) to {output}; load it with torch.jit.load"
    )
