"""``CharacterizeCalculation`` (``mlpes.characterize``): characterize a surface with ``aiida-mlpes-run characterize``.

Inputs: the ``model`` (PESModel) whose surface is characterized, or a reference ``driver`` (Dict, e.g.
``{"name": "tblite", "parameters": {"method": "GFN2-xTB"}}``) to characterize the reference itself; the
``structure`` (the minimum, or a guess with ``tasks.optimize``), an optional ``ts_structure``, and ``tasks``
(Dict: ``optimize``, ``optimize_ts``, ``frequencies``, ``mep``, ``mdp``, ``dmc``, ``explore``, each with the keyword
options of its function in :mod:`aiida_mlpes.core.characterize`). Everything is validated before submission.

Outputs: ``results`` (Dict: energies, frequencies in cm^-1, harmonic and DMC ZPE in eV and cm^-1, barriers,
hole counts, ``dmc.outcome``; non-finite numbers are stored as null), ``zpe`` (Float, eV, when DMC gave a
finite one), ``minimum`` and ``transition_state`` (StructureData), ``mep`` and ``mdp`` (TrajectoryData with
``energies`` in eV), ``dmc_traces`` (ArrayData), ``plots`` (FolderData of PNGs), ``holes`` (PESDataset of the
unlabelled hole geometries, when DMC found any) and ``candidates`` (PESDataset of the unlabelled explore
candidates). A DMC run that did not complete (``results.dmc.outcome`` other than "completed") is not a failure of
this calculation: the caller decides what it means.
"""

from __future__ import annotations

import io
from typing import Any

from aiida import orm
from aiida.common.folders import Folder

from aiida_mlpes.calculations.base import MlpesRunCalculation
from aiida_mlpes.core.characterize.task import FILES, check_tasks
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.data.model import PESModel
from aiida_mlpes.protocols import StageProtocolMixin


class CharacterizeCalculation(StageProtocolMixin, MlpesRunCalculation):
    PROTOCOL_SECTION = "characterize"

    """Harmonic frequencies, MEP, MDP and DMC (with hole detection) on an ML or reference surface."""

    TASK = "characterize"
    MODEL_FILE = "model.pt"
    STRUCTURE_FILE = "structure.xyz"
    TS_STRUCTURE_FILE = "ts_structure.xyz"
    PLOTS = [FILES["mep_plot"], FILES["mdp_plot"], FILES["dmc_plot"]]
    RETRIEVE_TEMPORARY = [
        FILES[k] for k in ("minimum", "ts", "mep", "mdp", "dmc", "holes", "candidates")
    ] + PLOTS

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.input(
            "model", valid_type=PESModel, required=False, help="The ML model whose surface is characterized."
        )
        spec.input(
            "driver",
            valid_type=orm.Dict,
            required=False,
            help="Instead of a model: a reference calculator {'name': 'tblite', 'parameters': {...}}.",
        )
        spec.input(
            "structure",
            valid_type=orm.StructureData,
            help="The minimum (or a guess of it with tasks.optimize).",
        )
        spec.input(
            "ts_structure",
            valid_type=orm.StructureData,
            required=False,
            help="The transition state (or a guess with tasks.optimize_ts); needed by mep and mdp.",
        )
        spec.input(
            "tasks",
            valid_type=orm.Dict,
            help="Tasks to run and their options: optimize, optimize_ts, frequencies, mep, mdp, dmc, explore "
            "(see aiida_mlpes.core.characterize.task).",
        )
        spec.input("charge", valid_type=orm.Float, default=lambda: orm.Float(0.0), help="Total charge (e).")
        spec.inputs["metadata"]["options"]["parser_name"].default = "mlpes.characterize"
        spec.inputs.validator = cls.validate_inputs
        spec.output("results", valid_type=orm.Dict, help="All numbers (eV, Angstrom, cm^-1).")
        spec.output(
            "zpe", valid_type=orm.Float, required=False, help="DMC zero-point energy (eV), when finite."
        )
        spec.output("minimum", valid_type=orm.StructureData, help="The minimum (optimised if asked).")
        spec.output("transition_state", valid_type=orm.StructureData, required=False, help="The TS.")
        spec.output("mep", valid_type=orm.TrajectoryData, required=False, help="Minimum energy path.")
        spec.output("mdp", valid_type=orm.TrajectoryData, required=False, help="Minimum dynamic path.")
        spec.output(
            "dmc_traces",
            valid_type=orm.ArrayData,
            required=False,
            help="DMC energy (E_ref - V_min, eV), population and mean potential per step; hole energies, "
            "steps and reasons; final walkers (Angstrom).",
        )
        spec.output("plots", valid_type=orm.FolderData, required=False, help="PNG plots (MEP, MDP, DMC).")
        spec.output(
            "holes", valid_type=PESDataset, required=False, help="Unlabelled geometries of the DMC holes."
        )
        spec.output(
            "candidates",
            valid_type=PESDataset,
            required=False,
            help="Unlabelled candidate geometries for validation (tasks.explore: DMC walkers and MD frames).",
        )

    @classmethod
    def get_builder_from_protocol(
        cls,
        code: orm.AbstractCode,
        model: PESModel,
        structure: orm.StructureData,
        protocol: str | None = None,
        overrides: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        ts_structure: orm.StructureData | None = None,
    ):
        """Characterize ``model`` from ``structure`` with the protocol's tasks (the ``characterize`` section of
        ``construct_pes.yaml``: optimise, frequencies, DMC); with ``ts_structure`` the TS is optimised and its MEP
        computed too. ``overrides`` (``{"tasks": {...}}``) change task options."""
        from aiida_mlpes.protocols import deep_merge, stage_inputs

        inputs, defaults = stage_inputs(cls.PROTOCOL_SECTION, protocol, overrides)
        tasks = dict(inputs["tasks"])
        builder = cls.get_builder()
        builder.code = code
        builder.model = model
        builder.structure = structure
        if ts_structure is not None:
            builder.ts_structure = ts_structure
            tasks.setdefault("optimize_ts", {})
            tasks.setdefault("mep", {})
        builder.tasks = orm.Dict(tasks)
        builder.metadata.options = deep_merge(defaults, options or {})
        return builder

    @staticmethod
    def validate_inputs(inputs: dict[str, Any], _: Any) -> str | None:
        if ("model" in inputs) == ("driver" in inputs):
            return "give exactly one of `model` (an ML surface) and `driver` (a reference calculator)"
        structure = inputs["structure"]
        if "driver" in inputs:
            driver = inputs["driver"].get_dict()
            if not isinstance(driver.get("name"), str) or driver["name"] == "mlpes":
                return "driver must be {'name': <reference calculator>, 'parameters': {...}}; use `model` for mlpes"
        else:
            missing = {site.kind_name for site in structure.sites} - set(inputs["model"].elements)
            if missing:
                return f"the structure holds elements {sorted(missing)} that the model was not trained on"
        ts = inputs.get("ts_structure")
        if ts is not None and [s.kind_name for s in ts.sites] != [s.kind_name for s in structure.sites]:
            return "structure and ts_structure must have the same atoms in the same order"
        try:
            check_tasks(inputs["tasks"].get_dict(), ts is not None)
        except ValueError as exc:
            return str(exc)
        return None

    def write_task_inputs(self, folder: Folder) -> dict[str, Any]:
        from ase.io import write

        settings: dict[str, Any] = {
            "structure": self.STRUCTURE_FILE,
            "tasks": self.inputs.tasks.get_dict(),
            "charge": self.inputs.charge.value,
            "source": self.node.uuid,
        }
        named = [("structure", self.STRUCTURE_FILE), ("ts_structure", self.TS_STRUCTURE_FILE)]
        for port, filename in named:
            if port in self.inputs:
                handle = io.StringIO()
                write(handle, self.inputs[port].get_ase(), format="extxyz")
                folder.create_file_from_filelike(io.StringIO(handle.getvalue()), filename, mode="w")
                settings[port] = filename
        settings["masses"] = [float(m) for m in self.inputs.structure.get_ase().get_masses()]
        if "model" in self.inputs:
            self.copy_node_file(self.inputs.model, self.MODEL_FILE)
            settings["driver"] = {"name": "mlpes", "parameters": {"model": self.MODEL_FILE}}
        else:
            settings["driver"] = self.inputs.driver.get_dict()
        return settings
