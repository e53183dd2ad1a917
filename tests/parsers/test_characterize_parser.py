"""The ``mlpes.characterize`` parser on hand-made task outputs (no job is run): non-finite numbers become null,
the ZPE output only exists when finite, and a missing file does not cost the other outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.plugins import ParserFactory
from ase.build import molecule
from ase.io import write

from aiida_mlpes.core.dataset import write_dataset
from aiida_mlpes.core.ragged import RaggedArrays


def _unlabelled(path, n):
    water = molecule("H2O")
    arrays = RaggedArrays(
        n_atoms=np.full(n, 3),
        atomic_numbers=np.tile(water.numbers, n),
        positions=np.concatenate([water.positions + 0.01 * k for k in range(n)]),
        source=np.array(["x"] * n, dtype=object),
    )
    write_dataset(path, arrays)


@pytest.fixture
def characterize_node(aiida_localhost, tmp_path):
    def factory(result: dict, temporary: dict[str, str]):
        node = orm.CalcJobNode(computer=aiida_localhost, process_type="aiida.calculations:mlpes.characterize")
        node.set_option("resources", {"num_machines": 1, "num_mpiprocs_per_machine": 1})
        node.set_option("parser_name", "mlpes.characterize")
        inputs = {
            "structure": orm.StructureData(ase=molecule("H2O")).store(),
            "tasks": orm.Dict({"dmc": {"nwalkers": 10}, "explore": {}}).store(),
            "driver": orm.Dict({"name": "tblite"}).store(),
        }
        for label, data in inputs.items():
            node.base.links.add_incoming(data, link_type=LinkType.INPUT_CALC, link_label=label)
        node.store()
        retrieved_dir = tmp_path / "retrieved"
        retrieved_dir.mkdir()
        (retrieved_dir / "result.json").write_text(json.dumps(result))  # NaN written as the runner would
        retrieved = orm.FolderData(tree=retrieved_dir)
        retrieved.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label="retrieved")
        retrieved.store()
        temp = tmp_path / "temporary"
        temp.mkdir()
        for name, kind in temporary.items():
            if kind == "xyz":
                write(temp / name, molecule("H2O"), format="extxyz")
            elif kind == "npz":
                np.savez(temp / name, energy_trace=np.array([np.nan, 0.5]), walkers=np.zeros((2, 3, 3)))
            elif kind == "h5":
                _unlabelled(temp / name, 3)
        return node, str(temp)

    return factory


RESULT = {
    "status": "ok",
    "minimum": {"energy": -5.0, "max_force": 0.0},
    "dmc": {"zpe": float("nan"), "zpe_error": float("inf"), "outcome": "collapsed", "completed": False},
    "explore": {"n_candidates": 3, "energies": [0.1, float("nan"), 0.2]},
}


def test_nan_becomes_null_and_an_incomplete_dmc_is_no_failure(characterize_node):
    node, temp = characterize_node(
        RESULT,
        {"minimum.xyz": "xyz", "dmc.npz": "npz", "holes.h5": "h5", "candidates.h5": "h5"},
    )
    results, calcfunction = ParserFactory("mlpes.characterize").parse_from_node(
        node, store_provenance=False, retrieved_temporary_folder=temp
    )
    assert calcfunction.is_finished_ok, calcfunction.exit_message
    numbers = results["results"].get_dict()
    assert numbers["dmc"] == {"zpe": None, "zpe_error": None, "outcome": "collapsed", "completed": False}
    assert numbers["explore"]["energies"] == [0.1, None, 0.2]
    assert "zpe" not in results
    assert results["candidates"].n_conformations == 3 and results["holes"].n_conformations == 3
    assert np.isnan(results["dmc_traces"].get_array("energy_trace")[0])  # arrays keep NaN


def test_a_missing_file_keeps_the_other_outputs(characterize_node):
    finite = {**RESULT, "dmc": {**RESULT["dmc"], "zpe": 0.9, "outcome": "completed"}}
    node, temp = characterize_node(finite, {"minimum.xyz": "xyz", "holes.h5": "h5", "candidates.h5": "h5"})
    results, calcfunction = ParserFactory("mlpes.characterize").parse_from_node(
        node, store_provenance=False, retrieved_temporary_folder=temp
    )
    assert calcfunction.exit_status == 302 and "dmc.npz" in calcfunction.exit_message
    assert {"results", "zpe", "minimum", "holes", "candidates"} <= set(results)
    assert results["zpe"].value == pytest.approx(0.9)
