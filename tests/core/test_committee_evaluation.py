"""Committees wherever a model is used: ASE calculator, batched Potential (DMC), predict, train/test tasks."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from ase import Atoms

from aiida_mlpes.core.calculator import MLPESCalculator
from aiida_mlpes.core.dataset import write_dataset
from aiida_mlpes.core.ensemble import committee_predict, train_committee
from aiida_mlpes.core.evaluation import predict
from aiida_mlpes.core.models import Committee, load_model, save_model
from aiida_mlpes.core.runner import TaskError
from aiida_mlpes.core.training_task import run_test_task, run_train_task
from tests.core.test_committee import WATER_METHANE, distinct_members, quick, small_config
from tests.core.test_training import morse_molecules

WATER = np.array([[0.0, 0.0, 0.12], [0.0, 0.76, -0.47], [0.0, -0.76, -0.47]])
TINY = {"n_features": 16, "n_rbf": 8, "n_blocks": 1, "cutoff": 4.0}
FAST = {"batch_size": 8, "progress_bar": False, "device": "cpu", "threads": 1}


def walkers(n: int, seed: int = 0) -> np.ndarray:
    return WATER[None] + 0.05 * np.random.default_rng(seed).normal(size=(n, 3, 3))


@pytest.fixture
def members():
    return distinct_members(small_config(dtype="float64"), 3)


def member_results(models, positions):
    """Reference: each member alone through its own single-model potential."""
    outs = [MLPESCalculator(m).as_potential([8, 1, 1], use_numpy=False)(positions) for m in models]
    return np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs])


def test_calculator_and_potential_of_a_committee_file(tmp_path, members):
    path = save_model(Committee.from_members(members), tmp_path / "committee.pt")
    calc = MLPESCalculator(path)
    assert len(calc.models) == 1 and isinstance(calc.models[0], Committee)
    positions = walkers(5)
    energies, forces = member_results(members, positions)
    atoms = Atoms("OH2", positions=positions[0])
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(energies[:, 0].mean(), abs=1e-9)
    np.testing.assert_allclose(atoms.get_forces(), forces[:, 0].mean(axis=0), atol=1e-9)
    assert calc.results["energy_std"] == pytest.approx(energies[:, 0].std(), abs=1e-9)
    np.testing.assert_allclose(calc.results["forces_std"], forces[:, 0].std(axis=0), atol=1e-9)
    worst = np.linalg.norm(forces[:, 0].std(axis=0), axis=-1).max()
    assert calc.results["forces_std_max"] == pytest.approx(worst, abs=1e-9)
    assert atoms.get_dipole_moment().shape == (3,)

    potential = calc.as_potential([8, 1, 1], return_std=True, chunk_size=2)  # chunks: 2 + 2 + 1
    e, f, std = potential(positions)
    np.testing.assert_allclose(e, energies.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(f, forces.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(std, energies.std(axis=0), atol=1e-9)
    np.testing.assert_allclose(potential.uncertainty(positions), std, atol=1e-12)
    out = potential.evaluate(positions)
    sparc = np.linalg.norm(forces.std(axis=0), axis=-1).max(axis=-1)
    np.testing.assert_allclose(out["forces_std_max"], sparc, atol=1e-9)
    assert (out["forces_std_max"] > 0).all() and out["energy_std"].shape == (5,)
    # the list-of-models API gives the same numbers (stacked into one committee internally)
    listed = MLPESCalculator(members).as_potential([8, 1, 1]).evaluate(positions)
    for key in ("energy", "forces", "energy_std", "forces_std_max"):
        np.testing.assert_allclose(listed[key], out[key], atol=1e-9)


def test_identical_members_have_zero_spread(tmp_path, members):
    potential = MLPESCalculator(Committee.from_members([members[0]] * 2)).as_potential([8, 1, 1])
    out = potential.evaluate(walkers(4))
    assert np.all(out["energy_std"] == 0) and np.all(out["forces_std_max"] == 0)


def test_dmc_uncertainty_threshold_with_a_committee(members):
    from aiida_mlpes.core.characterize.dmc import run_dmc

    potential = MLPESCalculator(Committee.from_members(members)).as_potential([8, 1, 1], return_std=True)
    spread = potential.uncertainty(WATER[None])[0]
    assert spread > 0
    # a threshold below the spread at the start flags every walker as a hole (reason "uncertainty")
    with pytest.warns(RuntimeWarning, match="all walkers died"):
        result = run_dmc(
            potential, [8, 1, 1], WATER, nwalkers=20, nsteps=3, eqsteps=1, seed=1, check=False,
            uncertainty_threshold=0.5 * spread, hole_threshold=None, collapse_factor=0.0,
        )  # fmt: skip
    assert len(result.holes) > 0 and set(result.hole_reasons) == {"uncertainty"}


def test_predict_and_committee_predict_accept_committees(tmp_path, members):
    data = morse_molecules(WATER_METHANE, 6, seed=2)
    data_water = data.select(np.arange(0, 6, 2))
    path = save_model(Committee.from_members(members), tmp_path / "committee.pt")
    by_file = predict(path, data_water)
    singles = [predict(m, data_water) for m in members]
    np.testing.assert_allclose(by_file["energy"], np.mean([s["energy"] for s in singles], axis=0), atol=1e-9)
    np.testing.assert_allclose(
        by_file["energy_std"], np.std([s["energy"] for s in singles], axis=0), atol=1e-9
    )
    listed = committee_predict(members, data_water)
    np.testing.assert_allclose(listed["forces_std_max"], by_file["forces_std_max"], atol=1e-9)
    with pytest.raises(ValueError, match="single model"):
        committee_predict(members[0], data_water)
    with pytest.raises(ValueError, match="at least 2 members"):
        committee_predict(members[:1], data_water)
    with pytest.raises(ValueError, match="at least 2 members"):
        train_committee(data, np.arange(4), np.arange(4, 6), small_config(), quick(), tmp_path, n_models=1)


#: A split whose test part is not empty for these 40 conformations (splits come from keyed hashes).
SPLIT = {"fractions": [0.6, 0.2, 0.2], "seed": 0}


@pytest.fixture
def workdir(tmp_path):
    data = morse_molecules(WATER_METHANE, 40, seed=5)
    write_dataset(tmp_path / "dataset.h5", data, level_of_theory="morse")
    return tmp_path


def test_train_task_with_committee_size_through_the_runner(workdir):
    executable = shutil.which("aiida-mlpes-run")
    assert executable, "aiida-mlpes-run is not on PATH: install the package (pip install -e .)"
    settings = {
        "dataset": "dataset.h5",
        "model": TINY,
        "training": {**FAST, "max_epochs": 2},
        "committee_size": 3,
        "split": SPLIT,
    }
    (workdir / "input.json").write_text(json.dumps(settings))
    subprocess.run([executable, "train", "input.json"], cwd=workdir, check=True, capture_output=True)
    result = json.loads((workdir / "result.json").read_text())
    assert result["committee"]["size"] == 3
    for name in ("valid", "test"):
        assert result["committee"][name]["energy_std_mean"] > 0
        assert result["committee"][name]["forces_std_max_mean"] > 0
        assert set(result["metrics"][name]) >= {"energy", "forces"}
    model = load_model(workdir / "model.pt")
    assert isinstance(model, Committee) and model.size == 3


def test_train_task_fine_tunes_a_committee_file_and_rejects_bad_sizes(workdir):
    from aiida_mlpes.core.models import ModelConfig

    config = ModelConfig(elements=[1, 6, 8], **TINY)
    save_model(Committee.from_config(config, 2, seed=3), workdir / "parent.pt")
    settings = {
        "dataset": "dataset.h5",
        "training": {**FAST, "max_epochs": 1},
        "parent_model": "parent.pt",
        "split": SPLIT,
    }
    result = run_train_task(settings, workdir)  # committee_size left out: the parent's 2 members
    assert result["committee"]["size"] == 2 and load_model(workdir / "model.pt").size == 2
    tested = run_test_task(
        {"dataset": "dataset.h5", "model": "model.pt", "subset": "test", "split": SPLIT}, workdir
    )
    assert tested["metrics"]["energy"]["n"] == result["n_conformations"]["test"]
    assert "predictions.csv" in tested["files"]
    with pytest.raises(TaskError, match="committee_size 1 but the parent model is a committee of 2"):
        run_train_task({**settings, "committee_size": 1}, workdir)
    with pytest.raises(TaskError, match="committee_size must be an integer >= 1"):
        run_train_task({**settings, "committee_size": 0}, workdir)
    torch.manual_seed(0)
    save_model(Committee.from_config(config, 2).member(0), workdir / "single.pt")
    with pytest.raises(TaskError, match="zero spread"):
        run_train_task({**settings, "parent_model": "single.pt", "committee_size": 3}, workdir)


def test_single_model_train_task_reports_no_committee(workdir):
    result = run_train_task(
        {"dataset": "dataset.h5", "model": TINY, "training": {**FAST, "max_epochs": 1}}, workdir
    )
    assert "committee" not in result
    assert not isinstance(load_model(workdir / "model.pt"), Committee)
