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
