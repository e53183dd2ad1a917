"""``mlpes.xtb`` parser: energy/gradient files, xtbout.json (dipole, charges) and stdout/stderr (status)."""

from __future__ import annotations

import pathlib
from typing import Any

from aiida_mlpes.core.reference.common import ReferenceResult
from aiida_mlpes.core.reference.xtb import read_xtb
from aiida_mlpes.parsers.reference import ReferenceParser


class XtbParser(ReferenceParser):
    """Parse every ``sNNNNN.*`` file set written by ``xtb --namespace sNNNNN``."""

    def read_structure(self, folder: pathlib.Path, name: str, parameters: dict[str, Any]) -> ReferenceResult:
        return read_xtb(folder, namespace=name)
