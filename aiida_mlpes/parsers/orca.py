"""``mlpes.orca`` parser: ``sNNNNN.out`` (status, dipole, charges) and ``sNNNNN.engrad`` (energy, gradient)."""

from __future__ import annotations

import pathlib
from typing import Any

from aiida_mlpes.core.reference.common import ReferenceResult
from aiida_mlpes.core.reference.orca import read_orca
from aiida_mlpes.parsers.reference import ReferenceParser


class OrcaParser(ReferenceParser):
    def read_structure(self, folder: pathlib.Path, name: str, parameters: dict[str, Any]) -> ReferenceResult:
        return read_orca(folder, name, charge_scheme=parameters.get("charge_scheme", "mulliken"))
