"""Live progress and the closing report of ``aiida-mlpes build`` (one ``ConstructPESWorkChain`` run).

:class:`BuildProgress` is a logging handler on the ``aiida`` logger: the engine sends every process report
through it while ``run_get_node`` blocks. Reports of the work chain are printed with the elapsed time and the
iteration; after each iteration the stored record (``record_<k>``) gives the criteria, holes and errors, and the
mean wall time of the finished iterations times those left gives the ETA. Failed or excepted child processes are
printed once each. :func:`final_report` summarises the outputs: model, errors, frequencies, barrier, plot;
``aiida-mlpes report PK`` prints it for any ConstructPESWorkChain (e.g. one sent with ``build --submit``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
from aiida.common.log import LOG_LEVEL_REPORT

#: ``[pk|Class|method]: `` that ``Process.report`` puts before each message.
_PREFIX = re.compile(r"^\[\d+\|[^|\]]*\|[^\]]*\]:\s*")
_CONSTRUCT = "aiida.workflows:mlpes.construct_pes"


def duration(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``1h02m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta(durations: Sequence[float], iteration: int, max_iterations: int) -> float | None:
    """Seconds left at most: the mean wall time of the finished iterations times the iterations left."""
    if not durations:
        return None
    return sum(durations) / len(durations) * max(0, max_iterations - iteration)


def iteration_line(record: Mapping[str, Any], seconds: float, max_iterations: int, left: float | None) -> str:
    """One line per finished iteration: criteria passed, holes, errors on new labels, time and ETA."""
    criteria = dict(record.get("criteria") or {})
    passed = [name for name, c in criteria.items() if c.get("passed")]
    failing = [name for name in criteria if name not in passed]
    holes = dict(record.get("holes") or {})
    new = dict(record.get("new_labels") or {})
    k = record.get("iteration")
    parts = [
        f"iteration {k}/{max_iterations} done in {duration(seconds)}",
        f"criteria {len(passed)}/{len(criteria)} passed"
        + (f" (failing: {', '.join(failing)})" if failing else ""),
        f"holes {holes.get('found', 0)} found/{holes.get('labelled', 0)} labelled/{holes.get('confirmed', 0)} "
        "confirmed",
    ]
    if new.get("energy_mae") is not None:
        parts.append(f"new-label energy MAE {1000 * new['energy_mae']:.1f} meV")
    if record.get("converged"):
        parts.append("converged")
    elif left is not None and k is not None and k < max_iterations:
        more = max_iterations - k
        parts.append(f"ETA <= {duration(left)} ({more} more iteration{'s' if more > 1 else ''} at most)")
    return "  " + "; ".join(parts)


class BuildProgress(logging.Handler):
    """Prints the progress of the ConstructPESWorkChain whose reports pass through the ``aiida`` logger."""

    def __init__(self, echo: Callable[[str], Any], max_iterations: int) -> None:
        super().__init__(level=LOG_LEVEL_REPORT)
        self.echo = echo
        self.max_iterations = max_iterations
        self.start = time.monotonic()
        self.root: Any = None
        self.records: set[int] = set()
        self.failures: set[int] = set()
        self.broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.broken:
            return
        try:
            self._handle(record)
        except Exception as exc:  # progress must never break the run it reports
            self.broken = True
            self.echo(f"(progress display stopped: {type(exc).__name__}: {exc})")

    def _handle(self, record: logging.LogRecord) -> None:
        from aiida import orm

        pk = getattr(record, "dbnode_id", None)
        if pk is None:
            return
        text = _PREFIX.sub("", record.getMessage())
        if self.root is None:
            node = orm.load_node(pk)
            if node.process_type == _CONSTRUCT and node.caller is None:
                self.root = node
        if self.root is None or pk != self.root.pk:
            return  # children: their failures are printed from their nodes, warnings by aiida's console handler
        calls = self._calls()
        named = re.match(r"iteration (\d+):", text)  # the loop's own reports name their iteration
        iteration = int(named.group(1)) if named else self._iteration(calls)
        stage = f"iteration {iteration}/{self.max_iterations}" if iteration else "initial data"
        self.echo(f"[{duration(time.monotonic() - self.start):>6} | {stage}] {text}")
        self._failures()
        self._iterations(calls)

    def show_iterations(self) -> None:
        """Print a line per iteration the work chain ``root`` has finished (and not yet printed)."""
        self._iterations(self._calls())

    def _iteration(self, calls: Mapping[str, Any]) -> int:
        """The iteration under way from the calls so far: the last trained, else 1 once the initial labelling
        ended, else 0 (the initial data are being made)."""
        trained = [int(label[6:]) for label in calls if re.fullmatch(r"train_\d+", label)]
        if trained:
            return max(trained)
        initial = calls.get("label_0")
        return 1 if initial is not None and initial.is_terminated else 0

    def _calls(self) -> dict[str, Any]:
        from aiida.common.links import LinkType

        links = self.root.base.links.get_outgoing(link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK)).all()
        return {link.link_label: link.node for link in links}

    def _failures(self) -> None:
        for node in self.root.called_descendants:
            if node.pk in self.failures or not node.is_terminated or node.is_finished_ok:
                continue
            self.failures.add(node.pk)
            status = f"exit {node.exit_status}" if node.is_finished else node.process_state.value
            self.echo(f"  ! {node.process_label}<{node.pk}> {status}: {_why(node)}")

    def _iterations(self, calls: Mapping[str, Any]) -> None:
        durations = []
        for k in range(1, self.max_iterations + 1):
            record, train = calls.get(f"record_{k}"), calls.get(f"train_{k}")
            if record is None or train is None or "result" not in record.outputs:
                break
            durations.append((record.mtime - train.ctime).total_seconds())
            if record.pk in self.records:
                continue
            self.records.add(record.pk)
            result = record.outputs.result.get_dict()
            self.echo(
                iteration_line(
                    result, durations[-1], self.max_iterations, eta(durations, k, self.max_iterations)
                )
            )


@contextlib.contextmanager
def progress_instead_of_reports(echo: Callable[[str], Any], max_iterations: int) -> Iterator[BuildProgress]:
    """Print :class:`BuildProgress` while the block runs, instead of every process report on the terminal:
    aiida's own terminal handlers show warnings and errors only until the block ends."""
    logger = logging.getLogger("aiida")
    progress = BuildProgress(echo, max_iterations)
    terminal = [
        handler
        for handler in logger.handlers
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
    ]
    levels = [handler.level for handler in terminal]
    for handler in terminal:
        handler.setLevel(max(handler.level, logging.WARNING))
    logger.addHandler(progress)
    try:
        yield progress
    finally:
        logger.removeHandler(progress)
        for handler, level in zip(terminal, levels, strict=True):
            handler.setLevel(level)


def _why(node: Any) -> str:
    """The exit message of a process, or the last line of its exception."""
    if node.exit_message:
        return str(node.exit_message)
    lines = (node.exception or "").strip().splitlines()
    return lines[-1] if lines else ""


def _mae(metrics: Mapping[str, Any], name: str) -> float | None:
    value = (metrics.get(name) or {}).get("mae") if isinstance(metrics.get(name), Mapping) else None
    return None if value is None else float(value)


def record_lines(record: Mapping[str, Any]) -> list[str]:
    """Errors, frequencies (model beside reference) and barrier of one history record (eV, cm^-1)."""
    lines = []
    test = dict(record.get("test") or {})
    new = dict(record.get("new_labels") or {})
    errors = []
    e, f = _mae(test, "energy"), _mae(test, "forces")
    if e is not None:
        errors.append(
            f"fixed test set MAE {1000 * e:.2f} meV" + (f", {f:.4f} eV/Angstrom" if f is not None else "")
        )
    if new.get("energy_mae") is not None:
        forces = f", {new['forces_mae']:.4f} eV/Angstrom" if new.get("forces_mae") is not None else ""
        errors.append(
            f"new labels before training ({new.get('n')}) MAE {1000 * new['energy_mae']:.2f} meV{forces}"
        )
    lines.append("Errors: " + ("; ".join(errors) if errors else "not measured"))
    validation = dict(record.get("validation") or {})
    tolerance = dict(((record.get("criteria") or {}).get("reference") or {}).get("tolerance") or {})
    model = validation.get("model_frequencies") or record.get("frequencies")
    reference = validation.get("reference_frequencies")
    if model:
        lines.append("Harmonic frequencies at the model minimum (cm^-1):")
        lines.append("  model     " + " ".join(f"{x:8.1f}" for x in sorted(model)))
        if reference:
            lines.append("  reference " + " ".join(f"{x:8.1f}" for x in sorted(reference)))
            rmse = validation.get("frequency_rmse")
            if rmse is not None:
                limit = tolerance.get("frequency_rmse")
                lines.append(
                    f"  RMSE {rmse:.1f} cm^-1" + (f" (tolerance {limit})" if limit is not None else "")
                )
        else:
            why = "; ".join(validation.get("problems") or []) or "settings.validate_frequencies is false"
            lines.append(f"  reference: not computed ({why})")
    if record.get("barrier") is not None:
        text = f"Barrier: model {record['barrier']:.4f} eV"
        if validation.get("reference_barrier") is not None:
            text += f", reference {validation['reference_barrier']:.4f} eV at the model's geometries"
            if validation.get("barrier_error") is not None:
                text += f", difference {validation['barrier_error']:+.4f} eV"
                if tolerance.get("barrier_error") is not None:
                    text += f" (tolerance {tolerance['barrier_error']})"
        lines.append(text)
    criteria = dict(record.get("criteria") or {})
    if criteria:
        verdicts = []
        for name, c in criteria.items():
            verdicts.append(
                f"{name} {'ok' if c.get('passed') else 'FAIL'}"
                + (f" ({c['reason']})" if c.get("reason") else "")
            )
        lines.append(f"Criteria (iteration {record.get('iteration')}): " + ", ".join(verdicts))
    return lines


def final_report(node: Any, plot_path: Path | None) -> list[str]:
    """The short report of a finished ConstructPESWorkChain: status, model, errors, frequencies, barrier, plot."""
    status = node.exit_status
    if node.is_finished_ok:
        message = "converged: every criterion holds"
    else:
        message = _why(node) or node.process_status or node.process_state.value
    lines = ["", f"ConstructPESWorkChain<{node.pk}>: exit status {status}, {message}"]
    outputs = node.outputs
    details = f"Details: verdi process report {node.pk}"
    if "model" in outputs:
        model = outputs.model
        lines.append(
            f"Model: PESModel<{model.pk}>, a committee of {model.committee_size}; "
            f"export it: aiida-mlpes model export {model.pk} model.pt"
        )
        details += f"; provenance: aiida-mlpes model lineage {model.pk}"
    else:
        lines.append("Model: none was trained")
    if "dataset" in outputs:
        lines.append(
            f"Data: PESDataset<{outputs.dataset.pk}> ({outputs.dataset.n_conformations} conformations)"
        )
    if "history" in outputs:
        iterations = outputs.history.get_dict().get("iterations") or []
        if iterations:
            lines += record_lines(iterations[-1])
    if "convergence_plot" in outputs and plot_path is not None:
        with outputs.convergence_plot.open(mode="rb") as handle:
            plot_path.write_bytes(handle.read())
        lines.append(f"Convergence plot: {plot_path}")
    lines.append(details)
    return lines


@click.command("report")
@click.argument("identifier")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the convergence plot here (PNG).",
)
@click.option("-p", "--profile", default=None, help="AiiDA profile (default: the default profile).")
def report(identifier: str, plot_path: Path | None, profile: str | None) -> None:
    """The report of a ConstructPESWorkChain (PK, UUID or label), e.g. one sent with `build --submit`: a line
    per finished iteration and, once it has ended, what `aiida-mlpes build` prints at the end."""
    from aiida import orm

    from aiida_mlpes.cli import _get_node, _load
    from aiida_mlpes.core.convergence import LoopSettings

    _load(profile)
    node = _get_node(identifier, orm.WorkChainNode, "ConstructPESWorkChain")
    if node.process_label != "ConstructPESWorkChain":
        raise click.ClickException(
            f"node {identifier} is a {node.process_label}, not a ConstructPESWorkChain"
        )
    settings = LoopSettings.from_dict(node.inputs.settings.get_dict())
    progress = BuildProgress(click.echo, settings.max_iterations)
    progress.root = node
    progress.show_iterations()
    if not node.is_terminated:
        click.echo(
            f"ConstructPESWorkChain<{node.pk}> is {node.process_state.value}: verdi process report {node.pk}"
        )
        return
    for line in final_report(node, plot_path):
        click.echo(line)
