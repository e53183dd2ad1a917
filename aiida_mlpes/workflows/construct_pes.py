"""``ConstructPESWorkChain`` (``mlpes.construct_pes``): build an ML-PES and refine it until DMC finds no holes.

Iteration 0 samples structures around the given molecule (``mlpes.sample``) and labels them with the
reference method (``mlpes.reference``). Every iteration then trains a model on all data so far
(``mlpes.train``, fine-tuned from the previous model), characterizes its surface with diffusion Monte Carlo
(``mlpes.characterize``) and, if DMC found holes, labels them and merges them into the dataset
(``merge_datasets``) for the next iteration. The loop ends when DMC finds no holes (converged) or after
``max_iterations``. Each step is a stored process, so the final model links back to every calculation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction, if_, while_

from aiida_mlpes.calculations.characterize import CharacterizeCalculation
from aiida_mlpes.calculations.merge import merge_datasets
from aiida_mlpes.calculations.sample import SampleCalculation
from aiida_mlpes.calculations.train import TrainCalculation
from aiida_mlpes.core.characterize.task import check_tasks
from aiida_mlpes.core.models import ModelConfig
from aiida_mlpes.core.reference.validation import structure_problems
from aiida_mlpes.core.training import TrainingConfig
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.data.model import PESModel
from aiida_mlpes.workflows.reference import ReferenceWorkChain

#: Exit status of TrainCalculation when the wall time ended training early: the best model is still output.
TRAINING_INCOMPLETE = 400


@calcfunction
def collect_history(**nodes: orm.Data) -> orm.Dict:
    """Per-iteration summary from the iterations' nodes: ``dataset_K`` (PESDataset trained on),
    ``metrics_K`` (Dict of the training), optional ``zpe_K`` (Float, eV) and ``holes_K`` (PESDataset)."""
    iterations = sorted({int(key.rsplit("_", 1)[1]) for key in nodes})
    history = []
    for k in iterations:
        metrics = nodes[f"metrics_{k}"].get_dict() if f"metrics_{k}" in nodes else {}
        history.append(
            {
                "iteration": k,
                "n_conformations": nodes[f"dataset_{k}"].n_conformations,
                "n_holes": nodes[f"holes_{k}"].n_conformations if f"holes_{k}" in nodes else 0,
                "zpe_eV": nodes[f"zpe_{k}"].value if f"zpe_{k}" in nodes else None,
                "test_metrics": metrics.get("test", {}),
            }
        )
    return orm.Dict({"iterations": history})


class ConstructPESWorkChain(WorkChain):
    """Sample, label, train, characterize; relabel DMC holes and retrain until none are left."""

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.input("structure", valid_type=orm.StructureData, help="The molecule (its minimum, or a guess).")
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
            help="Labelled data to start from; sampling is skipped when given without `sample` inputs.",
        )
        spec.input(
            "max_iterations",
            valid_type=orm.Int,
            default=lambda: orm.Int(5),
            serializer=orm.to_aiida_type,
            help="Train/characterize cycles at most.",
        )
        spec.input(
            "max_new_structures",
            valid_type=orm.Int,
            default=lambda: orm.Int(100),
            serializer=orm.to_aiida_type,
            help="Holes labelled per iteration at most (evenly chosen among all holes found).",
        )
        spec.input(
            "hole_min_distance",
            valid_type=orm.Float,
            default=lambda: orm.Float(0.3),
            serializer=orm.to_aiida_type,
            help="Holes are labelled down to this interatomic distance (Angstrom): collapsed walkers teach the "
            "model its short-range repulsion. Holes with closer atoms are reported and skipped.",
        )
        spec.input(
            "fine_tune",
            valid_type=orm.Bool,
            default=lambda: orm.Bool(True),
            serializer=orm.to_aiida_type,
            help="Start each retraining from the previous model instead of from scratch.",
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
            namespace_options={"help": "The reference method that labels samples and holes."},
        )
        spec.expose_inputs(
            TrainCalculation,
            namespace="train",
            exclude=("dataset", "parent_model", "restart_folder"),
            namespace_options={"help": "Model and training settings."},
        )
        spec.expose_inputs(
            CharacterizeCalculation,
            namespace="characterize",
            exclude=("model", "driver", "structure", "charge"),
            namespace_options={
                "help": "Characterization tasks; must include dmc (the hole search). 'optimize' (on the model's "
                "surface, from `structure`) is added when missing."
            },
        )
        # The exposed validators expect the ports this work chain fills in itself (structures, dataset, model);
        # validate_inputs checks the same things with those ports supplied.
        for namespace in ("sample", "train", "characterize"):
            spec.inputs[namespace].validator = None
        spec.inputs.validator = cls.validate_inputs
        spec.outline(
            cls.setup,
            if_(cls.should_sample)(
                cls.run_sampling, cls.inspect_sampling, cls.run_labelling, cls.add_labelled
            ),
            while_(cls.should_iterate)(
                cls.run_training,
                cls.inspect_training,
                cls.run_characterization,
                cls.inspect_characterization,
                if_(cls.has_holes)(cls.run_labelling, cls.add_labelled),
            ),
            cls.results,
        )
        spec.output("model", valid_type=PESModel, help="The last trained model.")
        spec.output("dataset", valid_type=PESDataset, help="All labelled data (samples and holes).")
        spec.output("history", valid_type=orm.Dict, help="Per iteration: data size, holes, ZPE, test errors.")
        spec.output("characterization", valid_type=orm.Dict, help="Results of the last characterization.")
        spec.exit_code(401, "ERROR_SAMPLING_FAILED", message="Sampling failed: {message}")
        spec.exit_code(402, "ERROR_LABELLING_FAILED", message="Labelling failed: {message}")
        spec.exit_code(403, "ERROR_TRAINING_FAILED", message="Training failed: {message}")
        spec.exit_code(404, "ERROR_CHARACTERIZATION_FAILED", message="Characterization failed: {message}")
        spec.exit_code(
            411,
            "ERROR_HOLES_NOT_LABELLABLE",
            message="DMC found {holes} holes, all with atoms closer than hole_min_distance: they cannot be "
            "labelled; the outputs hold the last model.",
        )
        spec.exit_code(
            410,
            "WARNING_NOT_CONVERGED",
            message="DMC still found {holes} holes after {iterations} iterations; the outputs hold the last model.",
        )

    @staticmethod
    def validate_inputs(inputs: dict[str, Any], _: Any) -> str | None:
        if "initial_dataset" not in inputs and not inputs.get("sample"):
            return "give `sample` inputs, an `initial_dataset`, or both"
        tasks = inputs["characterize"]["tasks"].get_dict()
        if "dmc" not in tasks:
            return "characterize.tasks must include 'dmc': the refinement loop is driven by DMC holes"
        if inputs.get("sample"):
            sample = {**inputs["sample"], "structures": {"molecule": inputs["structure"]}}
            message = SampleCalculation.validate_inputs(sample, None)
            if message:
                return f"sample: {message}"
        try:
            check_tasks(tasks, has_ts=False)
        except ValueError as exc:
            return f"characterize: {exc}"
        settings = inputs["train"]["settings"].get_dict() if "settings" in inputs["train"] else {}
        try:
            TrainingConfig.from_dict(dict(settings.get("training") or {}))
            ModelConfig.from_dict({"elements": [1], **dict(settings.get("model") or {})})
        except (ValueError, TypeError) as exc:
            return f"train.settings: {exc}"
        if inputs["max_iterations"].value < 1:
            return "max_iterations must be at least 1"
        if inputs["max_new_structures"].value < 1:
            return "max_new_structures must be at least 1"
        return None

    # ---------------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        self.ctx.iteration = 0
        self.ctx.dataset = self.inputs.get("initial_dataset")
        self.ctx.model = None
        self.ctx.to_label = None
        self.ctx.n_holes = None
        self.ctx.label_indices = None
        self.ctx.history_nodes = {}
        self.ctx.stuck = False

    def should_sample(self) -> bool:
        return bool(self.inputs.get("sample"))

    def run_sampling(self):
        inputs = self.exposed_inputs(SampleCalculation, namespace="sample")
        inputs["structures"] = {"molecule": self.inputs.structure}
        inputs.setdefault("metadata", {})["call_link_label"] = "sample"
        self.report("sampling structures around the molecule")
        return ToContext(sample=self.submit(SampleCalculation, **inputs))

    def inspect_sampling(self):
        node = self.ctx.sample
        if "dataset" not in node.outputs:
            return self.exit_codes.ERROR_SAMPLING_FAILED.format(message=node.exit_message or "no samples")
        if not node.is_finished_ok:
            self.report(f"sampling ended with exit {node.exit_status}; labelling the samples it collected")
        self.ctx.to_label = node.outputs.dataset
        self.ctx.label_indices = None
        return None

    def run_labelling(self):
        inputs = self.exposed_inputs(ReferenceWorkChain, namespace="reference")
        inputs.update(
            structures=self.ctx.to_label,
            charge=self.inputs.charge,
            multiplicity=self.inputs.multiplicity,
        )
        if self.ctx.label_indices is not None:  # labelling holes
            inputs["indices"] = orm.List(self.ctx.label_indices)
            inputs["min_distance"] = self.inputs.hole_min_distance
        inputs.setdefault("metadata", {})["call_link_label"] = f"label_{self.ctx.iteration}"
        count = (
            self.ctx.to_label.n_conformations
            if self.ctx.label_indices is None
            else len(self.ctx.label_indices)
        )
        self.report(f"labelling {count} structures with the reference method")
        return ToContext(labelling=self.submit(ReferenceWorkChain, **inputs))

    def add_labelled(self):
        node = self.ctx.labelling
        if "dataset" not in node.outputs:
            return self.exit_codes.ERROR_LABELLING_FAILED.format(
                message=node.exit_message or "nothing labelled"
            )
        excluded = node.outputs.excluded.get_dict() if "excluded" in node.outputs else {}
        if excluded:
            self.report(
                f"{len(excluded)} structures excluded by the reference work chain (see its `excluded`)"
            )
        new = node.outputs.dataset
        if self.ctx.dataset is None:
            self.ctx.dataset = new
        else:
            merged = merge_datasets(
                previous=self.ctx.dataset,
                new=new,
                metadata={"call_link_label": f"merge_{self.ctx.iteration}"},
            )
            self.ctx.dataset = merged["dataset"]
        self.report(f"dataset now holds {self.ctx.dataset.n_conformations} conformations")
        return None

    def should_iterate(self) -> bool:
        if self.ctx.n_holes == 0 or self.ctx.stuck:
            return False
        return self.ctx.iteration < self.inputs.max_iterations.value

    def run_training(self):
        self.ctx.iteration += 1
        inputs = self.exposed_inputs(TrainCalculation, namespace="train")
        inputs["dataset"] = self.ctx.dataset
        if self.ctx.model is not None and self.inputs.fine_tune.value:
            inputs["parent_model"] = self.ctx.model
        inputs.setdefault("metadata", {})["call_link_label"] = f"train_{self.ctx.iteration}"
        self.report(
            f"iteration {self.ctx.iteration}: training on {self.ctx.dataset.n_conformations} conformations"
        )
        return ToContext(training=self.submit(TrainCalculation, **inputs))

    def inspect_training(self):
        node = self.ctx.training
        if not node.is_finished_ok and node.exit_status != TRAINING_INCOMPLETE:
            return self.exit_codes.ERROR_TRAINING_FAILED.format(message=node.exit_message)
        if node.exit_status == TRAINING_INCOMPLETE:
            self.report("training hit the wall time; continuing with the best model it saved")
        self.ctx.model = node.outputs.model
        return None

    def run_characterization(self):
        inputs = self.exposed_inputs(CharacterizeCalculation, namespace="characterize")
        tasks = inputs["tasks"].get_dict()
        if "optimize" not in tasks:  # DMC and frequencies need the minimum of this model's surface
            inputs["tasks"] = orm.Dict({"optimize": {}, **tasks})
        inputs.update(
            model=self.ctx.model, structure=self.inputs.structure, charge=orm.Float(self.inputs.charge.value)
        )
        inputs.setdefault("metadata", {})["call_link_label"] = f"characterize_{self.ctx.iteration}"
        return ToContext(characterization=self.submit(CharacterizeCalculation, **inputs))

    def inspect_characterization(self):
        node = self.ctx.characterization
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_CHARACTERIZATION_FAILED.format(message=node.exit_message)
        holes = node.outputs.holes if "holes" in node.outputs else None
        n_holes = holes.n_conformations if holes is not None else 0
        k = self.ctx.iteration
        self.ctx.history_nodes[f"dataset_{k}"] = self.ctx.dataset
        if "metrics" in self.ctx.training.outputs:
            self.ctx.history_nodes[f"metrics_{k}"] = self.ctx.training.outputs.metrics
        if "zpe" in node.outputs:
            self.ctx.history_nodes[f"zpe_{k}"] = node.outputs.zpe
        if holes is not None:
            self.ctx.history_nodes[f"holes_{k}"] = holes
        self.ctx.characterization_results = node.outputs.results
        self.ctx.n_holes = n_holes
        self.report(f"iteration {self.ctx.iteration}: DMC found {n_holes} holes")
        self.ctx.to_label = holes
        if n_holes:
            self.ctx.label_indices = self._hole_indices(holes)
            if not self.ctx.label_indices:
                self.report(
                    "every hole has atoms closer than hole_min_distance: none can be labelled; stopping"
                )
                self.ctx.stuck = True
        return None

    def _hole_indices(self, holes: PESDataset) -> list[int]:
        """Holes the reference method can label (no overlapping atoms), evenly thinned to the cap."""
        arrays = holes.get_arrays()
        problems = structure_problems(
            arrays,
            self.inputs.charge.value,
            self.inputs.multiplicity.value,
            self.inputs.hole_min_distance.value,
            118,
        )
        usable = [i for i in range(len(arrays)) if i not in problems]
        if problems:
            self.report(f"{len(problems)} holes skipped (e.g. {next(iter(problems.values()))})")
        cap = self.inputs.max_new_structures.value
        if len(usable) > cap:
            usable = [usable[int(k)] for k in np.linspace(0, len(usable) - 1, cap).round()]
        return sorted(set(usable))

    def has_holes(self) -> bool:
        """Holes to label for a next iteration (none are labelled after the last one)."""
        more = self.ctx.iteration < self.inputs.max_iterations.value
        return bool(self.ctx.n_holes) and not self.ctx.stuck and more

    def results(self):
        self.out("model", self.ctx.model)
        self.out("dataset", self.ctx.dataset)
        self.out(
            "history", collect_history(**self.ctx.history_nodes, metadata={"call_link_label": "history"})
        )
        self.out("characterization", self.ctx.characterization_results)
        if self.ctx.stuck:
            return self.exit_codes.ERROR_HOLES_NOT_LABELLABLE.format(holes=self.ctx.n_holes)
        if self.ctx.n_holes:
            return self.exit_codes.WARNING_NOT_CONVERGED.format(
                holes=self.ctx.n_holes, iterations=self.ctx.iteration
            )
        self.report(f"converged after {self.ctx.iteration} iterations: DMC found no holes")
        return None
