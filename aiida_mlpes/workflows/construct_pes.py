"""``ConstructPESWorkChain`` (``mlpes.construct_pes``): build an ML-PES and refine it until it is shown right.

Iteration 0 samples structures around the molecule (``mlpes.sample``) and labels them (``mlpes.reference``);
their test split is the fixed test set of every later iteration. Each iteration then

1. trains a committee of models on all data (``mlpes.train``; fine-tuned from the previous committee at a
   lower learning rate, or from scratch; a fine-tuned committee that got worse on the fixed test set is
   retrained from scratch) and tests it on the fixed test set (``mlpes.test``);
2. characterizes its surface (``mlpes.characterize``): minimum (and TS, MEP, barrier), harmonic frequencies,
   DMC with hole detection (energy holes and committee disagreement), and fresh candidate geometries from
   the final DMC population and MD on the model;
3. labels, side by side, the validation geometries (model minimum, its finite-difference copies, the TS),
   the holes (chosen for diversity) and the candidates, and scores the model on them *before* training on
   them (``mlpes.test``);
4. records the iteration and decides with the stopping rule of :mod:`aiida_mlpes.core.convergence`;
   the new labels are merged (``merge_datasets``) for the next iteration.

Every exit path, failures included, emits the last trained model, the dataset and the history.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from aiida import orm
from aiida.engine import ToContext, WorkChain, if_, while_

from aiida_mlpes import protocols
from aiida_mlpes.calculations.characterize import CharacterizeCalculation
from aiida_mlpes.calculations.merge import merge_datasets
from aiida_mlpes.calculations.sample import SampleCalculation
from aiida_mlpes.calculations.test import ModelTestCalculation
from aiida_mlpes.calculations.train import TrainCalculation, checkpoint_epoch
from aiida_mlpes.core.characterize.task import check_tasks
from aiida_mlpes.core.convergence import LoopSettings
from aiida_mlpes.core.models import ModelConfig
from aiida_mlpes.core.reference.validation import structure_problems
from aiida_mlpes.core.training import TrainingConfig
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.data.model import PESModel
from aiida_mlpes.workflows import construct_pes_functions as functions
from aiida_mlpes.workflows.reference import ReferenceWorkChain, _calculation_class

#: Exit status of TrainCalculation when the wall time ended training early: the best model is still output.
TRAINING_INCOMPLETE = 400
#: Exit status of a CalcJob the scheduler killed at its walltime (aiida-core's ERROR_SCHEDULER_OUT_OF_WALLTIME).
KILLED_AT_WALLTIME = 120
#: Times one training is resumed from its checkpoint after the scheduler killed it at its walltime.
TRAINING_RESUMES = 3
#: Kinds of newly labelled structures, in the order they are labelled and scored.
LABEL_KINDS = ("validation", "holes", "candidates")


class ConstructPESWorkChain(WorkChain):
    """Sample, label, train a committee, characterize, validate against the reference; repeat until shown right."""

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.input("structure", valid_type=orm.StructureData, help="The molecule (its minimum, or a guess).")
        spec.input(
            "ts_structure",
            valid_type=orm.StructureData,
            required=False,
            help="A transition-state guess: optimised on each model, with its MEP and barrier tracked.",
        )
        spec.input(
            "charge", valid_type=orm.Int, default=lambda: orm.Int(0), serializer=orm.to_aiida_type, help="e"
        )
        spec.input(
            "multiplicity",
            valid_type=orm.Int,
            default=lambda: orm.Int(1),
            serializer=orm.to_aiida_type,
            help="Spin multiplicity 2S+1.",
        )
        spec.input(
            "initial_dataset",
            valid_type=PESDataset,
            required=False,
            help="Labelled data at the reference level to start from; sampling is skipped when given without "
            "`sample` inputs.",
        )
        spec.input(
            "settings",
            valid_type=orm.Dict,
            default=lambda: orm.Dict({}),
            serializer=orm.to_aiida_type,
            help="Loop settings and convergence tolerances (aiida_mlpes.core.convergence.LoopSettings): "
            + ", ".join(LoopSettings.model_fields),
        )
        spec.expose_inputs(
            SampleCalculation,
            namespace="sample",
            exclude=("structures",),
            namespace_options={"required": False, "populate_defaults": False, "help": "Initial sampling."},
        )
        spec.expose_inputs(
            ReferenceWorkChain,
            namespace="reference",
            exclude=("structures", "indices", "charge", "multiplicity"),
            namespace_options={"help": "The reference method that labels samples, holes and validations."},
        )
        spec.expose_inputs(
            TrainCalculation,
            namespace="train",
            exclude=("dataset", "parent_model", "restart_folder"),
            namespace_options={"help": "Model and training settings (also runs mlpes.test)."},
        )
        spec.expose_inputs(
            CharacterizeCalculation,
            namespace="characterize",
            exclude=("model", "driver", "structure", "ts_structure", "charge"),
            namespace_options={
                "help": "Characterization tasks; must include dmc. optimize and frequencies (and optimize_ts "
                "and mep with a TS) are added when missing."
            },
        )
        # The exposed validators expect the ports this work chain fills in itself; validate_inputs checks the
        # same things with those ports supplied.
        for namespace in ("sample", "train", "characterize"):
            spec.inputs[namespace].validator = None
        spec.inputs.validator = cls.validate_inputs
        spec.outline(
            cls.setup,
            if_(cls.should_sample)(
                cls.run_sampling, cls.inspect_sampling, cls.run_initial_labelling, cls.add_initial
            ),
            cls.fix_test_set,
            while_(cls.should_iterate)(
                cls.run_training,
                while_(cls.should_resume_training)(cls.resume_training),
                cls.inspect_training,
                cls.run_fixed_test,
                cls.inspect_fixed_test,
                if_(cls.should_retrain_from_scratch)(
                    cls.run_training,
                    while_(cls.should_resume_training)(cls.resume_training),
                    cls.inspect_training,
                    cls.run_fixed_test,
                    cls.inspect_fixed_test,
                ),
                cls.run_characterization,
                cls.inspect_characterization,
                cls.run_labelling,
                cls.inspect_labelling,
                cls.run_scoring,
                cls.record,
            ),
            cls.results,
        )
        spec.output("model", valid_type=PESModel, required=False, help="The last trained committee.")
        spec.output("dataset", valid_type=PESDataset, required=False, help="All labelled data.")
        spec.output(
            "history",
            valid_type=orm.Dict,
            required=False,
            help="Per iteration: data, holes found/labelled/confirmed, test errors (fixed set and new labels), "
            "ZPE, frequencies, barrier, validation against the reference, the verdict of each criterion, "
            "timings and the model's UUID.",
        )
        spec.output(
            "convergence_plot", valid_type=orm.SinglefileData, required=False, help="PNG of the history."
        )
        spec.output("characterization", valid_type=orm.Dict, required=False, help="Last characterization.")
        spec.output("minimum", valid_type=orm.StructureData, required=False, help="The model's last minimum.")
        spec.exit_code(401, "ERROR_SAMPLING_FAILED", message="Sampling failed: {message}")
        spec.exit_code(402, "ERROR_LABELLING_FAILED", message="Labelling failed: {message}")
        spec.exit_code(403, "ERROR_TRAINING_FAILED", message="Training failed: {message}")
        spec.exit_code(404, "ERROR_CHARACTERIZATION_FAILED", message="Characterization failed: {message}")
        spec.exit_code(
            410,
            "WARNING_NOT_CONVERGED",
            message="Not converged after {iterations} iterations (failing: {failing}); the outputs hold the "
            "last model, the dataset and the history.",
        )

    # ---------------------------------------------------------------------------------------------------------
    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], _: Any) -> str | None:
        """Everything that can be checked before anything runs."""
        try:
            settings = LoopSettings.from_dict(inputs["settings"].get_dict() if "settings" in inputs else {})
        except ValueError as exc:
            return str(exc)
        if "initial_dataset" not in inputs and not inputs.get("sample"):
            return "give `sample` inputs, an `initial_dataset`, or both"
        tasks = inputs["characterize"]["tasks"].get_dict()
        if "dmc" not in tasks:
            return "characterize.tasks must include 'dmc': the refinement loop is driven by DMC"
        try:
            check_tasks(cls._tasks(tasks, "ts_structure" in inputs, settings), "ts_structure" in inputs)
        except ValueError as exc:
            return f"characterize: {exc}"
        structure = inputs["structure"]
        ts = inputs.get("ts_structure")
        if ts is not None and [s.kind_name for s in ts.sites] != [s.kind_name for s in structure.sites]:
            return "structure and ts_structure must have the same atoms in the same order"
        if inputs.get("sample"):
            sample = {**inputs["sample"], "structures": {"molecule": structure}}
            message = SampleCalculation.validate_inputs(sample, None)
            if message:
                return f"sample: {message}"
        train = inputs["train"]["settings"].get_dict() if "settings" in inputs["train"] else {}
        if "committee_size" in train:
            return "train.settings: committee_size is set by the loop's settings.committee_size"
        try:
            TrainingConfig.from_dict(dict(train.get("training") or {}))
            ModelConfig.from_dict({"elements": [1], **dict(train.get("model") or {})})
        except (ValueError, TypeError) as exc:
            return f"train.settings: {exc}"
        return cls._check_initial_dataset(inputs)

    @staticmethod
    def _check_initial_dataset(inputs: dict[str, Any]) -> str | None:
        dataset = inputs.get("initial_dataset")
        if dataset is None:
            return None
        reference = inputs["reference"]
        try:
            level = _calculation_class(reference["code"]).level_of_theory(reference["parameters"].get_dict())
        except ValueError as exc:
            return f"reference: {exc}"
        if dataset.level_of_theory and dataset.level_of_theory != level:
            return (
                f"initial_dataset is at level of theory {dataset.level_of_theory!r} but the reference method "
                f"labels at {level!r}: mixing them would train on two surfaces"
            )
        missing = {"energy", "forces"} - set(dataset.field_names)
        if missing:
            return f"initial_dataset lacks {sorted(missing)}: it must be labelled with energies and forces"
        absent = {s.kind_name for s in inputs["structure"].sites} - set(dataset.elements)
        if absent:
            return f"initial_dataset holds no {sorted(absent)} atoms, which the molecule has"
        return None

    @staticmethod
    def _tasks(tasks: dict[str, Any], has_ts: bool, settings: LoopSettings) -> dict[str, Any]:
        """The characterization tasks of every iteration: the user's plus what the loop needs."""
        out = {"optimize": {}, "frequencies": {}, **tasks}
        if has_ts:
            out.setdefault("optimize_ts", {})
            out.setdefault("mep", {})
        out["explore"] = {"n_candidates": settings.n_candidates, **dict(out.get("explore") or {})}
        return out

    # ---------------------------------------------------------------------------------------------------------
    @classmethod
    def get_available_protocols(cls) -> dict[str, dict[str, str]]:
        """Protocol names with their descriptions."""
        return protocols.available_protocols()

    @classmethod
    def get_protocol_inputs(
        cls, protocol: str | None = None, overrides: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The protocol's inputs merged with ``overrides``; unknown keys are errors that name them."""
        return protocols.protocol_inputs(protocol, overrides)

    @classmethod
    def get_builder_from_protocol(
        cls,
        codes: dict[str, orm.AbstractCode],
        structure: orm.StructureData,
        protocol: str | None = None,
        overrides: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        ts_structure: orm.StructureData | None = None,
        charge: int = 0,
        multiplicity: int = 1,
        reference_protocol: str | None = None,
    ):
        """A builder for ``structure`` with the protocol's inputs (``fast``, ``moderate`` or ``precise``).

        ``codes``: ``reference`` (xtb, ORCA, Gaussian or aiida-mlpes-run with default plugin mlpes.ase) and
        ``runner`` (aiida-mlpes-run: sampling, training, characterization); optionally ``driver`` (an
        aiida-mlpes-run code that drives many reference program calls in one job). ``overrides`` changes any
        protocol value (keys: settings, sample, train, characterize, and ``reference`` for the reference
        protocol's overrides); ``options`` go to every CalcJob's ``metadata.options``. The reference method's
        own protocol is ``reference_protocol`` (default: the program's default, ``moderate``), independent of the
        loop's: a looser SCF saves little on small molecules and its noisy forces spoil training labels and
        finite-difference frequencies (GFN2-xTB at accuracy 2 is off by up to 0.025 eV/Angstrom).
        """
        unknown = sorted(set(codes) - {"reference", "runner", "driver"})
        if unknown or not {"reference", "runner"} <= set(codes):
            raise ValueError(f"codes needs 'reference' and 'runner' (optional 'driver'); got {sorted(codes)}")
        overrides = dict(overrides or {})
        reference_overrides = overrides.pop("reference", None)
        inputs = cls.get_protocol_inputs(protocol, overrides)
        run_options = protocols.deep_merge(inputs.get("options", {}), options or {})
        builder = cls.get_builder()
        builder.structure = structure
        if ts_structure is not None:
            builder.ts_structure = ts_structure
        builder.charge = orm.Int(charge)
        builder.multiplicity = orm.Int(multiplicity)
        builder.settings = orm.Dict(inputs["settings"])

        builder.sample.code = codes["runner"]
        builder.sample.driver = orm.Dict(inputs["sample"]["driver"])
        builder.sample.settings = orm.Dict({k: v for k, v in inputs["sample"].items() if k != "driver"})
        builder.sample.metadata = {"options": run_options}

        reference = ReferenceWorkChain.get_builder_from_protocol(
            codes["reference"],
            structure,
            protocol=reference_protocol,  # the reference program's own default (moderate) unless chosen
            overrides=reference_overrides,
            options=options,
            charge=charge,
            multiplicity=multiplicity,
        )
        for key in ("code", "parameters", "options", "batch_size", "max_structure_retries", "min_distance"):
            if key in reference:
                builder.reference[key] = reference[key]
        if "driver" in codes:
            builder.reference.driver_code = codes["driver"]

        builder.train.code = codes["runner"]
        builder.train.settings = orm.Dict(inputs["train"])
        builder.train.metadata = {"options": run_options}
        builder.characterize.code = codes["runner"]
        builder.characterize.tasks = orm.Dict(inputs["characterize"]["tasks"])
        builder.characterize.metadata = {"options": run_options}
        return builder

    # ---------------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        self.ctx.settings = LoopSettings.from_dict(self.inputs.settings.get_dict()).model_dump()
        self.ctx.iteration = 0
        self.ctx.dataset = self.inputs.get("initial_dataset")
        self.ctx.fixed_test_dataset = None
        self.ctx.model = None
        self.ctx.parent_test = None  # fixed-test metrics of the previous committee
        self.ctx.test_metrics = None
        self.ctx.retrain_scratch = False
        self.ctx.attempt = ""  # "_scratch" for the retraining from scratch of an iteration
        self.ctx.structure = self.inputs.structure
        self.ctx.ts_structure = self.inputs.get("ts_structure")
        self.ctx.records = {}
        self.ctx.previous = None
        self.ctx.converged = False
        self.ctx.failing = []
        self.ctx.characterization = None
        self.ctx.timings = {}

    @property
    def knobs(self) -> LoopSettings:
        return LoopSettings.model_validate(self.ctx.settings)

    def _launch(self, process_class, **inputs):
        """Submit a child process, or adopt the one a first try of this step launched: after a daemon crash the
        engine replays the step from its last checkpoint, and the child launched then runs anyway."""
        from aiida.common.links import LinkType
        from aiida.engine import CalcJob

        from aiida_mlpes.workflows.reference import launched_child

        label = inputs["metadata"]["call_link_label"]
        link_type = LinkType.CALL_CALC if issubclass(process_class, CalcJob) else LinkType.CALL_WORK
        launched = launched_child(self.node, link_type, label)
        if launched is not None:
            self.report(
                f"adopting {launched.process_label}<{launched.pk}> ({label}), launched before a restart"
            )
            return launched
        return self.submit(process_class, **inputs)

    def _fail(self, exit_code):
        """Emit what exists (last model, dataset, history) and end with ``exit_code``."""
        self.report(f"stopping: {exit_code.message}")
        self._emit()
        return exit_code

    def _time(self, stage: str, node: orm.ProcessNode) -> None:
        """Wall seconds of a stage from the processes' own records; for the CalcJobs in it (the node itself or
        those it called), their count and the wall and CPU seconds their tasks measured (``aiida-mlpes-run``
        stores them as extras; CPU includes the programs a job ran)."""
        entry = self.ctx.timings.setdefault(
            stage, {"wall_s": 0.0, "calcjobs": 0, "task_wall_s": 0.0, "task_cpu_s": 0.0}
        )
        entry["wall_s"] += (node.mtime - node.ctime).total_seconds()
        jobs = (
            [node]
            if isinstance(node, orm.CalcJobNode)
            else [n for n in node.called_descendants if isinstance(n, orm.CalcJobNode)]
        )
        entry["calcjobs"] += len(jobs)
        for job in jobs:
            entry["task_wall_s"] += job.base.extras.get("wall_time_s", 0.0)
            entry["task_cpu_s"] += job.base.extras.get("cpu_time_s", 0.0)

    # --- iteration 0: sampling and labelling -------------------------------------------------------------------
    def should_sample(self) -> bool:
        return bool(self.inputs.get("sample"))

    def run_sampling(self):
        inputs = self.exposed_inputs(SampleCalculation, namespace="sample")
        inputs["structures"] = {"molecule": self.inputs.structure}
        inputs.setdefault("metadata", {})["call_link_label"] = "sample"
        self.report("sampling structures around the molecule")
        return ToContext(sample=self._launch(SampleCalculation, **inputs))

    def inspect_sampling(self):
        node = self.ctx.sample
        self._time("sample", node)
        if "dataset" not in node.outputs:
            return self._fail(
                self.exit_codes.ERROR_SAMPLING_FAILED.format(message=node.exit_message or "no samples")
            )
        if not node.is_finished_ok:
            self.report(f"sampling ended with exit {node.exit_status}; labelling the samples it collected")
        return None

    def _labelling(self, structures: PESDataset, label: str, indices: list[int] | None = None):
        inputs = self.exposed_inputs(ReferenceWorkChain, namespace="reference")
        inputs.update(structures=structures, charge=self.inputs.charge, multiplicity=self.inputs.multiplicity)
        if indices is not None:
            inputs["indices"] = orm.List(indices)
            inputs["min_distance"] = orm.Float(self.knobs.hole_min_distance)
        inputs.setdefault("metadata", {})["call_link_label"] = label
        return self._launch(ReferenceWorkChain, **inputs)

    def run_initial_labelling(self):
        samples = self.ctx.sample.outputs.dataset
        self.report(f"labelling {samples.n_conformations} samples with the reference method")
        return ToContext(initial_labels=self._labelling(samples, "label_0"))

    def add_initial(self):
        node = self.ctx.initial_labels
        self._time("label_0", node)
        if "dataset" not in node.outputs:
            return self._fail(
                self.exit_codes.ERROR_LABELLING_FAILED.format(message=node.exit_message or "nothing labelled")
            )
        self._report_excluded(node)
        self._merge(node.outputs.dataset, "merge_0")
        return None

    def _report_excluded(self, node: orm.ProcessNode) -> None:
        if "excluded" in node.outputs:
            self.report(
                f"{len(node.outputs.excluded.get_dict())} structures excluded by {node.process_label}<{node.pk}> "
                "(see its `excluded` output)"
            )

    def _merge(self, new: PESDataset, label: str) -> None:
        if self.ctx.dataset is None:
            self.ctx.dataset = new
        else:
            merged = merge_datasets(previous=self.ctx.dataset, new=new, metadata={"call_link_label": label})
            self.ctx.dataset = merged["dataset"]
        self.report(f"dataset now holds {self.ctx.dataset.n_conformations} conformations")

    def fix_test_set(self) -> None:
        """The test split of the data before iteration 1 is the fixed test set of every iteration (splits depend
        only on each conformation's hash, so these conformations stay in the test split as data grow)."""
        self.ctx.fixed_test_dataset = self.ctx.dataset

    # --- training ----------------------------------------------------------------------------------------------
    def should_iterate(self) -> bool:
        if self.ctx.converged:
            return False
        return self.ctx.iteration < self.knobs.max_iterations

    def _train_settings(self, fine_tune: bool) -> dict[str, Any]:
        settings = (
            copy.deepcopy(self.inputs.train.settings.get_dict()) if "settings" in self.inputs.train else {}
        )
        settings["committee_size"] = self.knobs.committee_size
        if fine_tune:
            training = dict(settings.get("training") or {})
            defaults = TrainingConfig()
            training["learning_rate"] = (
                training.get("learning_rate", defaults.learning_rate)
                * self.knobs.fine_tune_learning_rate_factor
            )
            epochs = training.get("max_epochs", defaults.max_epochs)
            training["max_epochs"] = max(1, math.ceil(epochs * self.knobs.fine_tune_epoch_factor))
            settings["training"] = training
        return settings

    def run_training(self):
        scratch = self.ctx.retrain_scratch
        if not scratch:
            self.ctx.iteration += 1
        fine_tune = self.ctx.model is not None and self.knobs.retraining == "fine_tune" and not scratch
        inputs = self.exposed_inputs(TrainCalculation, namespace="train")
        inputs["dataset"] = self.ctx.dataset
        inputs["settings"] = orm.Dict(self._train_settings(fine_tune))
        if fine_tune:
            inputs["parent_model"] = self.ctx.model
        k = self.ctx.iteration
        self.ctx.attempt = "_scratch" if scratch else ""
        inputs.setdefault("metadata", {})["call_link_label"] = f"train_{k}{self.ctx.attempt}"
        how = "from scratch" if not fine_tune else "fine-tuning the previous committee"
        self.report(
            f"iteration {k}: training a committee of {self.knobs.committee_size} on "
            f"{self.ctx.dataset.n_conformations} conformations ({how})"
        )
        self.ctx.fine_tuned = fine_tune
        self.ctx.training_resumes = 0
        return ToContext(training=self._launch(TrainCalculation, **inputs))

    def should_resume_training(self) -> bool:
        """The scheduler killed the training at its walltime after a checkpoint: resume it (a few times)."""
        node = self.ctx.training
        return (
            node.exit_status == KILLED_AT_WALLTIME
            and checkpoint_epoch(node) is not None
            and self.ctx.training_resumes < TRAINING_RESUMES
        )

    def resume_training(self):
        """The killed job again, same inputs, continuing from its checkpoint (epoch, optimizer, EMA, RNG)."""
        node = self.ctx.training
        self._time("train", node)
        self.ctx.training_resumes += 1
        builder = node.get_builder_restart()
        builder.restart_folder = node.outputs.remote_folder
        inputs = builder._inputs(prune=True)
        inputs["metadata"]["call_link_label"] = (
            f"train_{self.ctx.iteration}{self.ctx.attempt}_resume{self.ctx.training_resumes}"
        )
        self.report(
            f"{node.process_label}<{node.pk}> was killed at the scheduler's walltime; resuming it from its "
            f"checkpoint of epoch {checkpoint_epoch(node)} ({self.ctx.training_resumes} of {TRAINING_RESUMES})"
        )
        return ToContext(training=self._launch(TrainCalculation, **inputs))

    def inspect_training(self):
        node = self.ctx.training
        self._time("train", node)
        if not node.is_finished_ok and node.exit_status != TRAINING_INCOMPLETE:
            return self._fail(self.exit_codes.ERROR_TRAINING_FAILED.format(message=node.exit_message))
        if node.exit_status == TRAINING_INCOMPLETE:
            self.report("training hit the wall time; continuing with the best model it saved")
        self.ctx.model = node.outputs.model
        return None

    def run_fixed_test(self):
        return ToContext(
            fixed_test=self._test(
                self.ctx.fixed_test_dataset, f"test_{self.ctx.iteration}{self.ctx.attempt}", subset="test"
            )
        )

    def _test(self, dataset: PESDataset, label: str, subset: str = "all"):
        inputs = {
            "code": self.inputs.train.code,
            "model": self.ctx.model,
            "dataset": dataset,
            "settings": orm.Dict({"subset": subset, **self._split()}),
            "metadata": {"call_link_label": label, "options": self._test_options()},
        }
        return self._launch(ModelTestCalculation, **inputs)

    def _test_options(self) -> dict[str, Any]:
        """The training job's scheduler options, without what belongs to mlpes.train itself (its parser)."""
        options = dict(self.inputs.train.get("metadata", {}).get("options", {}))
        for own in ("parser_name", "input_filename", "output_filename"):
            options.pop(own, None)
        return options

    def _split(self) -> dict[str, Any]:
        settings = self.inputs.train.settings.get_dict() if "settings" in self.inputs.train else {}
        split = settings.get("split") or {}
        return {"split": split} if split else {}

    def inspect_fixed_test(self) -> None:
        node = self.ctx.fixed_test
        self._time("test", node)
        if not node.is_finished_ok:
            self.report(
                f"the fixed test set could not be evaluated ({node.exit_message}); continuing without"
            )
            self.ctx.test_metrics = None
            self.ctx.retrain_scratch = False
            return
        metrics = node.outputs.metrics.get_dict()
        self.ctx.test_metrics = metrics
        worse = self._worse_than_parent(metrics)
        # a committee trained from scratch is kept as it is: the fallback runs at most once per iteration
        self.ctx.retrain_scratch = bool(self.ctx.fine_tuned and self.knobs.scratch_fallback and worse)
        if self.ctx.retrain_scratch:
            self.report(
                f"the fine-tuned committee is worse than its parent on the fixed test set ({worse}); "
                "retraining from scratch"
            )

    def _worse_than_parent(self, metrics: dict[str, Any]) -> str:
        parent = self.ctx.parent_test
        if not parent:
            return ""
        tolerances = self.knobs.tolerances
        for name, tolerance in (("energy", tolerances.energy_mae), ("forces", tolerances.forces_mae)):
            new, old = (metrics.get(name) or {}).get("mae"), (parent.get(name) or {}).get("mae")
            # worse by half again AND no longer within the tolerance: a committee that still meets the target
            # on the fixed test set has only traded a little accuracy there for the wider data
            if new is not None and old is not None and new > 1.5 * old and new > tolerance:
                return f"{name} MAE {new:.3g} vs {old:.3g}"
        return ""

    def should_retrain_from_scratch(self) -> bool:
        return bool(self.ctx.retrain_scratch)

    # --- characterization --------------------------------------------------------------------------------------
    def run_characterization(self):
        self.ctx.retrain_scratch = False
        self.ctx.parent_test = self.ctx.test_metrics
        inputs = self.exposed_inputs(CharacterizeCalculation, namespace="characterize")
        tasks = self._tasks(inputs["tasks"].get_dict(), self.ctx.ts_structure is not None, self.knobs)
        if "seed" in tasks["dmc"]:  # a new random stream each iteration, reproducible from the input seed
            tasks["dmc"]["seed"] = int(tasks["dmc"]["seed"]) + self.ctx.iteration
        inputs["tasks"] = orm.Dict(tasks)
        inputs.update(
            model=self.ctx.model, structure=self.ctx.structure, charge=orm.Float(self.inputs.charge.value)
        )
        if self.ctx.ts_structure is not None:
            inputs["ts_structure"] = self.ctx.ts_structure
        inputs.setdefault("metadata", {})["call_link_label"] = f"characterize_{self.ctx.iteration}"
        return ToContext(characterization=self._launch(CharacterizeCalculation, **inputs))

    def inspect_characterization(self):
        node = self.ctx.characterization
        self._time("characterize", node)
        if "results" not in node.outputs or "minimum" not in node.outputs:
            return self._fail(self.exit_codes.ERROR_CHARACTERIZATION_FAILED.format(message=node.exit_message))
        results = node.outputs.results.get_dict()
        dmc = results.get("dmc") or {}
        optimize = results.get("optimize") or {}
        if optimize.get("saddle_escaped"):
            self.report(
                "the model's stationary point was a saddle; continued from the lower structure found along "
                "its imaginary mode"
            )
        self.report(
            f"iteration {self.ctx.iteration}: DMC {dmc.get('outcome', 'completed')}, {dmc.get('n_holes', 0)} holes, "
            f"ZPE {dmc.get('zpe_cm')} +- {dmc.get('zpe_error_cm')} cm^-1"
        )
        if "transition_state" in node.outputs:
            self.ctx.ts_structure = node.outputs.transition_state
        self.ctx.structure = node.outputs.minimum  # the next model starts from this one's minimum
        return None

    # --- labelling: validation geometries, holes, candidates -------------------------------------------------
    def _labellable(self, dataset: PESDataset, kind: str, cap: int | None = None) -> list[int]:
        """Indices of ``dataset`` the reference method can label (no atoms closer than ``hole_min_distance``),
        chosen for diversity when more than ``cap``; the others are reported, never silently dropped."""
        from aiida_mlpes.core.characterize.holes import select_diverse

        arrays = dataset.get_arrays()
        problems = structure_problems(
            arrays,
            self.inputs.charge.value,
            self.inputs.multiplicity.value,
            self.knobs.hole_min_distance,
            118,
        )
        usable = [i for i in range(len(arrays)) if i not in problems]
        if problems:
            self.report(f"{len(problems)} {kind} cannot be labelled (e.g. {next(iter(problems.values()))})")
        if cap is not None and len(usable) > cap:
            n = int(arrays.n_atoms[0])
            positions = arrays.select(usable).positions.reshape(len(usable), n, 3)
            chosen = select_diverse(arrays.atomic_numbers[:n], positions, cap, seed=self.ctx.iteration)
            usable = [usable[int(i)] for i in chosen]
        return sorted(set(usable))

    def run_labelling(self):
        node = self.ctx.characterization
        k = self.ctx.iteration
        extra = (
            {"transition_state": node.outputs.transition_state} if "transition_state" in node.outputs else {}
        )
        geometries = functions.validation_structures(
            node.outputs.minimum,
            orm.Float(self.knobs.finite_difference_step),
            orm.Bool(self.knobs.validate_frequencies),
            **extra,
            metadata={"call_link_label": f"validation_structures_{k}"},
        )
        todo = {"validation": (geometries, None)}
        if "holes" in node.outputs:
            todo["holes"] = (
                node.outputs.holes,
                self._labellable(node.outputs.holes, "holes", self.knobs.max_holes_labelled),
            )
        if "candidates" in node.outputs:
            todo["candidates"] = (
                node.outputs.candidates,
                self._labellable(node.outputs.candidates, "candidates"),
            )
        jobs = {}
        for kind, (dataset, indices) in todo.items():
            if indices is not None and not indices:
                continue
            try:
                jobs[kind] = self._labelling(dataset, f"label_{kind}_{k}", indices)
            except (
                ValueError
            ) as exc:  # the reference work chain refused the inputs: report, go on without them
                self.report(f"the {kind} could not be submitted for labelling: {exc}")
        counts = {kind: len(i) if i is not None else d.n_conformations for kind, (d, i) in todo.items()}
        self.report("labelling " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
        return ToContext(**{f"labels_{kind}": job for kind, job in jobs.items()})

    def inspect_labelling(self):
        self.ctx.new_labels = {}
        for kind in LABEL_KINDS:
            node = self.ctx.get(f"labels_{kind}")
            if node is None:
                continue
            self._time(f"label_{kind}", node)
            self._report_excluded(node)
            if "dataset" in node.outputs:
                self.ctx.new_labels[kind] = node.outputs.dataset
            else:
                self.report(
                    f"no {kind} structure could be labelled ({node.exit_message}); continuing without them"
                )
        for kind in LABEL_KINDS:
            self.ctx.pop(f"labels_{kind}", None)
        return None

    def run_scoring(self):
        k = self.ctx.iteration
        node = self.ctx.characterization
        jobs = {}
        for kind, dataset in self.ctx.new_labels.items():
            jobs[f"score_{kind}"] = self._test(dataset, f"test_{kind}_{k}")
        if "validation" in self.ctx.new_labels:
            extra = (
                {"transition_state": node.outputs.transition_state}
                if "transition_state" in node.outputs
                else {}
            )
            self.ctx.validation = functions.validate_against_reference(
                self.ctx.new_labels["validation"],
                node.outputs.minimum,
                node.outputs.results,
                orm.Float(self.knobs.finite_difference_step),
                orm.Bool(self.knobs.validate_frequencies),
                **extra,
                metadata={"call_link_label": f"validate_{k}"},
            )
        else:
            self.ctx.validation = None
        return ToContext(**jobs)

    def record(self):
        k = self.ctx.iteration
        node = self.ctx.characterization
        validation = self.ctx.validation
        reference_min = (
            validation.get_dict().get("reference_energy_minimum") if validation is not None else None
        )
        parts: dict[str, orm.Data] = {"characterization": node.outputs.results}
        discovered = []
        for kind in self.ctx.new_labels:
            test = self.ctx.pop(f"score_{kind}")
            self._time("test", test)
            if not test.is_finished_ok:
                self.report(f"scoring the {kind} labels failed ({test.exit_message})")
                continue
            score = functions.score_new_labels(
                test.outputs.predictions,
                orm.Str(kind),
                orm.Float(self.knobs.tolerances.hole_confirmation),
                orm.Float(reference_min if reference_min is not None else float("nan")),
                metadata={"call_link_label": f"score_{kind}_{k}"},
            )
            parts[f"new_{kind}"] = score
            discovered += [(kind, i) for i in score.get_dict().get("discovered_minima", [])]
        if self.ctx.test_metrics is not None:
            parts["test"] = orm.Dict(self.ctx.test_metrics)
        if validation is not None:
            parts["validation"] = validation
        if self.ctx.previous is not None:
            parts["previous"] = self.ctx.previous
        parts["timings"] = orm.Dict(self.ctx.timings)
        parts["info"] = orm.Dict(
            {
                "n_conformations": self.ctx.dataset.n_conformations,
                "model_uuid": self.ctx.model.uuid,
                "fine_tuned": bool(self.ctx.fine_tuned),
                "characterization_uuid": node.uuid,
            }
        )
        record = functions.record_iteration(
            orm.Int(k), orm.Dict(self.ctx.settings), **parts, metadata={"call_link_label": f"record_{k}"}
        )
        self.ctx.timings = {}
        self.ctx.records[f"iteration_{k}"] = record
        self.ctx.previous = record
        verdict = record.get_dict()
        self.ctx.failing = [name for name, c in verdict["criteria"].items() if not c["passed"]]
        self.ctx.converged = verdict["converged"] and k >= self.knobs.min_iterations
        self.report(
            f"iteration {k}: "
            + ", ".join(
                f"{name} {'ok' if c['passed'] else 'FAIL'}" for name, c in verdict["criteria"].items()
            )
        )
        if discovered:
            kind, index = discovered[0]
            self.report(f"the reference confirms a lower minimum among the {kind}; continuing from it")
            self.ctx.structure = functions.lowest_structure(
                self.ctx.new_labels[kind],
                orm.Int(index),
                metadata={"call_link_label": f"discovered_minimum_{k}"},
            )
        for kind, dataset in self.ctx.new_labels.items():  # labels are never lost: they train the next model
            self._merge(dataset, f"merge_{kind}_{k}")

    # --- outputs -------------------------------------------------------------------------------------------------
    def _emit(self) -> None:
        if self.ctx.model is not None:
            self.out("model", self.ctx.model)
        if self.ctx.dataset is not None:
            self.out("dataset", self.ctx.dataset)
        if self.ctx.characterization is not None and "results" in self.ctx.characterization.outputs:
            self.out("characterization", self.ctx.characterization.outputs.results)
            if "minimum" in self.ctx.characterization.outputs:
                self.out("minimum", self.ctx.characterization.outputs.minimum)
        # also with no finished iteration: an empty history says so
        outputs = functions.collect_history(
            orm.Dict(self.ctx.settings), **self.ctx.records, metadata={"call_link_label": "history"}
        )
        self.out("history", outputs["history"])
        self.out("convergence_plot", outputs["convergence_plot"])

    def results(self):
        self._emit()
        if self.ctx.converged:
            self.report(f"converged after {self.ctx.iteration} iterations: every criterion holds")
            return None
        return self.exit_codes.WARNING_NOT_CONVERGED.format(
            iterations=self.ctx.iteration, failing=", ".join(self.ctx.failing) or "minimum iterations"
        )
