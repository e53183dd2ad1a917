"""``mlpes.gaussian``: label a batch of structures with Gaussian 09/16 (energy, forces, dipole, charges).

``parameters`` (all optional): ``route`` (default ``PBEPBE/Def2SVP/W06 EmpiricalDispersion=GD3BJ``, the
density-fitted PBE-D3(BJ)/def2-SVP of ORCA's ``RI PBE D3BJ def2-SVP def2/J``; ``Force NoSymm`` are added),
``nprocs`` (``%nprocshared``), ``memory`` (``%mem``, e.g. ``"2GB"``), ``charge_scheme`` (mulliken,
hirshfeld: add ``Pop=Hirshfeld`` to the route), ``scf_fix_level`` (0-2), ``level_of_theory``.
Each structure runs as ``g16 < sNNNNN.com > sNNNNN.log``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import numpy as np
from aiida.common.datastructures import CodeInfo
from aiida.common.folders import Folder

from aiida_mlpes.calculations.reference import ReferenceCalculation
from aiida_mlpes.core.reference.gaussian import write_gaussian_input

DEFAULT_ROUTE = "PBEPBE/Def2SVP/W06 EmpiricalDispersion=GD3BJ"
#: SCF options at each fix level: quadratically convergent SCF after the first failure (XQC), then QC.
SCF_FIXES = {1: ["XQC", "MaxCycle=512"], 2: ["QC", "MaxCycle=1024"]}
_KNOWN = {"route", "nprocs", "memory", "charge_scheme", "scf_fix_level", "level_of_theory"}
_TECHNICAL = re.compile(r"^(force.*|nosymm|scf=.*|pop=.*|#\w?)$", re.IGNORECASE)


class GaussianCalculation(ReferenceCalculation):
    """Gaussian ``Force NoSymm`` single point for every structure."""

    PROGRAM: ClassVar[str] = "gaussian"
    RETRIEVE: ClassVar[list[str]] = ["s*.log", "s*.err"]

    @classmethod
    def check_parameters(cls, parameters: dict[str, Any]) -> None:
        unknown = set(parameters) - _KNOWN
        if unknown:
            raise ValueError(f"unknown Gaussian parameters {sorted(unknown)}; known: {sorted(_KNOWN)}")
        if parameters.get("charge_scheme", "mulliken") not in ("mulliken", "hirshfeld"):
            raise ValueError("charge_scheme must be mulliken or hirshfeld")
        write_gaussian_input([1, 1], np.eye(2, 3), 0, 1, **cls._options(parameters))

    @classmethod
    def level_of_theory(cls, parameters: dict[str, Any]) -> str:
        tokens = parameters.get("route", DEFAULT_ROUTE).split()
        return " ".join(t for t in tokens if not _TECHNICAL.match(t))

    @classmethod
    def apply_scf_fix(cls, parameters: dict[str, Any], level: int) -> dict[str, Any]:
        return {**parameters, "scf_fix_level": int(level)}

    @staticmethod
    def _options(parameters: dict[str, Any]) -> dict[str, Any]:
        route = parameters.get("route", DEFAULT_ROUTE)
        level = int(parameters.get("scf_fix_level", 0))
        if level:
            tokens, scf = [], []
            for token in route.split():
                if token.lower().startswith("scf"):
                    value = token.split("=", 1)[1] if "=" in token else ""
                    scf += [
                        o
                        for o in value.strip("()").split(",")
                        if o and not re.match(r"(?i)^(x?qc|maxcycle)", o)
                    ]
                else:
                    tokens.append(token)
            fix = SCF_FIXES[min(level, max(SCF_FIXES))]
            route = " ".join([*tokens, f"SCF=({','.join([*scf, *fix])})"])
        options: dict[str, Any] = {"route": route, "nprocs": int(parameters.get("nprocs", 1))}
        if "memory" in parameters:
            options["memory"] = str(parameters["memory"])
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
        text = write_gaussian_input(
            numbers,
            positions,
            self.inputs.charge.value,
            self.inputs.multiplicity.value,
            title=f"aiida-mlpes structure {index}",
            **self._options(parameters),
        )
        self.write_text(folder, f"{name}.com", text)
        codeinfo = CodeInfo()
        codeinfo.stdin_name = f"{name}.com"
        codeinfo.stdout_name = f"{name}.log"
        codeinfo.stderr_name = f"{name}.err"  # the shell's message if the program cannot start
        return codeinfo
