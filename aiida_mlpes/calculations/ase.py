"""``mlpes.ase``: label a batch of structures with any registered ASE calculator (tblite, PySCF, psi4 ...)
through ``aiida-mlpes-run reference_ase`` (:mod:`aiida_mlpes.core.reference.task`).

``parameters`` are the calculator settings, e.g. ``{"calculator": "tblite", "method": "GFN2-xTB"}`` or
``{"calculator": "pyscf", "method": "PBE", "basis": "def2-svp"}``; the calculator is looked up in a fixed
registry (:data:`aiida_mlpes.core.reference.ase_driver.CALCULATORS`), never evaluated.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, ClassVar

from aiida.common.folders import Folder

from aiida_mlpes.calculations.base import MlpesRunCalculation
from aiida_mlpes.calculations.reference import (
    define_reference_ports,
    load_structures,
    n_structures,
    validate_reference_inputs,
)
from aiida_mlpes.core.dataset import write_dataset
from aiida_mlpes.core.reference.ase_driver import CALCULATORS, settings_label
from aiida_mlpes.core.reference.task import OUTPUT, PROGRESS
from aiida_mlpes.data.dataset import PESDataset

#: SCF settings raised at each fix level, per calculator: {name: {level: {setting: value}}}.
SCF_FIXES: dict[str, dict[int, dict[str, Any]]] = {
    "pyscf": {1: {"max_cycle": 300}, 2: {"max_cycle": 1000, "damping": 0.5, "level_shift": 0.2}},
    "tblite": {1: {"max_iterations": 1000}, 2: {"max_iterations": 3000, "mixer_damping": 0.2}},
}


class AseCalculation(MlpesRunCalculation):
    """Energy, forces (and dipole, charges when available) of each structure with an ASE calculator."""

    TASK: ClassVar[str] = "reference_ase"
    PROGRAM: ClassVar[str] = "ase"
    INPUT_STRUCTURES: ClassVar[str] = "structures.h5"
    RETRIEVE_TEMPORARY: ClassVar[list[str]] = [OUTPUT, PROGRESS]
    #: labels are bitwise reproducible only single-threaded (core.threads.REFERENCE_THREADS): more threads only
    #: through the `threads` input, never implicitly from the resources
    THREADS_FROM_RESOURCES: ClassVar[bool] = False

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        define_reference_ports(spec, "mlpes.ase")
        spec.inputs.validator = cls.validate_inputs

    @classmethod
    def check_parameters(cls, parameters: dict[str, Any]) -> None:
        name = parameters.get("calculator")
        if name not in CALCULATORS:
            raise ValueError(f"'calculator' must be one of {', '.join(sorted(CALCULATORS))}, got {name!r}")
        for key, value in parameters.items():
            if not isinstance(value, (str, int, float, bool, list)) and value is not None:
                raise ValueError(f"setting {key!r} must be a JSON scalar or list")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], _ctx=None) -> str | None:
        parameters = inputs["parameters"].get_dict() if "parameters" in inputs else {}
        try:
            cls.check_parameters(parameters)
        except ValueError as exc:
            return f"parameters: {exc}"
        return validate_reference_inputs(inputs)

    @classmethod
    def level_of_theory(cls, parameters: dict[str, Any]) -> str:
        return parameters.get("level_of_theory") or settings_label(
            {k: v for k, v in parameters.items() if k != "level_of_theory"}
        )

    @classmethod
    def apply_scf_fix(cls, parameters: dict[str, Any], level: int) -> dict[str, Any]:
        """Calculator settings for a retry after an SCF failure (more iterations, then damping)."""
        fixes = SCF_FIXES.get(parameters.get("calculator", ""), {})
        if not fixes or level < 1:
            return dict(parameters)
        return {**parameters, **fixes[min(level, max(fixes))]}

    def write_task_inputs(self, folder: Folder) -> dict[str, Any]:
        node = self.inputs.structures
        if isinstance(node, PESDataset):
            self.copy_node_file(node, self.INPUT_STRUCTURES)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                path = write_dataset(Path(tmp) / self.INPUT_STRUCTURES, load_structures(node))
                folder.insert_path(str(path), self.INPUT_STRUCTURES)
        indices = (
            self.inputs.indices.get_list() if "indices" in self.inputs else list(range(n_structures(node)))
        )
        parameters = self.inputs.parameters.get_dict()
        return {
            "dataset": self.INPUT_STRUCTURES,
            "indices": indices,
            "calculator": {k: v for k, v in parameters.items() if k != "level_of_theory"},
            "charge": self.inputs.charge.value,
            "multiplicity": self.inputs.multiplicity.value,
            "min_distance": self.inputs.min_distance.value,
            "level_of_theory": self.level_of_theory(parameters),
            "output": OUTPUT,
            "progress": PROGRESS,
        }
