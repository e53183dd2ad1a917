"""``SampleCalculation`` (``mlpes.sample``): run a sampler of :mod:`aiida_mlpes.core.sampling` on any computer.

Inputs: the structures to start from, ``settings`` (Dict: ``sampler``, its ``parameters``, optional ``seed``
and ``label``), ``driver`` (Dict: ``name`` and ``parameters``, e.g. ``{"name": "tblite", "parameters":
{"method": "GFN2-xTB"}}``) and, when the driver is ``mlpes``, the ``model`` (PESModel) that drives it.
Everything is validated before submission (unknown or bad parameters, CV atoms that do not exist).

Outputs: ``dataset`` (PESDataset of the sampled structures; with the driver's energies and forces when
``settings.label`` is true, i.e. when the driver is the reference level, else unlabelled), ``trajectory``
(ArrayData: the driver energies along the trajectory and per-sample/per-system extras) and ``summary``
(Dict). When the driver fails the samples collected so far are still output, with exit code 410.
"""

from __future__ import annotations

import io
from typing import Any

from aiida import orm
from aiida.common.folders import Folder

from aiida_mlpes.calculations.base import MlpesRunCalculation
from aiida_mlpes.core.sampling.task import check_sample_settings
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.data.model import PESModel
from aiida_mlpes.protocols import StageProtocolMixin

SETTINGS_KEYS = {"sampler", "parameters", "seed", "label"}


class SampleCalculation(StageProtocolMixin, MlpesRunCalculation):
    PROTOCOL_SECTION = "sample"

    """Sample conformations with MD, MC, normal-mode sampling/scan or metadynamics."""

    TASK = "sample"
    STRUCTURES_FILE = "structures.xyz"
    SAMPLES_FILE = "samples.h5"
    TRAJECTORY_FILE = "trajectory.npz"
    MODEL_FILE = "model.pt"
    RETRIEVE_TEMPORARY = [SAMPLES_FILE, TRAJECTORY_FILE]

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.input_namespace(
            "structures",
            valid_type=orm.StructureData,
            dynamic=True,
            help="The starting structures, one or several (sampled in the order of their keys).",
        )
        spec.input(
            "settings",
            valid_type=orm.Dict,
            help="'sampler' (md, high_friction_md, mc, normal_mode_sampling, normal_mode_scan, metadynamics), "
            "its 'parameters' (see aiida_mlpes.core.sampling), optional 'seed' and 'label'.",
        )
        spec.input(
            "driver",
            valid_type=orm.Dict,
            help="The calculator that moves the sampler: {'name': 'tblite', 'parameters': {...}}; "
            "'mlpes' uses the `model` input.",
        )
        spec.input("model", valid_type=PESModel, required=False, help="The ML model for driver 'mlpes'.")
        spec.inputs["metadata"]["options"]["parser_name"].default = "mlpes.sample"
        spec.inputs.validator = cls.validate_inputs
        spec.output("dataset", valid_type=PESDataset, required=False, help="The sampled structures.")
        spec.output(
            "trajectory",
            valid_type=orm.ArrayData,
            required=False,
            help="'energy' (eV) and 'system' per trajectory step, sampler extras, 'sample_*' per sample.",
        )
        spec.output(
            "summary", valid_type=orm.Dict, required=False, help="Counts, seed, timings, per-system info."
        )
        spec.exit_code(
            410,
            "ERROR_DRIVER_FAILED",
            message="The driver failed during sampling; the samples collected before are output: {message}",
        )

    @classmethod
    def get_builder_from_protocol(
        cls,
        code: orm.AbstractCode,
        structure: orm.StructureData,
        protocol: str | None = None,
        overrides: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
    ):
        """Sampling around ``structure`` with the protocol's sampler and driver (``fast``/``moderate``/``precise``;
        the ``sample`` section of ``construct_pes.yaml``). ``overrides`` change its keys (``sampler``,
        ``parameters``, ``driver``, ``seed``), ``options`` the job's ``metadata.options``."""
        from aiida_mlpes.protocols import deep_merge, stage_inputs

        inputs, defaults = stage_inputs(cls.PROTOCOL_SECTION, protocol, overrides)
        builder = cls.get_builder()
        builder.code = code
        builder.structures = {"molecule": structure}
        builder.driver = orm.Dict(inputs.pop("driver"))
        builder.settings = orm.Dict(inputs)
        builder.metadata.options = deep_merge(defaults, options or {})
        return builder

    @staticmethod
    def validate_inputs(inputs: dict[str, Any], _: Any) -> str | None:
        structures = inputs.get("structures", {})
        if not structures:
            return "give at least one structure in the `structures` namespace"
        if "settings" not in inputs or "driver" not in inputs:
            return None  # the missing required port is reported by the port validation
        settings = inputs["settings"].get_dict()
        unknown = set(settings) - SETTINGS_KEYS
        if unknown:
            return f"settings: unknown keys {sorted(unknown)}; allowed: {sorted(SETTINGS_KEYS)}"
        driver = inputs["driver"].get_dict()
        is_model = driver.get("name") == "mlpes"
        if is_model != ("model" in inputs):
            return "driver 'mlpes' needs the `model` input, and the `model` input needs driver 'mlpes'"
        if is_model:
            driver = {
                **driver,
                "parameters": {**driver.get("parameters", {}), "model": SampleCalculation.MODEL_FILE},
            }
            missing = {site.kind_name for s in structures.values() for site in s.sites} - set(
                inputs["model"].elements
            )
            if missing:
                return f"the structures hold elements {sorted(missing)} that the model was not trained on"
        try:
            check_sample_settings({**settings, "driver": driver}, [len(s.sites) for s in structures.values()])
        except ValueError as exc:
            return str(exc)
        return None

    def write_task_inputs(self, folder: Folder) -> dict[str, Any]:
        from ase.io import write

        images = [self.inputs.structures[key].get_ase() for key in sorted(self.inputs.structures)]
        handle = io.StringIO()
        write(handle, images, format="extxyz")
        folder.create_file_from_filelike(io.StringIO(handle.getvalue()), self.STRUCTURES_FILE, mode="w")
        driver = self.inputs.driver.get_dict()
        if "model" in self.inputs:
            self.copy_node_file(self.inputs.model, self.MODEL_FILE)
            driver["parameters"] = {**driver.get("parameters", {}), "model": self.MODEL_FILE}
        return {
            **self.inputs.settings.get_dict(),
            "driver": driver,
            "structures": self.STRUCTURES_FILE,
            "samples_file": self.SAMPLES_FILE,
            "trajectory_file": self.TRAJECTORY_FILE,
            "source": self.node.uuid,
        }
