"""Parser of ``mlpes.characterize``: numbers -> Dict (+ Float ZPE), structures, paths -> TrajectoryData,
DMC traces -> ArrayData, plots -> FolderData, holes -> PESDataset (unlabelled)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import ExitCode

from aiida_mlpes.calculations.characterize import CharacterizeCalculation
from aiida_mlpes.core.characterize.task import FILES
from aiida_mlpes.core.dataset import DatasetError
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.parsers.base import MlpesRunParser


class CharacterizeParser(MlpesRunParser):
    def parse_result(self, result: dict[str, Any]) -> ExitCode | None:
        from ase.io import read

        tasks = self.node.inputs.tasks.get_dict()
        results = {k: v for k, v in result.items() if k not in ("status", "traceback")}
        self.out("results", orm.Dict(results))
        if "dmc" in results and np.isfinite(results["dmc"].get("zpe", float("nan"))):
            self.out("zpe", orm.Float(results["dmc"]["zpe"]))

        expected = {"minimum": FILES["minimum"]}
        if "ts_structure" in self.node.inputs:
            expected["transition_state"] = FILES["ts"]
        for name in ("mep", "mdp"):
            if name in tasks:
                expected[name] = FILES[name]
        if "dmc" in tasks:
            expected["dmc_traces"] = FILES["dmc"]
        paths: dict[str, Path] = {}
        for port, filename in expected.items():
            path = self.temporary_path(filename)
            if path is None:
                return self.exit_codes.ERROR_OUTPUT_MISSING.format(name=filename)
            paths[port] = path
        try:
            for port in ("minimum", "transition_state"):
                if port in paths:
                    self.out(port, orm.StructureData(ase=read(paths[port])))
            for port in ("mep", "mdp"):
                if port in paths:
                    self.out(port, _trajectory(read(paths[port], index=":")))
            if "dmc_traces" in paths:
                traces = orm.ArrayData()
                with np.load(paths["dmc_traces"]) as data:
                    for name in data.files:
                        traces.set_array(name, data[name])
                self.out("dmc_traces", traces)
        except (OSError, ValueError, KeyError) as exc:
            return self.exit_codes.ERROR_OUTPUT_INVALID.format(message=str(exc))

        plots = orm.FolderData()
        for name in CharacterizeCalculation.PLOTS:
            path = self.temporary_path(name)
            if path is not None:
                plots.base.repository.put_object_from_file(str(path), name)
        if plots.base.repository.list_object_names():
            self.out("plots", plots)

        holes = self.temporary_path(FILES["holes"])
        if holes is not None:
            try:
                self.out("holes", PESDataset(file=holes))
            except (DatasetError, OSError) as exc:
                return self.exit_codes.ERROR_OUTPUT_INVALID.format(message=str(exc))
        return None


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
