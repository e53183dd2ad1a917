"""What every step of ``ConstructPESWorkChain`` shares: its settings, launching (and adopting) children, timing,
labelling, merging and testing, and emitting the outputs on any exit."""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.engine import WorkChain

from aiida_mlpes.calculations.merge import merge_datasets
from aiida_mlpes.calculations.test import ModelTestCalculation
from aiida_mlpes.core.convergence import LoopSettings
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.workflows import construct_pes_functions as functions
from aiida_mlpes.workflows.reference import ReferenceWorkChain
from aiida_mlpes.workflows.replay import launched_child


class LoopBase(WorkChain):
    """Helpers of the refinement loop's steps (no outline of its own)."""

    @property
    def knobs(self) -> LoopSettings:
        return LoopSettings.model_validate(self.ctx.settings)

    def _launch(self, process_class, **inputs):
        """Submit a child process, or adopt the one a first try of this step launched: after a daemon crash the
        engine replays the step from its last checkpoint, and the child launched then runs anyway."""
        from aiida.common.links import LinkType
        from aiida.engine import CalcJob

        label = inputs["metadata"]["call_link_label"]
        link_type = LinkType.CALL_CALC if issubclass(process_class, CalcJob) else LinkType.CALL_WORK
        launched = launched_child(self, link_type, label)
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

    def _labelling(self, structures: PESDataset, label: str, indices: list[int] | None = None):
        inputs = self.exposed_inputs(ReferenceWorkChain, namespace="reference")
        inputs.update(structures=structures, charge=self.inputs.charge, multiplicity=self.inputs.multiplicity)
        if indices is not None:
            inputs["indices"] = orm.List(indices)
            inputs["min_distance"] = orm.Float(self.knobs.hole_min_distance)
        inputs.setdefault("metadata", {})["call_link_label"] = label
        return self._launch(ReferenceWorkChain, **inputs)

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
