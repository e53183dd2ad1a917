"""The ``characterize`` runner task: NH3 on GFN2-xTB (tblite) and on a small PhysNet, bad settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tblite  # noqa: F401
from ase.build import molecule
from ase.io import read, write

from aiida_mlpes.core import runner
from aiida_mlpes.core.characterize.task import check_settings, run_characterize_task


@pytest.fixture
def workdir(tmp_path):
    nh3 = molecule("NH3")
    write(tmp_path / "structure.xyz", nh3)
    planar = nh3.copy()
    planar.positions[:, 2] = [0.02, 0.0, 0.0, 0.0]
    write(tmp_path / "ts_structure.xyz", planar)
    return tmp_path


def test_nh3_on_gfn2_all_tasks(workdir):
    settings = {
        "driver": {"name": "tblite", "parameters": {"method": "GFN2-xTB", "accuracy": 0.01}},
        "structure": "structure.xyz",
        "ts_structure": "ts_structure.xyz",
        "source": "test",
        "tasks": {
            "optimize": {"fmax": 1e-3},
            "optimize_ts": {"fmax": 1e-3},
            "frequencies": {},
            "mep": {"fmax": 1e-2, "record_every": 5},
            "mdp": {"nsteps": 40, "timestep": 0.5},
            "dmc": {"nwalkers": 20, "nsteps": 10, "eqsteps": 2, "seed": 1, "initial": "harmonic"},
        },
    }
    (workdir / "input.json").write_text(json.dumps(settings))
    result = runner.run_task("characterize", workdir / "input.json")
    assert result["status"] == "ok", result.get("message")
    assert json.loads((workdir / "result.json").read_text())["status"] == "ok"
    freqs = result["frequencies"]
    assert len(freqs["minimum"]) == 6 and min(freqs["minimum"]) > 1000
    assert freqs["ts"][0] < -800 and min(freqs["ts"][1:]) > 0
    assert 0.2 < result["ts"]["barrier"] < 0.35
    assert result["mep"]["converged"] == [True, True]
    np.testing.assert_allclose(result["mep"]["barriers"], result["ts"]["barrier"], atol=5e-3)
    assert 0.8 < result["harmonic_zpe"] < 1.0  # ~7,400 cm^-1
    dmc = result["dmc"]
    assert dmc["n_holes"] == 0 and dmc["zpe"] > 0
    assert set(result["files"]) == {
        "minimum.xyz",
        "ts.xyz",
        "mep.extxyz",
        "mep.png",
        "mdp.extxyz",
        "mdp.png",
        "dmc.png",
        "dmc.npz",
    }
    mep = read(workdir / "mep.extxyz", index=":")
    assert len(mep) == result["mep"]["n_frames"]
    assert read(workdir / "minimum.xyz").get_potential_energy() == pytest.approx(result["minimum"]["energy"])
    with np.load(workdir / "dmc.npz") as data:
        assert data["energy_trace"].shape == (10,) and data["walkers"].shape[1:] == (4, 3)


def test_holes_dataset_from_a_small_physnet(workdir):
    """A random (untrained) PhysNet through the 'mlpes' driver: DMC with a collapse bound just below the N-H
    bond length makes holes, which come out as an unlabelled dataset."""
    import torch

    from aiida_mlpes.core.dataset import read_arrays
    from aiida_mlpes.core.models import ModelConfig, build_model, save_model

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(architecture="physnet", elements=[1, 7], n_features=16, n_rbf=8, n_blocks=1)
    )
    save_model(model, workdir / "model.pt")
    settings = {
        "driver": {"name": "mlpes", "parameters": {"model": "model.pt"}},
        "structure": "structure.xyz",
        "source": "uuid-of-the-calcjob",
        "tasks": {
            "dmc": {
                "nwalkers": 50,
                "nsteps": 10,
                "eqsteps": 2,
                "seed": 0,
                "check": False,
                "collapse_factor": 0.95,
                "collapse_energy": 1e6,
                "hole_threshold": None,
            },
        },
    }
    result = run_characterize_task(settings, workdir)
    assert result["dmc"]["n_holes"] > 0 and result["dmc"]["hole_reasons"] == {
        "collapse": result["dmc"]["n_holes"]
    }
    holes = read_arrays(workdir / "holes.h5")
    assert len(holes) == result["dmc"]["n_holes_stored"]
    assert holes.energy is None and holes.forces is None  # unlabelled, ready for the reference
    assert set(holes.source) == {"uuid-of-the-calcjob"}
    np.testing.assert_array_equal(holes.atomic_numbers[:4], [7, 1, 1, 1])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"tasks": {"dmcc": {}}}, "unknown task\\(s\\) \\['dmcc'\\]"),
        ({"tasks": {"dmc": {"walkers": 5}}}, "tasks.dmc: unknown option\\(s\\) \\['walkers'\\]"),
        ({"tasks": {"mep": {}}}, "need a transition-state structure"),
        ({"tasks": {}}, "tasks must be a non-empty dict"),
        ({"driver": "tblite"}, "driver must be a dict"),
        ({"colour": 1}, "unknown setting\\(s\\) \\['colour'\\]"),
    ],
)
def test_bad_settings(change, match):
    settings = {"driver": {"name": "tblite"}, "structure": "s.xyz", "tasks": {"frequencies": {}}, **change}
    with pytest.raises(ValueError, match=match):
        check_settings(settings)


def test_errors_are_reported_through_the_runner(workdir):
    settings = {
        "driver": {"name": "tblite", "parameters": {"method": "GFN2-xTB"}},
        "structure": "ts_structure.xyz",
        "tasks": {"dmc": {"nwalkers": 0}},
    }
    (workdir / "input.json").write_text(json.dumps(settings))
    result = runner.run_task("characterize", workdir / "input.json")
    assert result["status"] == "error" and "nwalkers must be a positive integer" in result["message"]
    settings["tasks"] = {"dmc": {"nwalkers": 10}}
    (workdir / "input.json").write_text(json.dumps(settings))
    result = runner.run_task("characterize", workdir / "input.json")
    assert result["status"] == "error" and "not a minimum" in result["message"]


def _water_settings(tasks, **extra):
    return {
        "driver": {"name": "tblite", "parameters": {"method": "GFN2-xTB", "accuracy": 0.01}},
        "structure": "water.xyz",
        "source": "test",
        "tasks": tasks,
        **extra,
    }


@pytest.fixture
def water_dir(tmp_path):
    linear = molecule("H2O")
    linear.positions = [[0, 0, 0], [0.97, 0, 0], [-0.97, 0, 0]]  # a saddle of the bending mode
    write(tmp_path / "water.xyz", linear)
    write(tmp_path / "water_min.xyz", molecule("H2O"))
    return tmp_path


def test_water_from_a_saddle_dmc_outcome_and_candidates(water_dir):
    tasks = {
        "optimize": {"fmax": 1e-3},
        "frequencies": {},
        "dmc": {"nwalkers": 12, "nsteps": 10, "eqsteps": 2, "seed": 1, "initial": "harmonic"},
        "explore": {"n_candidates": 8, "md_steps": 40, "md_save_interval": 4, "seed": 2},
    }
    result = run_characterize_task(_water_settings(tasks), water_dir)
    opt = result["optimize"]
    assert opt["saddle_escaped"] and opt["imaginary_frequencies"] == []
    assert opt["saddle_frequencies"][0][0] < -500  # the linear bend of water
    assert opt["energy"] < opt["saddle_energies"][0]
    assert len(result["frequencies"]["minimum"]) == 3 and min(result["frequencies"]["minimum"]) > 1000
    dmc = result["dmc"]
    assert dmc["outcome"] in ("completed", "too_short", "drift") and dmc["n_steps_done"] == 10
    assert dmc["completed"] == (dmc["outcome"] == "completed")
    assert dmc["production_walker_steps"] > 0 and dmc["settings"]["min_walker_steps"] == 12 * 8 // 2
    explored = result["explore"]
    assert explored["n_candidates"] == 8 and explored["force_std_max"] is None
    assert explored["counts"]["pool_dmc"] == dmc["n_walkers_final"] and explored["counts"]["pool_md"] == 10
    assert len(explored["origin"]) == len(explored["energies"]) == 8
    assert explored["counts"]["selected_dmc"] == explored["counts"]["selected_md"] == 4
    from aiida_mlpes.core.dataset import read_arrays

    candidates = read_arrays(water_dir / "candidates.h5")
    assert len(candidates) == 8 and candidates.energy is None and set(candidates.source) == {"test"}
    assert "candidates.h5" in result["files"]
    json.dumps(result, allow_nan=False)  # strictly valid JSON


def test_non_finite_numbers_become_null(water_dir):
    tasks = {"dmc": {"nwalkers": 10, "nsteps": 50, "eqsteps": 10, "seed": 0, "max_wall_time": 1e-9}}
    settings = _water_settings(tasks, structure="water_min.xyz")
    settings["tasks"]["optimize"] = {}
    (water_dir / "input.json").write_text(json.dumps(settings))
    result = runner.run_task("characterize", water_dir / "input.json")
    assert result["status"] == "ok", result.get("message")
    dmc = json.loads((water_dir / "result.json").read_text())["dmc"]
    assert dmc["outcome"] == "truncated" and "wall time" in dmc["stopped"]
    assert dmc["zpe"] is None and dmc["zpe_error"] is None and dmc["zpe_cm"] is None


def test_a_ts_guess_that_is_no_saddle_is_refused(water_dir):
    tasks = {"optimize": {}, "optimize_ts": {"fmax": 1.0}}  # the guess is a minimum: "converged" at once
    settings = _water_settings(tasks, structure="water_min.xyz", ts_structure="water_min.xyz")
    (water_dir / "input.json").write_text(json.dumps(settings))
    result = runner.run_task("characterize", water_dir / "input.json")
    assert result["status"] == "error"
    assert (
        "has 0 imaginary frequencies (none cm^-1)" in result["message"] and "exactly one" in result["message"]
    )


def test_committee_candidates_through_the_mlpes_driver(water_dir):
    """Two random PhysNets as a committee: candidates come with their force deviation, most uncertain first."""
    import torch

    from aiida_mlpes.core.models import ModelConfig, build_model, save_model

    for k in range(2):
        torch.manual_seed(k)
        config = ModelConfig(architecture="physnet", elements=[1, 8], n_features=8, n_rbf=8, n_blocks=1)
        model = build_model(config)
        with torch.no_grad():
            for parameter in model.parameters():  # untrained heads start at zero: give the members a spread
                parameter.add_(0.1 * torch.randn_like(parameter))
        save_model(model, water_dir / f"m{k}.pt")
    tasks = {"explore": {"n_candidates": 5, "md_steps": 40, "md_save_interval": 2, "window": [0.0, 1e9]}}
    settings = _water_settings(tasks, structure="water_min.xyz")
    settings["driver"] = {"name": "mlpes", "parameters": {"model": ["m0.pt", "m1.pt"]}}
    result = run_characterize_task(settings, water_dir)
    explored = result["explore"]
    std = explored["force_std_max"]
    assert explored["settings"]["committee"] and len(std) == 5 and all(s > 0 for s in std)
    assert std[0] == pytest.approx(explored["pool_force_std"]["max"])
    assert (
        explored["counts"]["in_window"]
        == explored["counts"]["pool_md"] - explored["counts"]["dropped_nonfinite"]
    )


def test_finite_or_none():
    from aiida_mlpes.core.runner import finite_or_none

    value = {
        "a": float("nan"),
        "b": [1.0, float("inf"), np.float64("-inf"), np.float32(2.0)],
        "c": np.array([np.nan, 1]),
    }
    assert finite_or_none(value) == {"a": None, "b": [1.0, None, None, 2.0], "c": [None, 1.0]}
