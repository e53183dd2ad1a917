"""``mlpes.orca``: label a batch of structures with ORCA (energy + analytic gradient, dipole, charges).

``parameters`` (all optional): ``keywords`` (the ``!`` line; default ``RI PBE D3BJ def2-SVP def2/J EnGrad``),
``blocks`` (``{"scf": {"MaxIter": 500}}`` -> ``%scf MaxIter 500 end``), ``nprocs`` (``%pal``), ``maxcore``
(MB per process), ``charge_scheme`` (mulliken, loewdin, hirshfeld), ``scf_fix_level`` (0-2, set by the work
chain after SCF failures), ``level_of_theory`` (label override). Each structure runs as
``orca sNNNNN.inp > sNNNNN.out``; the code must point at the full path of ``orca`` for parallel runs.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from aiida.common.datastructures import CodeInfo
from aiida.common.folders import Folder

from aiida_mlpes.calculations.reference import ReferenceCalculation
from aiida_mlpes.core.reference.orca import write_orca_input

DEFAULT_KEYWORDS = "RI PBE D3BJ def2-SVP def2/J EnGrad"
#: Convergence aids at each fix level (they change the path to the SCF solution, not the solution):
#: ORCA's SlowConv damping, then VerySlowConv with the settings its manual suggests for pathological cases.
SCF_FIXES: dict[int, tuple[list[str], dict[str, Any]]] = {
    1: (["SlowConv"], {"MaxIter": 500}),
    2: (["VerySlowConv"], {"MaxIter": 1500, "DIISMaxEq": 15, "directresetfreq": 1}),
}
_KNOWN = {"keywords", "blocks", "nprocs", "maxcore", "charge_scheme", "scf_fix_level", "level_of_theory"}
#: Keywords that do not change the level of theory (output, gradient request, SCF convergence aids/thresholds).
_TECHNICAL = {
    "engrad",
    "slowconv",
    "veryslowconv",
    "miniprint",
    "smallprint",
    "normalprint",
    "largeprint",
    "loosescf",
    "normalscf",
    "tightscf",
    "verytightscf",
    "kdiis",
    "soscf",
    "nososcf",
}


class OrcaCalculation(ReferenceCalculation):
    """ORCA EnGrad single point for every structure; the gradient is read from ``sNNNNN.engrad``."""

    PROGRAM: ClassVar[str] = "orca"
    RETRIEVE: ClassVar[list[str]] = ["s*.out", "s*.err", "s*.engrad"]

    @classmethod
    def check_parameters(cls, parameters: dict[str, Any]) -> None:
        unknown = set(parameters) - _KNOWN
        if unknown:
            raise ValueError(f"unknown ORCA parameters {sorted(unknown)}; known: {sorted(_KNOWN)}")
        if parameters.get("charge_scheme", "mulliken") not in ("mulliken", "loewdin", "hirshfeld"):
            raise ValueError("charge_scheme must be mulliken, loewdin or hirshfeld")
        write_orca_input([1, 1], np.eye(2, 3), 0, 1, **cls._options(parameters))

    @classmethod
    def level_of_theory(cls, parameters: dict[str, Any]) -> str:
        tokens = parameters.get("keywords", DEFAULT_KEYWORDS).replace("!", " ").split()
        return " ".join(t for t in tokens if t.lower() not in _TECHNICAL)

    @classmethod
    def apply_scf_fix(cls, parameters: dict[str, Any], level: int) -> dict[str, Any]:
        return {**parameters, "scf_fix_level": int(level)}

    @staticmethod
    def _options(parameters: dict[str, Any]) -> dict[str, Any]:
        keywords = parameters.get("keywords", DEFAULT_KEYWORDS)
        blocks = {name: dict(opts) for name, opts in parameters.get("blocks", {}).items()}
        level = int(parameters.get("scf_fix_level", 0))
        if level:
            extra, scf = SCF_FIXES[min(level, max(SCF_FIXES))]
            keywords = " ".join([keywords, *extra])
            blocks.setdefault("scf", {}).update(scf)
        options: dict[str, Any] = {
            "keywords": keywords,
            "blocks": blocks,
            "nprocs": int(parameters.get("nprocs", 1)),
        }
        if "maxcore" in parameters:
            options["maxcore"] = int(parameters["maxcore"])
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
        text = write_orca_input(
            numbers,
            positions,
            self.inputs.charge.value,
            self.inputs.multiplicity.value,
            **self._options(parameters),
        )
        self.write_text(folder, f"{name}.inp", f"# aiida-mlpes structure {index}\n{text}")
        codeinfo = CodeInfo()
        codeinfo.cmdline_params = [f"{name}.inp"]
        codeinfo.stdout_name = f"{name}.out"
        codeinfo.stderr_name = f"{name}.err"  # the shell's message if the program cannot start
        return codeinfo
