"""``mlpes.xtb``: label a batch of structures with the ``xtb`` executable (energy, gradient, dipole, charges).

``parameters`` (all optional): ``method`` (GFN2-xTB, GFN1-xTB, GFN0-xTB, GFN-FF), ``accuracy``,
``iterations`` (SCC), ``electronic_temperature`` (K), ``solvent`` + ``solvation_model`` (alpb/gbsa),
``scf_fix_level`` (0-2, set by the work chain after SCC failures), ``level_of_theory`` (label override).
Run it with ``OMP_NUM_THREADS=1`` (``metadata.options.environment_variables``) for many small molecules.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from aiida.common.datastructures import CodeInfo
from aiida.common.folders import Folder

from aiida_mlpes.calculations.reference import ReferenceCalculation
from aiida_mlpes.core.reference.validation import MAX_Z
from aiida_mlpes.core.reference.xtb import METHODS, write_xyz, xtb_arguments

#: SCC iterations used at each fix level after "did not converge" (xtb's default is 250).
SCF_FIX_ITERATIONS = {1: 1000, 2: 3000}
_KNOWN = {
    "method",
    "accuracy",
    "iterations",
    "electronic_temperature",
    "solvent",
    "solvation_model",
    "scf_fix_level",
    "level_of_theory",
}


class XtbCalculation(ReferenceCalculation):
    """xtb energy + gradient for every structure (``xtb sNNNNN.xyz --grad --json --namespace sNNNNN``)."""

    PROGRAM: ClassVar[str] = "xtb"
    #: stdout/stderr (status, dipole), gradient (energy and gradient, 11-14 digits) and xtbout.json
    #: (dipole, charges); xtb's separate energy and charges files repeat these and are not retrieved.
    RETRIEVE: ClassVar[list[str]] = ["s*.out", "s*.err", "s*.gradient", "s*.xtbout.json"]
    STORE_STRUCTURE_INPUTS: ClassVar[bool] = False
    DRIVER_READER: ClassVar[str | None] = "xtb"

    @classmethod
    def check_parameters(cls, parameters: dict[str, Any]) -> None:
        unknown = set(parameters) - _KNOWN
        if unknown:
            raise ValueError(f"unknown xtb parameters {sorted(unknown)}; known: {sorted(_KNOWN)}")
        xtb_arguments("s.xyz", 0, 1, **cls._options(parameters))

    @classmethod
    def max_z(cls, parameters: dict[str, Any]) -> int:
        return MAX_Z.get(parameters.get("method", "GFN2-xTB"), 86)

    @classmethod
    def level_of_theory(cls, parameters: dict[str, Any]) -> str:
        level = parameters.get("method", "GFN2-xTB")
        if parameters.get("solvent"):
            level += f"/{parameters.get('solvation_model', 'alpb').upper()}({parameters['solvent']})"
        return level

    @classmethod
    def apply_scf_fix(cls, parameters: dict[str, Any], level: int) -> dict[str, Any]:
        """Parameters for the retry after an SCC failure: more iterations (the result is unchanged)."""
        return {**parameters, "scf_fix_level": int(level)}

    @staticmethod
    def _options(parameters: dict[str, Any]) -> dict[str, Any]:
        options = {
            k: parameters[k]
            for k in (
                "method",
                "accuracy",
                "iterations",
                "electronic_temperature",
                "solvent",
                "solvation_model",
            )
            if k in parameters
        }
        if options.get("method", "GFN2-xTB") not in METHODS:
            raise ValueError(
                f"xtb method {options['method']!r} is unknown; choose one of {', '.join(METHODS)}"
            )
        level = int(parameters.get("scf_fix_level", 0))
        if level:
            fixed = SCF_FIX_ITERATIONS[min(level, max(SCF_FIX_ITERATIONS))]
            options["iterations"] = max(int(options.get("iterations", 250)), fixed)
        return options

    def write_structure(
        self,
        folder: Folder,
        name: str,
        index: int,
        numbers: np.ndarray,
        positions: np.ndarray,
        parameters: dict[str, Any],
    ) -> CodeInfo:
        self.write_text(
            folder, f"{name}.xyz", write_xyz(numbers, positions, comment=f"aiida-mlpes structure {index}")
        )
        codeinfo = CodeInfo()
        codeinfo.cmdline_params = xtb_arguments(
            f"{name}.xyz",
            self.inputs.charge.value,
            self.inputs.multiplicity.value,
            namespace=name,
            **self._options(parameters),
        )
        codeinfo.stdout_name = f"{name}.out"
        codeinfo.stderr_name = f"{name}.err"
        return codeinfo
