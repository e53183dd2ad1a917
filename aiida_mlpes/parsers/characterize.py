"""Parser of ``mlpes.characterize``: numbers -> Dict (+ Float ZPE), structures, paths -> TrajectoryData,
DMC traces -> ArrayData, plots -> FolderData, holes and candidates -> PESDataset (unlabelled).

Non-finite numbers become null in ``results`` (a Dict cannot store NaN); the ZPE output exists only when it
is finite. The outcome of the DMC run (``results.dmc.outcome``) is reported, never turned into an exit code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import ExitCode

from aiida_mlpes.calculations.characterize import CharacterizeCalculation
from aiida_mlpes.core.characterize.task import FILES
from aiida_mlpes.core.dataset import DatasetError
from aiida_mlpes.core.runner import finite_or_none
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.parsers.base import MlpesRunParser


class CharacterizeParser(MlpesRunParser):
    def parse_result(self, result: dict[str, Any]) -> ExitCode | None:
        tasks = self.node.inputs.tasks.get_dict()
        results = finite_or_none({k: v for k, v in result.items() if k not in ("status", "traceback")})
        self.out("results", orm.Dict(results))
        zpe = results.get("dmc", {}).get("zpe")
        if isinstance(zpe, (int, float)):  # None when not finite
            self.out("zpe", orm.Float(zpe))

        expected = {"minimum": FILES["minimum"]}
        if "ts_structure" in self.node.inputs:
            expected["transition_state"] = FILES["ts"]
        for name in ("mep", "mdp"):
            if name in tasks:
                expected[name] = FILES[name]
        if "dmc" in tasks:
            expected["dmc_traces"] = FILES["dmc"]
        # attach every output that can be read, then report the first problem (nothing is lost)
        problem: ExitCode | None = None
        for port, filename in expected.items():
            path = self.temporary_path(filename)
            if path is None:
                problem = problem or self.exit_codes.ERROR_OUTPUT_MISSING.format(name=filename)
                continue
            try:
                self.out(port, _read_output(port, path))
            except (OSError, ValueError, KeyError) as exc:
                problem = problem or self.exit_codes.ERROR_OUTPUT_INVALID.format(message=f"{filename}: {exc}")

        plots = orm.FolderData()
        for name in CharacterizeCalculation.PLOTS:
            path = self.temporary_path(name)
            if path is not None:
                plots.base.repository.put_object_from_file(str(path), name)
        if plots.base.repository.list_object_names():
            self.out("plots", plots)

        for port in ("holes", "candidates"):
            path = self.temporary_path(FILES[port])
            if path is not None:
                try:
                    self.out(port, PESDataset(file=path))
                except (DatasetError, OSError) as exc:
                    problem = problem or self.exit_codes.ERROR_OUTPUT_INVALID.format(
                        message=f"{path.name}: {exc}"
                    )
        return problem


def _read_output(port: str, path: Path) -> orm.Data:
    """The output node of ``port`` from its retrieved file."""
    from ase.io import read

    if port in ("minimum", "transition_state"):
        return orm.StructureData(ase=read(path))
    if port in ("mep", "mdp"):
        return _trajectory(read(path, index=":"))
    traces = orm.ArrayData()
    with np.load(path) as data:
        for name in data.files:
            traces.set_array(name, data[name])
    return traces


def _trajectory(frames: list) -> orm.TrajectoryData:
    """TrajectoryData of extxyz frames with per-frame ``energies`` (eV) and the path ``coordinate``."""
    trajectory = orm.TrajectoryData()
    trajectory.set_trajectory(
        symbols=frames[0].get_chemical_symbols(),
        positions=np.stack([f.positions for f in frames]),
        stepids=np.arange(len(frames)),
    )
    trajectory.set_array("energies", np.array([f.get_potential_energy() for f in frames]))
    for key in ("coordinate", "kinetic_energy", "total_energy"):
        if key in frames[0].info:
            trajectory.set_array(key, np.array([f.info[key] for f in frames], dtype=float))
    return trajectory
