"""Where a PESModel came from, read from the provenance graph.

Starting at the model, :func:`model_lineage` follows the ``create`` link to the TrainCalculation, its
``dataset`` input, and from there every dataset upstream: through merges (``merge_datasets``, ``mlpes.merge``)
and any other process that made a dataset from datasets, down to the reference calculations (xtb, ORCA,
Gaussian, ASE) that labelled the data, or to an import (a dataset with no creator). The reference
calculations are grouped by program, code, program version (read from the retrieved output where the program
prints it) and level of theory.
"""

from __future__ import annotations

import pathlib
import tempfile
from dataclasses import dataclass, field
from typing import Any

from aiida import orm
from aiida.common.links import LinkType

from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.data.model import PESModel


@dataclass
class DatasetStep:
    """One dataset on the way to the training data and the process that created it."""

    pk: int
    n_conformations: int
    level_of_theory: str
    origin: str  # "imported", or "<ProcessLabel><pk>"
    kind: str  # "import", "reference", "merge" or "process"
    n_inputs: int = 0  # datasets the creating process read (merges)


@dataclass
class ReferenceGroup:
    """Reference calculations with the same program, code, version and level of theory."""

    program: str
    code: str
    version: str
    level_of_theory: str
    pks: list[int] = field(default_factory=list)
    n_structures: int = 0


@dataclass
class Lineage:
    """The provenance of one model (see :func:`model_lineage`)."""

    model: PESModel
    training: orm.CalcJobNode | None
    datasets: list[DatasetStep]
    references: list[ReferenceGroup]
    parent_model: PESModel | None = None

    @property
    def n_reference_calculations(self) -> int:
        return sum(len(g.pks) for g in self.references)


def _program(node: orm.ProcessNode) -> str | None:
    """The reference program of a CalcJob node (``PROGRAM`` of its class), or None."""
    if not isinstance(node, orm.CalcJobNode):
        return None
    try:
        program = getattr(node.process_class, "PROGRAM", "")
    except (ValueError, ImportError):  # plugin not installed
        return None
    return str(program) or None


def _input_datasets(node: orm.ProcessNode) -> list[PESDataset]:
    links = node.base.links.get_incoming(
        node_class=PESDataset, link_type=(LinkType.INPUT_CALC, LinkType.INPUT_WORK)
    ).all()
    return [link.node for link in links]


def program_version(calc: orm.CalcJobNode) -> str:
    """The program version printed in the first retrieved output of a reference CalcJob ('' if unknown)."""
    program = _program(calc)
    readers: dict[str, tuple[str, Any]] = {}
    if program in ("xtb", "orca", "gaussian"):
        from aiida_mlpes.core.reference.gaussian import read_gaussian
        from aiida_mlpes.core.reference.orca import read_orca
        from aiida_mlpes.core.reference.xtb import read_xtb

        readers = {
            "xtb": (".out", lambda folder, name: read_xtb(folder, namespace=name)),
            "orca": (".out", read_orca),
            "gaussian": (".log", read_gaussian),
        }
    if program not in readers or "retrieved" not in calc.outputs:
        return ""
    suffix, reader = readers[program]
    name = calc.process_class.NAME_FORMAT.format(0)
    retrieved = calc.outputs.retrieved
    files = [f for f in retrieved.base.repository.list_object_names() if f.startswith(f"{name}.")]
    if f"{name}{suffix}" not in files:
        return ""
    with tempfile.TemporaryDirectory() as tmp:
        for filename in files:
            content = retrieved.base.repository.get_object_content(filename, mode="rb")
            (pathlib.Path(tmp) / filename).write_bytes(content)
        try:
            return str(reader(tmp, name).version or "")
        except (OSError, ValueError):
            return ""


def _code_label(calc: orm.CalcJobNode) -> str:
    code = calc.inputs.code if "code" in calc.inputs else None
    label = code.full_label if code is not None else "?"
    if _program(calc) == "ase" and "parameters" in calc.inputs:
        label += f" ({calc.inputs.parameters.get('calculator', '?')})"
    return label


def model_lineage(model: PESModel) -> Lineage:
    """Walk the provenance graph upstream of ``model`` (see the module docstring)."""
    training = model.creator
    if not isinstance(training, orm.CalcJobNode) or training.process_type != "aiida.calculations:mlpes.train":
        return Lineage(model=model, training=None, datasets=[], references=[])
    parent = training.inputs.parent_model if "parent_model" in training.inputs else None
    datasets: list[DatasetStep] = []
    groups: dict[tuple[str, str, str, str], ReferenceGroup] = {}
    stack: list[PESDataset] = [training.inputs.dataset]
    seen: set[int] = set()
    while stack:
        dataset = stack.pop(0)
        if dataset.pk in seen:
            continue
        seen.add(dataset.pk)
        creator = dataset.creator
        n, level = dataset.n_conformations, dataset.level_of_theory
        if creator is None:
            datasets.append(DatasetStep(dataset.pk, n, level, "imported", "import"))
            continue
        origin = f"{creator.process_label}<{creator.pk}>"
        program = _program(creator)
        if program:
            datasets.append(DatasetStep(dataset.pk, n, level, origin, "reference"))
            key = (program, _code_label(creator), program_version(creator), level)
            group = groups.setdefault(key, ReferenceGroup(*key))
            group.pks.append(creator.pk)
            group.n_structures += n
            continue
        inputs = _input_datasets(creator)
        kind = "merge" if "merge" in (creator.process_label or "").lower() else "process"
        datasets.append(DatasetStep(dataset.pk, n, level, origin, kind, len(inputs)))
        stack.extend(inputs)
    return Lineage(model, training, datasets, list(groups.values()), parent)


def format_lineage(lineage: Lineage) -> list[str]:
    """The lineage as lines of text for the command line."""
    model = lineage.model
    n_parameters = model.base.attributes.get("n_parameters", "?")
    lines = [
        f"PESModel<{model.pk}> {model.architecture} for {','.join(model.elements)} ({n_parameters} parameters)"
    ]
    versions = ", ".join(f"{k} {v}" for k, v in sorted(model.versions.items())) or "not recorded"
    training = lineage.training
    if training is None:
        creator = model.creator
        made = f"{creator.process_label}<{creator.pk}>" if creator else "imported (no creating process)"
        lines += [f"trained by: not a mlpes.train run: {made}", f"packages: {versions}"]
        return lines
    state = (
        "finished ok"
        if training.is_finished_ok
        else (training.process_state.value if training.process_state else "?")
    )
    lines.append(f"trained by: {training.process_label}<{training.pk}> on {_code_label(training)} ({state})")
    lines.append(f"packages: {versions}")
    if lineage.parent_model is not None:
        lines.append(f"fine-tuned from: PESModel<{lineage.parent_model.pk}> (see its own lineage)")
    lines.append("datasets (training data first):")
    for step in lineage.datasets:
        via = (
            f"{step.origin} of {step.n_inputs} datasets" if step.kind in ("merge", "process") else step.origin
        )
        level = step.level_of_theory or "no level of theory"
        lines.append(f"  PESDataset<{step.pk}>  {step.n_conformations:6d} conformations  {level}  <- {via}")
    lines.append(f"reference calculations: {lineage.n_reference_calculations}")
    for g in lineage.references:
        lines.append(
            f"  {len(g.pks)} x {g.program}  code {g.code}  version {g.version or 'unknown'}  "
            f"level {g.level_of_theory or '?'}  {g.n_structures} structures  (PKs {_pk_list(g.pks)})"
        )
    return lines


def _pk_list(pks: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(p) for p in sorted(pks)[:limit])
    return shown + (f", ... ({len(pks) - limit} more)" if len(pks) > limit else "")
