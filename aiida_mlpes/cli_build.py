"""``aiida-mlpes build``: a machine-learned PES of one molecule from a structure file, with no Python.

The molecule (and a transition-state guess) is read with ASE; ``--reference`` picks the reference code and its
parameters; ``ConstructPESWorkChain.get_builder_from_protocol`` builds the inputs from a protocol and the
overrides of a YAML/JSON file. Everything is checked before anything runs (one line, exit status 1, no process
created): the protocol loader names unknown keys, the reference CalcJob checks its parameters, the core checks
elements and charge/multiplicity (:mod:`aiida_mlpes.core.reference.validation`) and the work chain's own
validator checks the rest. The loop then runs here with live progress and ends with a short report
(:mod:`aiida_mlpes.build_report`), or is submitted to the daemon (``--submit``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

COMPUTER = "localhost"
RUNNER = f"aiida-mlpes-run@{COMPUTER}"


@dataclass(frozen=True)
class Reference:
    """How ``--reference NAME`` maps to a code and the reference protocol's parameters."""

    plugin: str  #: default_calc_job_plugin the reference code must have
    default_code: str | None  #: code label (``{computer}`` is the runner's computer); None: --code-reference
    method_key: str  #: the reference parameter that ``--method`` sets
    default_method: str | None = None
    protocol: str | None = None  #: reference protocol (None: the loop's protocol name)
    describe: str = ""

    def overrides(self, method: str | None) -> dict[str, Any]:
        """Reference-protocol overrides for ``--method`` (empty without one)."""
        method = method or self.default_method
        if method is None:
            return {}
        if self.plugin == "mlpes.ase" and self.protocol == "pbe-d3bj":
            return {"parameters": pyscf_parameters(method)}
        return {"parameters": {self.method_key: method}}


REFERENCES: dict[str, Reference] = {
    "xtb": Reference(
        "mlpes.xtb",
        "xtb@{computer}",
        "method",
        "GFN2-xTB",
        describe="the xtb program, --method GFN2-xTB (default), GFN1-xTB, ...",
    ),
    "orca": Reference(
        "mlpes.orca",
        None,
        "keywords",
        describe="ORCA (needs --code-reference), --method is the ! keyword line",
    ),
    "gaussian": Reference(
        "mlpes.gaussian", None, "route", describe="Gaussian (needs --code-reference), --method is the route"
    ),
    "pyscf": Reference(
        "mlpes.ase",
        "aiida-mlpes-ase@{computer}",
        "method",
        protocol="pbe-d3bj",
        describe="PySCF through aiida-mlpes-run, PBE-D3BJ/def2-SVP unless --method FUNCTIONAL[-D3BJ][/BASIS]",
    ),
    "tblite": Reference(
        "mlpes.ase",
        "aiida-mlpes-ase@{computer}",
        "method",
        describe="tblite through aiida-mlpes-run, --method GFN2-xTB (default) or GFN1-xTB",
    ),
}


def pyscf_parameters(method: str) -> dict[str, Any]:
    """PySCF settings for ``FUNCTIONAL[-D3BJ][/BASIS]`` (e.g. ``B3LYP-D3BJ/def2-TZVP``; basis default
    def2-SVP); the level of theory is ``method`` as written."""
    functional, _, basis = method.partition("/")
    dispersion = None
    if functional.upper().endswith("-D3BJ"):
        functional, dispersion = functional[: -len("-D3BJ")], "d3bj"
    if not functional:
        raise click.ClickException(
            f"--method {method!r}: give FUNCTIONAL[-D3BJ][/BASIS], e.g. B3LYP-D3BJ/def2-SVP"
        )
    return {
        "calculator": "pyscf",
        "method": functional,
        "basis": (basis or "def2-SVP").lower(),
        "dispersion": dispersion,
        "level_of_theory": method if basis else f"{method}/def2-SVP",
    }


def read_structure(path: Path, what: str):
    """The last frame of ``path`` as ASE Atoms (any format ASE reads); a one-line error if it cannot."""
    from ase.io import read

    if not path.is_file():
        raise click.ClickException(f"{what} {path}: no such file")
    try:
        atoms = read(path)
    except Exception as exc:  # ASE raises many types for a file it cannot parse
        raise click.ClickException(
            f"{what} {path}: ASE cannot read it ({type(exc).__name__}: {exc})"
        ) from None
    if isinstance(atoms, list):  # read(index=...) with a slice; not used, but keep the type honest
        atoms = atoms[-1]
    if len(atoms) == 0:
        raise click.ClickException(f"{what} {path}: no atoms")
    atoms.pbc = False
    return atoms


def read_overrides(path: Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON file (JSON by the suffix .json)."""
    if not path.is_file():
        raise click.ClickException(f"overrides {path}: no such file")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        message = " ".join(str(exc).split())
        raise click.ClickException(f"overrides {path}: cannot parse it ({message})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise click.ClickException(f"overrides {path}: must hold a mapping (settings, sample, train, ...)")
    return data


def load_code(label: str, option: str, plugin: str | None = None):
    """The code ``label``; a one-line error when missing, ambiguous or with the wrong default plugin."""
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    try:
        code = orm.load_code(label)
    except NotExistent:
        raise click.ClickException(
            f"{option}: no code {label!r} (`aiida-mlpes setup` creates xtb@localhost and aiida-mlpes-run@localhost; "
            "other codes: `verdi code create core.code.installed`)"
        ) from None
    except MultipleObjectsError:
        raise click.ClickException(
            f"{option}: {label!r} matches several codes; give LABEL@COMPUTER"
        ) from None
    if plugin is not None and code.default_calc_job_plugin != plugin:
        raise click.ClickException(
            f"{option}: code {code.full_label} has default plugin {code.default_calc_job_plugin!r}, not {plugin!r}"
        )
    return code


def reference_code(name: str, choice: Reference, label: str | None, runner):
    """The reference code: the one named by ``--code-reference`` or the default of ``--reference``."""
    if label is not None:
        return load_code(label, "--code-reference", choice.plugin)
    if choice.default_code is None:
        raise click.ClickException(f"--reference {name} needs --code-reference LABEL (your {name} code)")
    if choice.plugin == "mlpes.ase":
        from aiida_mlpes.setup_codes import ensure_ase_code

        code, created = ensure_ase_code(runner)
        if created:
            click.echo(created)
        return code
    return load_code(
        choice.default_code.format(computer=runner.computer.label), "--code-reference", choice.plugin
    )


def check_reference(builder, atoms, what: str, charge: int, multiplicity: int) -> None:
    """The reference CalcJob's checks: its parameters, then elements, overlaps and charge/multiplicity parity."""
    from aiida_mlpes.core.ragged import RaggedArrays
    from aiida_mlpes.core.reference.validation import MIN_DISTANCE, structure_problems
    from aiida_mlpes.workflows.reference import _calculation_class

    reference = builder.reference
    calculation = _calculation_class(reference.code)
    message = calculation.validate_inputs({"code": reference.code, "parameters": reference.parameters})
    if message:
        raise click.ClickException(f"reference: {message}")
    parameters = reference.parameters.get_dict()
    max_z = calculation.max_z(parameters) if hasattr(calculation, "max_z") else 118
    min_distance = reference["min_distance"].value if "min_distance" in reference else MIN_DISTANCE
    problems = structure_problems(RaggedArrays.from_atoms([atoms]), charge, multiplicity, min_distance, max_z)
    if problems:
        raise click.ClickException(f"{what}: {problems[0]}")


def make_builder(
    atoms,
    ts_atoms,
    name: str,
    method: str | None,
    protocol: str | None,
    charge: int,
    multiplicity: int,
    overrides: dict[str, Any],
    code_reference: str | None,
    code_runner: str,
    paths: tuple[str, str | None],
):
    """A checked ConstructPESWorkChain builder; ``click.ClickException`` naming the first problem."""
    from aiida import orm

    from aiida_mlpes.protocols import deep_merge
    from aiida_mlpes.workflows.construct_pes import ConstructPESWorkChain
    from aiida_mlpes.workflows.reference import ReferenceWorkChain, _calculation_class

    choice = REFERENCES[name]
    runner = load_code(code_runner, "--code-runner")
    code = reference_code(name, choice, code_reference, runner)
    codes = {"reference": code, "runner": runner}
    if name == "xtb" and isinstance(code, orm.InstalledCode) and code.computer.uuid == runner.computer.uuid:
        codes["driver"] = runner  # one process runs all xtb calls of a job (as the NH3 demo)
    overrides = dict(overrides)
    reference_overrides = deep_merge(choice.overrides(method), dict(overrides.pop("reference", None) or {}))
    program = _calculation_class(code).__module__.rsplit(".", 1)[-1]
    try:
        known = ReferenceWorkChain.get_protocol_inputs(program, choice.protocol or protocol)
    except ValueError:
        known = ReferenceWorkChain.get_protocol_inputs(program)  # the loop's protocol check names the problem
    unknown = sorted(set(reference_overrides) - set(known))
    if unknown:
        raise click.ClickException(f"overrides.reference: unknown keys {unknown}; known: {sorted(known)}")
    try:
        builder = ConstructPESWorkChain.get_builder_from_protocol(
            codes,
            orm.StructureData(ase=atoms),
            protocol=protocol,
            overrides={**overrides, "reference": reference_overrides},
            ts_structure=orm.StructureData(ase=ts_atoms) if ts_atoms is not None else None,
            charge=charge,
            multiplicity=multiplicity,
            reference_protocol=choice.protocol,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    check_reference(builder, atoms, paths[0], charge, multiplicity)
    if ts_atoms is not None:
        check_reference(builder, ts_atoms, f"--ts {paths[1]}", charge, multiplicity)
    error = ConstructPESWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True)))
    if error is not None:
        raise click.ClickException(" ".join(str(error.message).split()))
    return builder


def _protocol_help() -> str:
    from aiida_mlpes.protocols import available_protocols, default_protocol

    return f"{', '.join(available_protocols())} (default: {default_protocol()}); see docs/construct_pes.md"


@click.command()
@click.argument("molecule", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--reference",
    "reference",
    default="xtb",
    show_default=True,
    metavar="|".join(REFERENCES),
    help="The reference method. " + "; ".join(f"{k}: {v.describe}" for k, v in REFERENCES.items()) + ".",
)
@click.option("--method", default=None, help="Level of theory of the reference (see --reference).")
@click.option("--protocol", default=None, metavar="NAME", help="Protocol: " + _protocol_help())
@click.option(
    "--ts",
    "ts_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TS guess (same atoms).",
)
@click.option("--charge", type=int, default=0, show_default=True, help="Total charge (e).")
@click.option("--multiplicity", type=int, default=1, show_default=True, help="Spin multiplicity 2S+1.")
@click.option(
    "--overrides",
    "overrides_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="YAML or JSON file overriding any protocol value (keys: settings, sample, train, characterize, "
    "options, reference).",
)
@click.option("--code-reference", default=None, help="Reference code (default: see --reference).")
@click.option("--code-runner", default=RUNNER, show_default=True, help="The aiida-mlpes-run code.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the convergence plot (default: ./<molecule>_convergence.png).",
)
@click.option("--submit", is_flag=True, help="Submit to the daemon and return instead of running here.")
@click.option("-p", "--profile", default=None, help="AiiDA profile (default: the default profile).")
def build(
    molecule: Path,
    reference: str,
    method: str | None,
    protocol: str | None,
    ts_path: Path | None,
    charge: int,
    multiplicity: int,
    overrides_path: Path | None,
    code_reference: str | None,
    code_runner: str,
    plot_path: Path | None,
    submit: bool,
    profile: str | None,
) -> None:
    """Build a machine-learned PES of MOLECULE (any file ASE reads) with ConstructPESWorkChain: sample, label
    with the reference, train a committee, characterize (minimum, frequencies, DMC, TS), validate against the
    reference and refine until every criterion holds. Shows progress and ends with a short report; exits 0
    when the loop converged, 1 otherwise."""
    from aiida_mlpes.cli import _load

    name = reference.lower()
    if name not in REFERENCES:
        raise click.ClickException(
            f"--reference {reference!r} unknown; choose one of {', '.join(REFERENCES)}"
        )
    atoms = read_structure(molecule, "molecule")
    ts_atoms = read_structure(ts_path, "--ts") if ts_path is not None else None
    overrides = read_overrides(overrides_path) if overrides_path is not None else {}
    _load(profile)
    builder = make_builder(
        atoms,
        ts_atoms,
        name,
        method,
        protocol,
        charge,
        multiplicity,
        overrides,
        code_reference,
        code_runner,
        (str(molecule), str(ts_path) if ts_path else None),
    )
    if submit:
        _submit(builder)
        return
    _run(builder, plot_path or Path(f"{molecule.stem}_convergence.png"))


def _submit(builder) -> None:
    from aiida.engine import submit as submit_process
    from aiida.engine.daemon.client import get_daemon_client

    try:
        node = submit_process(builder)
    except Exception as exc:  # no broker, no daemon configuration ...: one line, not a traceback
        raise click.ClickException(f"could not submit: {type(exc).__name__}: {exc}") from None
    click.echo(f"Submitted ConstructPESWorkChain<{node.pk}>")
    click.echo(f"  follow it:  verdi process report {node.pk}   (state: verdi process status {node.pk})")
    click.echo(
        f"  its report: aiida-mlpes report {node.pk}   (a line per finished iteration; the summary at the end)"
    )
    try:
        running = get_daemon_client().is_daemon_running
    except Exception:  # a profile without a daemon configuration
        running = False
    if not running:
        click.echo("  the daemon is not running: start it with `verdi daemon start`")


def _run(builder, plot_path: Path) -> None:
    from aiida.engine import run_get_node

    from aiida_mlpes.build_report import final_report, progress_instead_of_reports
    from aiida_mlpes.core.convergence import LoopSettings

    settings = LoopSettings.from_dict(builder.settings.get_dict())
    with progress_instead_of_reports(click.echo, settings.max_iterations):
        _, node = run_get_node(builder)
    for line in final_report(node, plot_path):
        click.echo(line)
    if not node.is_finished_ok:
        raise SystemExit(1)
