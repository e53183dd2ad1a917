"""``mlpes.gaussian`` parser: ``sNNNNN.log`` (energy, forces, dipole, charges, status)."""

from __future__ import annotations

import pathlib
from typing import Any

from aiida_mlpes.core.reference.common import ReferenceResult
from aiida_mlpes.core.reference.gaussian import read_gaussian
from aiida_mlpes.parsers.reference import ReferenceParser


class GaussianParser(ReferenceParser):
    def read_structure(self, folder: pathlib.Path, name: str, parameters: dict[str, Any]) -> ReferenceResult:
        return read_gaussian(folder, name, charge_scheme=parameters.get("charge_scheme", "mulliken"))
