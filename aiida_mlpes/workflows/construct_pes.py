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

from aiida import orm
from aiida.engine import ToContext, if_, while_

from aiida_mlpes.calculations.characterize import CharacterizeCalculation
from aiida_mlpes.calculations.sample import SampleCalculation
from aiida_mlpes.calculations.train import TrainCalculation
from aiida_mlpes.core.convergence import LoopSettings
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.data.model import PESModel
from aiida_mlpes.workflows.construct_pes_inputs import ConstructPESInputs
from aiida_mlpes.workflows.construct_pes_labels import LABEL_KINDS, LabellingSteps
from aiida_mlpes.workflows.construct_pes_training import TRAINING_INCOMPLETE, TrainingSteps
from aiida_mlpes.workflows.reference import ReferenceWorkChain

__all__ = ("LABEL_KINDS", "TRAINING_INCOMPLETE", "ConstructPESWorkChain")


class ConstructPESWorkChain(ConstructPESInputs, TrainingSteps, LabellingSteps):
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
                cls.inspect_training,
                cls.run_fixed_test,
                cls.inspect_fixed_test,
                if_(cls.should_retrain_from_scratch)(
                    cls.run_training, cls.inspect_training, cls.run_fixed_test, cls.inspect_fixed_test
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

    def should_sample(self) -> bool:
        return bool(self.inputs.get("sample"))

    def run_sampling(self):
        """Sample around the molecule and, with a TS guess, around the transition state too (in parallel): the
        barrier region is then in the data from the start, not only after DMC or the MEP reach it."""
        jobs = {"sample": self._sampling(self.inputs.structure, "sample")}
        if self.ctx.ts_structure is not None and self.knobs.sample_transition_state:
            jobs["sample_ts"] = self._sampling(self.ctx.ts_structure, "sample_ts", saddle=True)
        self.report(
            "sampling structures around the "
            + " and the ".join({"sample": "molecule", "sample_ts": "transition state"}[name] for name in jobs)
        )
        return ToContext(**jobs)

    def _sampling(self, structure: orm.StructureData, label: str, saddle: bool = False):
        inputs = self.exposed_inputs(SampleCalculation, namespace="sample")
        inputs["structures"] = {"molecule": structure}
        parameters = dict(inputs["settings"].get_dict().get("parameters") or {})
        if saddle and parameters.get(
            "optimize"
        ):  # a TS guess is optimised to the saddle point, not a minimum
            inputs["settings"] = orm.Dict(
                {**inputs["settings"].get_dict(), "parameters": {**parameters, "optimize": "saddle"}}
            )
        inputs.setdefault("metadata", {})["call_link_label"] = label
        return self._launch(SampleCalculation, **inputs)

    def inspect_sampling(self):
        self.ctx.samples = {}
        for name in ("sample", "sample_ts"):
            node = self.ctx.get(name)
            if node is None:
                continue
            self._time("sample", node)
            if "dataset" not in node.outputs:
                if name == "sample":
                    return self._fail(
                        self.exit_codes.ERROR_SAMPLING_FAILED.format(
                            message=node.exit_message or "no samples"
                        )
                    )
                self.report(
                    f"sampling around the transition state failed ({node.exit_message}); going on without"
                )
                continue
            if not node.is_finished_ok:
                self.report(f"{name} ended with exit {node.exit_status}; labelling the samples it collected")
            self.ctx.samples[name] = node.outputs.dataset
        return None

    def run_initial_labelling(self):
        jobs = {}
        for name, samples in self.ctx.samples.items():
            self.report(f"labelling {samples.n_conformations} samples ({name}) with the reference method")
            jobs[f"initial_{name}"] = self._labelling(samples, "label_0" + name.removeprefix("sample"))
        return ToContext(**jobs)

    def add_initial(self):
        for name in self.ctx.samples:
            node = self.ctx[f"initial_{name}"]
            self._time("label_0", node)
            if "dataset" not in node.outputs:
                if name == "sample":
                    return self._fail(
                        self.exit_codes.ERROR_LABELLING_FAILED.format(
                            message=node.exit_message or "nothing labelled"
                        )
                    )
                self.report(f"no {name} structure could be labelled ({node.exit_message}); going on without")
                continue
            self._report_excluded(node)
            self._merge(node.outputs.dataset, "merge_0" + name.removeprefix("sample"))
        return None

    def fix_test_set(self) -> None:
        """The test split of the data before iteration 1 is the fixed test set of every iteration (splits depend
        only on each conformation's hash, so these conformations stay in the test split as data grow)."""
        self.ctx.fixed_test_dataset = self.ctx.dataset

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

    def results(self):
        self._emit()
        if self.ctx.converged:
            self.report(f"converged after {self.ctx.iteration} iterations: every criterion holds")
            return None
        return self.exit_codes.WARNING_NOT_CONVERGED.format(
            iterations=self.ctx.iteration, failing=", ".join(self.ctx.failing) or "minimum iterations"
        )
