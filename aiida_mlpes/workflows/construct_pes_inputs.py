"""Inputs of ``ConstructPESWorkChain``: everything checked before anything runs, and the protocol builder."""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.engine import WorkChain

from aiida_mlpes import protocols
from aiida_mlpes.calculations.sample import SampleCalculation
from aiida_mlpes.core.characterize.task import check_tasks
from aiida_mlpes.core.convergence import LoopSettings
from aiida_mlpes.core.models import ModelConfig
from aiida_mlpes.core.training import TrainingConfig
from aiida_mlpes.workflows.reference import ReferenceWorkChain, _calculation_class


class ConstructPESInputs(WorkChain):
    """Input validation and ``get_builder_from_protocol`` of the refinement loop."""

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
