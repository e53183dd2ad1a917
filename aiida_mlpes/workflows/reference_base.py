"""``ReferenceBaseWorkChain`` (``mlpes.reference_base``): one batch of structures labelled by the code's program,
healed by process handlers (walltime kills, SCF failures, other failures) until every structure is labelled or
excluded after ``max_structure_retries`` attempts; and the inputs it shares with ``ReferenceWorkChain``."""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.common import AttributeDict
from aiida.common.links import LinkType
from aiida.engine import (
    BaseRestartWorkChain,
    ExitCode,
    ProcessHandlerReport,
    ToContext,
    append_,
    calcfunction,
    process_handler,
    while_,
)
from aiida.plugins import CalculationFactory

from aiida_mlpes.calculations.merge import merge_datasets
from aiida_mlpes.calculations.reference import ReferenceCalculation, n_structures
from aiida_mlpes.core.reference import common
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.workflows.replay import launched_child

_CODES = ReferenceCalculation.exit_codes
#: Categories that raise the SCF fix level of a structure on retry (blow-ups are SCF problems too).
_SCF_CATEGORIES = {common.SCF_NOT_CONVERGED, common.UNPHYSICAL}


def _calculation_class(code: orm.AbstractCode):
    plugin = code.default_calc_job_plugin
    if plugin not in ("mlpes.xtb", "mlpes.orca", "mlpes.gaussian", "mlpes.ase"):
        raise ValueError(
            f"code {code.label!r} has default_calc_job_plugin {plugin!r}; set it to one of mlpes.xtb, "
            "mlpes.orca, mlpes.gaussian, mlpes.ase"
        )
    return CalculationFactory(plugin)


def _define_common_inputs(spec) -> None:
    spec.input(
        "code",
        valid_type=orm.AbstractCode,
        help="The program (xtb, orca, g16) or aiida-mlpes-run code; its default_calc_job_plugin "
        "(mlpes.xtb, mlpes.orca, mlpes.gaussian, mlpes.ase) picks the CalcJob.",
    )
    # the structure and method ports are the CalcJob's own, passed through unchanged
    spec.expose_inputs(
        ReferenceCalculation,
        include=(
            "structures",
            "indices",
            "charge",
            "multiplicity",
            "parameters",
            "min_distance",
            "driver_code",
        ),
    )
    spec.input(
        "options",
        valid_type=orm.Dict,
        default=lambda: orm.Dict({}),
        serializer=orm.to_aiida_type,
        help="metadata.options of each CalcJob (resources, max_wallclock_seconds, environment_variables ...).",
    )
    spec.input(
        "max_structure_retries",
        valid_type=orm.Int,
        default=lambda: orm.Int(2),
        serializer=orm.to_aiida_type,
        help="Retries per structure before it is excluded (attempts that never started do not count).",
    )
    spec.output(
        "dataset", valid_type=PESDataset, required=False, help="All successfully labelled structures."
    )
    spec.output(
        "excluded",
        valid_type=orm.Dict,
        required=False,
        help="Structures given up after their retries: {index: {category, message, attempts}}; only present "
        "when something was excluded.",
    )


@calcfunction
def collect_exclusions(**jobs: orm.Data) -> orm.Dict:
    """Structures that never succeeded, with their last failure and number of attempts, from the jobs'
    ``indices_K`` (List) and ``failures_K`` (Dict) in the order K the jobs ran. A structure counts as
    succeeded in job K if it was in ``indices_K`` but not in ``failures_K``; ``not_run`` is no attempt."""
    succeeded: set[str] = set()
    attempts: dict[str, int] = {}
    last: dict[str, dict] = {}
    keys = sorted(k.split("_", 1)[1] for k in jobs if k.startswith("indices_"))
    for k in keys:
        failures = jobs[f"failures_{k}"].get_dict()
        for index in jobs[f"indices_{k}"].get_list():
            failure = failures.get(str(index))
            if failure is None:
                succeeded.add(str(index))
            elif failure["category"] != common.NOT_RUN:
                attempts[str(index)] = attempts.get(str(index), 0) + 1
                last[str(index)] = failure
            else:
                last.setdefault(str(index), failure)
    return orm.Dict(
        {i: {**last[i], "attempts": attempts.get(i, 0)} for i in sorted(last, key=int) if i not in succeeded}
    )


@calcfunction
def join_exclusions(**excluded: orm.Dict) -> orm.Dict:
    """One Dict of the excluded structures of all batches."""
    joined: dict = {}
    for key in sorted(excluded):
        joined.update(excluded[key].get_dict())
    return orm.Dict(joined)


def _validate(inputs: dict[str, Any], _ctx=None) -> str | None:
    """Reject bad structures/parameters before anything is submitted (the CalcJob's own validator)."""
    if "code" not in inputs or "structures" not in inputs:
        return None
    try:
        cls = _calculation_class(inputs["code"])
    except ValueError as exc:
        return str(exc)
    return cls.validate_inputs(inputs)


def _merge(datasets: list[PESDataset]) -> PESDataset:
    """Merge without deduplication (one output conformation per successful input structure)."""
    fields = {tuple(sorted(d.field_names)) for d in datasets}
    return merge_datasets(
        deduplicate=orm.Bool(False),
        allow_mixed_levels=orm.Bool(len(fields) > 1),
        **{f"batch_{k:04d}": d for k, d in enumerate(datasets)},
    )["dataset"]


class ReferenceBaseWorkChain(BaseRestartWorkChain):
    """Label one batch: run the CalcJob, then resubmit what failed or never ran until done or given up."""

    _process_class = ReferenceCalculation

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        _define_common_inputs(spec)
        spec.inputs["max_iterations"].default = lambda: orm.Int(10)
        spec.inputs.validator = _validate
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(cls.prepare_process, cls.run_process, cls.inspect_process),
            cls.results,
        )
        spec.exit_code(
            403,
            "ERROR_ALL_STRUCTURES_EXCLUDED",
            message="No structure could be labelled; see the `excluded` output for the reasons.",
        )

    @property
    def process_class(self):
        """The batch CalcJob of the code's program (chosen at run time from the code)."""
        context = getattr(self, "_context", None)
        plugin = context.get("calc_plugin") if context is not None else None
        return CalculationFactory(plugin) if plugin else self._process_class

    def setup(self) -> None:
        self.ctx.calc_plugin = self.inputs.code.default_calc_job_plugin
        super().setup()
        if "indices" in self.inputs:
            pending = [int(i) for i in self.inputs.indices.get_list()]
        else:
            pending = list(range(n_structures(self.inputs.structures)))
        self.ctx.pending = pending
        self.ctx.attempts = {str(i): 0 for i in pending}
        self.ctx.fix_level = {str(i): 0 for i in pending}
        self.ctx.excluded = {}
        self.ctx.datasets = []

    def prepare_process(self) -> None:
        cls = self.process_class
        level = max((self.ctx.fix_level[str(i)] for i in self.ctx.pending), default=0)
        parameters = self.inputs.parameters.get_dict()
        if level:
            parameters = cls.apply_scf_fix(parameters, level)
        self.ctx.inputs = AttributeDict(
            {
                "code": self.inputs.code,
                "structures": self.inputs.structures,
                "indices": orm.List(list(self.ctx.pending)),
                "charge": self.inputs.charge,
                "multiplicity": self.inputs.multiplicity,
                "parameters": orm.Dict(parameters),
                "min_distance": self.inputs.min_distance,
                "metadata": {"options": self.inputs.options.get_dict()},
            }
        )
        if "driver_code" in self.inputs:
            self.ctx.inputs["driver_code"] = self.inputs.driver_code

    def run_process(self) -> ToContext:
        """As the base class, but a job that this step launched before a daemon crash is adopted instead of
        submitted again: the engine replays a step from its last checkpoint, and the job of the first try
        (stored, linked and queued) runs anyway."""
        label = f"iteration_{self.ctx.iteration + 1:02d}"
        launched = launched_child(self, LinkType.CALL_CALC, label)
        if launched is None:
            return super().run_process()
        self.ctx.iteration += 1
        self.report(f"adopting {launched.process_label}<{launched.pk}>, launched before a restart")
        return ToContext(children=append_(launched))

    # --- process handlers -------------------------------------------------------------------------------------
    @process_handler(priority=900)
    def record_results(self, node) -> None:
        """Keep the structures that succeeded; decide for each failed one: retry (with which fix) or exclude."""
        if "dataset" in node.outputs:
            self.ctx.datasets.append(node.outputs.dataset)
        failures = node.outputs.failures.get_dict() if "failures" in node.outputs else None
        if failures is None:  # the job produced nothing to go by: every structure of it failed the same way
            message = node.exit_message or f"exit status {node.exit_status}"
            failures = {str(i): {"category": common.ERROR, "message": message} for i in self.ctx.pending}
        pending = []
        for index in self.ctx.pending:
            failure = failures.get(str(index))
            if failure is None:
                continue  # done
            key = str(index)
            if failure["category"] != common.NOT_RUN:
                self.ctx.attempts[key] += 1
                if failure["category"] in _SCF_CATEGORIES:
                    self.ctx.fix_level[key] += 1
            if common.NOT_STARTED in str(failure.get("message", "")):
                # the program is missing or cannot run on the computer: another job would fail the same way
                self.ctx.attempts[key] = max(
                    self.ctx.attempts[key], self.inputs.max_structure_retries.value + 1
                )
            if self.ctx.attempts[key] > self.inputs.max_structure_retries.value:
                self.ctx.excluded[key] = {**failure, "attempts": self.ctx.attempts[key]}
                self.report(
                    f"structure {index} excluded after {self.ctx.attempts[key]} attempts: "
                    f"{failure['category']}: {failure['message']}"
                )
            else:
                pending.append(index)
        self.ctx.pending = pending
        return None

    @process_handler(priority=500, exit_codes=[_CODES.ERROR_OUT_OF_WALLTIME])
    def handle_out_of_walltime(self, node) -> ProcessHandlerReport:
        """The job stopped before all structures ran: resubmit only the remaining ones."""
        self.report_error_handled(
            node, f"resubmitting the {len(self.ctx.pending)} structures left unfinished"
        )
        return self._next()

    @process_handler(priority=400, exit_codes=[_CODES.ERROR_SCF_NOT_CONVERGED])
    def handle_scf_not_converged(self, node) -> ProcessHandlerReport:
        """No SCF converged: retry with the next convergence strategy (more iterations, damping ...)."""
        self.report_error_handled(node, "retrying with a stronger SCF convergence strategy")
        return self._next()

    @process_handler(
        priority=300,
        exit_codes=[
            _CODES.ERROR_OUTPUT_MISSING,
            _CODES.ERROR_PROGRAM_FAILED,
            _CODES.ERROR_UNPHYSICAL,
            ExitCode(300),
            ExitCode(301),
        ],
    )
    def handle_failed_batch(self, node) -> ProcessHandlerReport:
        """Every structure failed (program error, missing output, unphysical): retry until retries are used up."""
        self.report_error_handled(node, f"retrying {len(self.ctx.pending)} structures")
        return self._next()

    @process_handler(priority=100)
    def handle_partial_failures(self, node) -> ProcessHandlerReport | None:
        """The job finished but some structures failed: run those again."""
        if node.is_finished_ok and self.ctx.pending:
            self.report(f"{node.process_label}<{node.pk}>: {len(self.ctx.pending)} structures to retry")
            return self._next()
        return None

    @process_handler(priority=50)
    def handle_other_failure(self, node) -> ProcessHandlerReport | None:
        """Any other failed job (scheduler error, lost job ...): its structures count one attempt and are retried."""
        if node.is_failed:
            self.report_error_handled(node, f"retrying {len(self.ctx.pending)} structures")
            return self._next()
        return None

    def inspect_process(self) -> ExitCode | None:
        """As the base class, but an excepted or killed job does not end the work chain (which would lose the
        structures labelled so far): its structures count one failed attempt and are retried."""
        node = self.ctx.children[self.ctx.iteration - 1]
        if node.is_excepted or node.is_killed:
            self.record_results(node)
            self.report(
                f"{node.process_label}<{node.pk}> {node.process_state.value}; retrying its structures"
            )
            self._next()
            return None
        return super().inspect_process()

    def report_error_handled(self, node, action: str) -> None:
        self.report(
            f"{node.process_label}<{node.pk}> failed with exit status {node.exit_status}: "
            f"{node.exit_message}; {action}"
        )

    def _next(self) -> ProcessHandlerReport:
        """Restart if structures are pending (within the iteration budget), else finish."""
        if self.ctx.pending and self.ctx.iteration >= self.inputs.max_iterations.value:
            for index in self.ctx.pending:
                self.ctx.excluded[str(index)] = {
                    "category": common.ERROR,
                    "attempts": self.ctx.attempts[str(index)],
                    "message": "the work chain's max_iterations was reached",
                }
            self.ctx.pending = []
        if not self.ctx.pending:
            self.ctx.is_finished = True
        return ProcessHandlerReport(do_break=True)

    def results(self) -> ExitCode | None:
        if self.ctx.excluded:
            self.out("excluded", self._exclusions())
        datasets = self.ctx.datasets
        if not datasets:
            return self.exit_codes.ERROR_ALL_STRUCTURES_EXCLUDED
        self.out("dataset", datasets[0] if len(datasets) == 1 else _merge(datasets))
        self.report(
            f"labelled {sum(d.n_conformations for d in datasets)} structures in {self.ctx.iteration} "
            f"jobs; {len(self.ctx.excluded)} excluded"
        )
        return None

    def _exclusions(self) -> orm.Dict:
        """The ``excluded`` output, computed by a calcfunction from the jobs' indices and failures."""
        jobs = {}
        for k, child in enumerate(self.ctx.children):
            jobs[f"indices_{k:04d}"] = child.inputs.indices
            if "failures" in child.outputs:
                jobs[f"failures_{k:04d}"] = child.outputs.failures
            else:  # an excepted/failed job without outputs: all its structures failed with its message
                message = (
                    child.exit_message or f"{child.process_state.value} (exit status {child.exit_status})"
                )
                jobs[f"failures_{k:04d}"] = orm.Dict(
                    {
                        str(i): {"category": common.ERROR, "message": message}
                        for i in child.inputs.indices.get_list()
                    }
                )
        return collect_exclusions(**jobs)
