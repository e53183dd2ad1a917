"""Reference labelling that heals itself: ``ReferenceWorkChain`` (``mlpes.reference``) splits the structures
into batches and runs one ``ReferenceBaseWorkChain`` (``mlpes.reference_base``) per batch, in parallel;
each of those is a ``BaseRestartWorkChain`` around the batch CalcJob of the code's program (``mlpes.xtb``,
``mlpes.orca``, ``mlpes.gaussian`` or ``mlpes.ase``) whose process handlers

- resubmit only the structures a walltime kill left unfinished (exit 400),
- retry SCF failures with a stronger convergence strategy (exit 410; per-structure ``scf_fix_level``),
- retry structures that failed otherwise (program error, missing output, unphysical result),

and exclude a structure only after ``max_structure_retries`` failed attempts. Every successful structure is
kept; the merged PESDataset and the excluded structures with their reasons are the outputs.
"""

from __future__ import annotations

import copy
import math
import pathlib
from typing import Any

import yaml
from aiida import orm
from aiida.common import AttributeDict
from aiida.common.links import LinkType
from aiida.engine import (
    BaseRestartWorkChain,
    ExitCode,
    ProcessHandlerReport,
    ToContext,
    WorkChain,
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
        launched = launched_child(self.node, LinkType.CALL_CALC, label)
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


def launched_child(node: orm.ProcessNode, link_type: LinkType, label: str) -> orm.ProcessNode | None:
    """The process that ``node`` called with the link ``label`` (None if there is none yet)."""
    found = node.base.links.get_outgoing(link_type=link_type, link_label_filter=label).all_nodes()
    return found[0] if found else None


def _merge(datasets: list[PESDataset]) -> PESDataset:
    """Merge without deduplication (one output conformation per successful input structure)."""
    fields = {tuple(sorted(d.field_names)) for d in datasets}
    return merge_datasets(
        deduplicate=orm.Bool(False),
        allow_mixed_levels=orm.Bool(len(fields) > 1),
        **{f"batch_{k:04d}": d for k, d in enumerate(datasets)},
    )["dataset"]


PROTOCOLS = pathlib.Path(__file__).parent / "protocols"


def _recursive_merge(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    """``left`` updated with ``right``, merging nested dicts (``right`` wins)."""
    merged = copy.deepcopy(left)
    for key, value in right.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _recursive_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _validate_batch_size(value: orm.Int, _port=None) -> str | None:
    return None if value.value >= 1 else f"batch_size must be at least 1, got {value.value}"


class ReferenceWorkChain(WorkChain):
    """Label many structures: batches of ``batch_size`` run in parallel, each healed by its own
    ``ReferenceBaseWorkChain``; outputs the merged dataset and the excluded structures."""

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        _define_common_inputs(spec)
        spec.input(
            "batch_size",
            valid_type=orm.Int,
            default=lambda: orm.Int(100),
            serializer=orm.to_aiida_type,
            validator=_validate_batch_size,
            help="Structures per CalcJob (a job costs ~1 s of engine time, xtb on NH3 ~0.02 s).",
        )
        spec.input(
            "max_iterations",
            valid_type=orm.Int,
            default=lambda: orm.Int(10),
            serializer=orm.to_aiida_type,
            help="Maximum jobs per batch (first run plus restarts).",
        )
        spec.inputs.validator = _validate
        spec.outline(cls.setup, cls.run_batches, cls.results)
        spec.exit_code(
            403,
            "ERROR_ALL_STRUCTURES_EXCLUDED",
            message="No structure could be labelled; see the `excluded` output for the reasons.",
        )
        spec.exit_code(404, "ERROR_BATCH_FAILED", message="Batch work chain {pk} failed: {message}")

    @classmethod
    def get_protocol_filepath(cls, program: str) -> pathlib.Path:
        """The YAML protocol file of ``program`` (xtb, orca, gaussian, ase)."""
        path = PROTOCOLS / f"reference_{program}.yaml"
        if not path.is_file():
            known = sorted(p.stem.removeprefix("reference_") for p in PROTOCOLS.glob("reference_*.yaml"))
            raise ValueError(f"no reference protocols for program {program!r}; known: {known}")
        return path

    @classmethod
    def get_available_protocols(cls, program: str = "xtb") -> dict[str, dict[str, str]]:
        """Protocol names of ``program`` with their descriptions."""
        data = yaml.safe_load(cls.get_protocol_filepath(program).read_text())
        return {name: {"description": p.get("description", "")} for name, p in data["protocols"].items()}

    @classmethod
    def get_protocol_inputs(
        cls, program: str, protocol: str | None = None, overrides: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Inputs of ``protocol`` (default: the file's default protocol) merged with ``overrides``."""
        data = yaml.safe_load(cls.get_protocol_filepath(program).read_text())
        name = protocol or data["default_protocol"]
        if name not in data["protocols"]:
            raise ValueError(
                f"protocol {name!r} unknown for {program}; choose one of {sorted(data['protocols'])}"
            )
        chosen = {k: v for k, v in data["protocols"][name].items() if k != "description"}
        return _recursive_merge(_recursive_merge(data["default_inputs"], chosen), overrides or {})

    @classmethod
    def get_builder_from_protocol(
        cls,
        code: orm.AbstractCode,
        structures: PESDataset | orm.StructureData | orm.TrajectoryData,
        protocol: str | None = None,
        overrides: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        charge: int = 0,
        multiplicity: int = 1,
    ):
        """A builder with the protocol's inputs for the program of ``code`` (its default_calc_job_plugin).

        ``overrides`` is merged into the protocol's inputs (e.g. ``{"parameters": {"solvent": "water"}}``,
        ``{"batch_size": 50}``), ``options`` into the CalcJobs' ``metadata.options``.
        """
        program = _calculation_class(code).__module__.rsplit(".", 1)[-1]
        inputs = cls.get_protocol_inputs(program, protocol, overrides)
        if options:
            inputs["options"] = _recursive_merge(inputs.get("options", {}), options)
        builder = cls.get_builder()
        builder.code = code
        builder.structures = structures
        builder.charge = orm.Int(charge)
        builder.multiplicity = orm.Int(multiplicity)
        builder.parameters = orm.Dict(inputs["parameters"])
        builder.options = orm.Dict(inputs.get("options", {}))
        for key, node_type in (
            ("batch_size", orm.Int),
            ("max_structure_retries", orm.Int),
            ("min_distance", orm.Float),
            ("max_iterations", orm.Int),
        ):
            if key in inputs:
                builder[key] = node_type(inputs[key])
        return builder

    def setup(self) -> None:
        if "indices" in self.inputs:
            indices = [int(i) for i in self.inputs.indices.get_list()]
        else:
            indices = list(range(n_structures(self.inputs.structures)))
        size = max(1, self.inputs.batch_size.value)
        n_batches = math.ceil(len(indices) / size)
        # equal-sized batches (e.g. 200 with batch_size 150 -> 100 + 100), so parallel jobs finish together
        per = math.ceil(len(indices) / n_batches)
        self.ctx.batches = [indices[k : k + per] for k in range(0, len(indices), per)]

    def run_batches(self) -> ToContext:
        futures = {}
        for k, batch in enumerate(self.ctx.batches):
            inputs = {
                "code": self.inputs.code,
                "structures": self.inputs.structures,
                "indices": orm.List(batch),
                "charge": self.inputs.charge,
                "multiplicity": self.inputs.multiplicity,
                "parameters": self.inputs.parameters,
                "min_distance": self.inputs.min_distance,
                "options": self.inputs.options,
                "max_structure_retries": self.inputs.max_structure_retries,
                "max_iterations": self.inputs.max_iterations,
                "metadata": {"call_link_label": f"batch_{k:04d}"},
            }
            if "driver_code" in self.inputs:
                inputs["driver_code"] = self.inputs.driver_code
            # after a daemon crash this step is replayed: adopt the batches its first try launched
            launched = launched_child(self.node, LinkType.CALL_WORK, f"batch_{k:04d}")
            futures[f"batch_{k:04d}"] = launched or self.submit(ReferenceBaseWorkChain, **inputs)
        self.report(
            f"submitted {len(futures)} batches of up to {max(len(b) for b in self.ctx.batches)} structures"
        )
        return ToContext(**futures)

    def results(self) -> ExitCode | None:
        datasets = []
        for k in range(len(self.ctx.batches)):
            node = self.ctx[f"batch_{k:04d}"]
            if "dataset" in node.outputs:
                datasets.append(node.outputs.dataset)
            elif not node.is_finished_ok and node.exit_status != 403:
                return self.exit_codes.ERROR_BATCH_FAILED.format(pk=node.pk, message=node.exit_message)
        batches = [self.ctx[f"batch_{k:04d}"] for k in range(len(self.ctx.batches))]
        excluded = {
            f"batch_{k:04d}": b.outputs.excluded for k, b in enumerate(batches) if "excluded" in b.outputs
        }
        if len(excluded) == 1:
            self.out("excluded", next(iter(excluded.values())))
        elif excluded:
            self.out("excluded", join_exclusions(**excluded))
        if not datasets:
            return self.exit_codes.ERROR_ALL_STRUCTURES_EXCLUDED
        self.out("dataset", datasets[0] if len(datasets) == 1 else _merge(datasets))
        return None


@calcfunction
def frequencies_from_vibspectrum(vibspectrum: orm.SinglefileData) -> orm.ArrayData:
    """Wavenumbers (cm^-1, array ``frequencies``; 3N modes) from the ``vibspectrum`` file of ``xtb --hess``."""
    from aiida_mlpes.core.reference.xtb import parse_vibspectrum

    array = orm.ArrayData()
    array.set_array("frequencies", parse_vibspectrum(vibspectrum.get_content()))
    return array


def run_xtb_frequencies(
    code: orm.AbstractCode | str,
    structure: orm.StructureData,
    charge: int = 0,
    multiplicity: int = 1,
    method: str = "GFN2-xTB",
    options: dict[str, Any] | None = None,
) -> tuple[orm.ArrayData, orm.ProcessNode]:
    """Reference harmonic frequencies with ``xtb --hess`` as an aiida-shell ShellJob (a command on files).

    Returns the frequencies (ArrayData ``frequencies`` in cm^-1, all 3N modes, made by a calcfunction from the
    job's ``vibspectrum``) and the ShellJob node. xtb writes its normal-termination line to stderr, so stderr is
    redirected into stdout (otherwise aiida-shell reports exit 410 for a successful run).
    """
    from aiida_shell import launch_shell_job

    from aiida_mlpes.core.reference.validation import check_charge_multiplicity
    from aiida_mlpes.core.reference.xtb import METHODS, write_xyz

    atoms = structure.get_ase()
    problem = check_charge_multiplicity(atoms.numbers, charge, multiplicity)
    if problem:
        raise ValueError(problem)
    if method not in METHODS:
        raise ValueError(f"xtb method {method!r} is unknown; choose one of {', '.join(METHODS)}")
    geometry = orm.SinglefileData.from_string(write_xyz(atoms.numbers, atoms.positions), filename="mol.xyz")
    arguments = [
        "{geometry}",
        "--hess",
        *METHODS[method],
        "--chrg",
        str(int(charge)),
        "--uhf",
        str(int(multiplicity) - 1),
    ]
    metadata_options = {"redirect_stderr": True, "environment_variables": {"OMP_NUM_THREADS": "1"}}
    metadata_options.update(options or {})
    results, node = launch_shell_job(
        code,
        arguments=arguments,
        nodes={"geometry": geometry},
        filenames={"geometry": "mol.xyz"},
        outputs=["vibspectrum"],
        metadata={"options": metadata_options},
    )
    if not node.is_finished_ok or "vibspectrum" not in results:
        raise RuntimeError(
            f"xtb --hess failed (ShellJob<{node.pk}>: exit {node.exit_status} {node.exit_message})"
        )
    return frequencies_from_vibspectrum(results["vibspectrum"]), node
