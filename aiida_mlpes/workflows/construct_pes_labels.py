"""Labelling steps of ``ConstructPESWorkChain``: validation geometries, holes and candidates labelled side by side,
scored before training on them, recorded with the stopping rule's verdict, and merged."""

from __future__ import annotations

from aiida import orm
from aiida.engine import ToContext

from aiida_mlpes.core.reference.validation import structure_problems
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.workflows import construct_pes_functions as functions
from aiida_mlpes.workflows.construct_pes_base import LoopBase

#: Kinds of newly labelled structures, in the order they are labelled and scored.
LABEL_KINDS = ("validation", "holes", "candidates")


class LabellingSteps(LoopBase):
    """Label, score and record each iteration's new structures."""

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
