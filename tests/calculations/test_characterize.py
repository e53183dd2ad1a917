"""CharacterizeCalculation (mlpes.characterize): inputs, validation before submission, and NH3 through the
engine and the real ``aiida-mlpes-run`` executable, on GFN2-xTB (tblite) and on a small PhysNet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tblite  # noqa: F401
from aiida import orm
from aiida.common.folders import SandboxFolder
from aiida.engine import run_get_node
from ase.build import molecule

from aiida_mlpes.calculations.characterize import CharacterizeCalculation


@pytest.fixture
def runner_code(aiida_code_installed):
    executable = shutil.which("aiida-mlpes-run")
    assert executable, "aiida-mlpes-run is not on PATH: install the package (pip install -e .)"
    return aiida_code_installed(
        filepath_executable=str(Path(executable).resolve()),
        default_calc_job_plugin="mlpes.characterize",
        prepend_text="export OMP_NUM_THREADS=1",
    )


@pytest.fixture(scope="module")
def small_model_file(tmp_path_factory) -> Path:
    import torch

    from aiida_mlpes.core.models import ModelConfig, build_model, save_model

    torch.manual_seed(0)
    config = ModelConfig(architecture="physnet", elements=[1, 7], n_features=16, n_rbf=8, n_blocks=1)
    return save_model(build_model(config), tmp_path_factory.mktemp("model") / "model.pt")


def nh3_structures() -> tuple[orm.StructureData, orm.StructureData]:
    nh3 = molecule("NH3")
    planar = nh3.copy()
    planar.positions[:, 2] = [0.02, 0.0, 0.0, 0.0]
    return orm.StructureData(ase=nh3), orm.StructureData(ase=planar)


def _inputs(code, **changes):
    minimum, ts = nh3_structures()
    inputs = {
        "code": code,
        "driver": orm.Dict({"name": "tblite", "parameters": {"method": "GFN2-xTB", "accuracy": 0.01}}),
        "structure": minimum,
        "ts_structure": ts,
        "tasks": orm.Dict(
            {
                "optimize": {"fmax": 1e-3},
                "optimize_ts": {"fmax": 1e-3},
                "frequencies": {},
                "mep": {"fmax": 1e-2, "record_every": 5},
                "mdp": {"nsteps": 30, "timestep": 0.5, "record_every": 5},
                "dmc": {"nwalkers": 20, "nsteps": 15, "eqsteps": 5, "seed": 3},
            }
        ),
    }
    inputs.update(changes)
    return {k: v for k, v in inputs.items() if v is not None}


def test_prepare_for_submission_with_a_model(runner_code, small_model_file):
    from aiida_mlpes.data.model import PESModel

    model = PESModel(file=small_model_file)
    process = CharacterizeCalculation(inputs=_inputs(runner_code, driver=None, model=model))
    with SandboxFolder() as folder:
        calcinfo = process.prepare_for_submission(folder)
        settings = json.loads(Path(folder.get_abs_path("input.json")).read_text())
        written = sorted(Path(folder.abspath).iterdir())
    assert calcinfo.codes_info[0].cmdline_params == ["characterize", "input.json"]
    assert settings["driver"] == {"name": "mlpes", "parameters": {"model": "model.pt"}}
    assert settings["structure"] == "structure.xyz" and settings["ts_structure"] == "ts_structure.xyz"
    assert settings["tasks"]["dmc"]["nwalkers"] == 20 and settings["source"] == process.node.uuid
    np.testing.assert_allclose(settings["masses"], molecule("NH3").get_masses())
    assert [p.name for p in written] == ["input.json", "structure.xyz", "ts_structure.xyz"]
    assert [entry[2] for entry in calcinfo.local_copy_list] == ["model.pt"]
    assert "holes.h5" in calcinfo.retrieve_temporary_list


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"driver": None}, "exactly one of `model`"),
        ({"tasks": {"dmcc": {}}}, "unknown task"),
        ({"tasks": {"dmc": {"walkers": 3}}}, "tasks.dmc: unknown option"),
        ({"tasks": {"mep": {}}, "ts_structure": None}, "need a transition-state structure"),
        ({"driver": {"name": "mlpes"}}, "use `model` for mlpes"),
    ],
)
def test_bad_inputs_are_refused_before_submission(runner_code, changes, match):
    changes = {k: orm.Dict(v) if isinstance(v, dict) else v for k, v in changes.items()}
    inputs = _inputs(runner_code, **changes)
    if "ts_structure" in changes and changes["ts_structure"] is None:
        inputs.pop("ts_structure", None)
    with pytest.raises(ValueError, match=match):
        run_get_node(CharacterizeCalculation, **inputs)


def test_model_elements_are_checked(runner_code, small_model_file):
    from aiida_mlpes.data.model import PESModel

    water = orm.StructureData(ase=molecule("H2O"))
    inputs = _inputs(runner_code, driver=None, model=PESModel(file=small_model_file), structure=water)
    inputs.pop("ts_structure")
    inputs["tasks"] = orm.Dict({"frequencies": {}})
    with pytest.raises(ValueError, match="elements \\['O'\\] that the model was not trained on"):
        run_get_node(CharacterizeCalculation, **inputs)


def test_nh3_on_gfn2_through_the_engine(runner_code):
    results, node = run_get_node(CharacterizeCalculation, **_inputs(runner_code))
    retrieved = node.outputs.retrieved.base.repository
    assert node.is_finished_ok, (
        node.exit_status,
        node.exit_message,
        retrieved.get_object_content("aiida.out"),
    )
    numbers = results["results"].get_dict()
    assert len(numbers["frequencies"]["minimum"]) == 6 and numbers["frequencies"]["ts"][0] < -800
    assert 0.2 < numbers["ts"]["barrier"] < 0.35
    assert results["zpe"].value == pytest.approx(numbers["dmc"]["zpe"]) and numbers["dmc"]["n_holes"] == 0
    assert "holes" not in results
    mep = results["mep"]
    energies = mep.get_array("energies")
    assert mep.numsteps == len(energies) == numbers["mep"]["n_frames"]
    assert np.argmax(energies) == np.argmin(np.abs(mep.get_array("coordinate")))
    assert mep.symbols == ["N", "H", "H", "H"]
    mdp = results["mdp"]
    assert np.ptp(mdp.get_array("total_energy")) < 0.01
    assert results["minimum"].get_ase().get_chemical_formula() == "H3N"
    assert results["transition_state"].get_ase().positions[:, 2].std() < 0.01  # planar
    assert sorted(results["plots"].base.repository.list_object_names()) == ["dmc.png", "mdp.png", "mep.png"]
    assert results["dmc_traces"].get_array("energy_trace").shape == (15,)
    assert "mep.extxyz" not in retrieved.list_object_names()  # stored once, as the output node


def test_holes_from_a_model_become_an_unlabelled_dataset(runner_code, small_model_file):
    from aiida_mlpes.data.dataset import PESDataset
    from aiida_mlpes.data.model import PESModel

    minimum, _ = nh3_structures()
    tasks = {
        "dmc": {
            "nwalkers": 40,
            "nsteps": 8,
            "eqsteps": 2,
            "seed": 0,
            "check": False,
            "hole_threshold": None,
            "collapse_factor": 0.95,
            "collapse_energy": 1e6,
        }
    }
    results, node = run_get_node(
        CharacterizeCalculation,
        code=runner_code,
        model=PESModel(file=small_model_file),
        structure=minimum,
        tasks=orm.Dict(tasks),
    )
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    holes = results["holes"]
    assert isinstance(holes, PESDataset)
    assert holes.n_conformations == results["results"]["dmc"]["n_holes_stored"] > 0
    arrays = holes.get_arrays()
    assert arrays.energy is None and set(arrays.source) == {node.uuid}
    assert "transition_state" not in results and "mep" not in results


def test_water_dmc_that_did_not_complete_still_finishes_ok_with_candidates(runner_code):
    """A DMC stopped by its wall-time limit has a NaN ZPE: stored as null, no ``zpe`` output, the CalcJob is
    fine (the caller judges ``results.dmc.outcome``), and the explore candidates come out as a dataset."""
    from aiida_mlpes.data.dataset import PESDataset

    tasks = {
        "optimize": {"fmax": 1e-3},
        "dmc": {"nwalkers": 10, "nsteps": 50, "eqsteps": 10, "seed": 0, "max_wall_time": 1e-9},
        "explore": {"n_candidates": 4, "md_steps": 20, "md_save_interval": 2, "seed": 1},
    }
    results, node = run_get_node(
        CharacterizeCalculation,
        code=runner_code,
        driver=orm.Dict({"name": "tblite", "parameters": {"method": "GFN2-xTB", "accuracy": 0.01}}),
        structure=orm.StructureData(ase=molecule("H2O")),
        tasks=orm.Dict(tasks),
    )
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    dmc = results["results"]["dmc"]
    assert dmc["outcome"] == "truncated" and dmc["completed"] is False and dmc["zpe"] is None
    assert "zpe" not in results and "dmc_traces" in results
    candidates = results["candidates"]
    assert isinstance(candidates, PESDataset) and candidates.n_conformations == 4
    assert candidates.get_arrays().energy is None and set(candidates.get_arrays().source) == {node.uuid}
    assert results["results"]["explore"]["counts"]["selected"] == 4
