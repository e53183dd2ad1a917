"""Runner tasks ``train`` and ``test``: files written, metrics, restart from a checkpoint, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aiida_mlpes.core.dataset import read_arrays, write_dataset
from aiida_mlpes.core.models import load_model
from aiida_mlpes.core.runner import TaskError
from aiida_mlpes.core.training import read_curve
from aiida_mlpes.core.training_task import resolve_split, run_test_task, run_train_task
from tests.core.test_training import morse_molecules

TINY = {"n_features": 16, "n_rbf": 8, "n_blocks": 1, "cutoff": 4.0}
FAST = {"batch_size": 8, "progress_bar": False, "device": "cpu", "threads": 1}


@pytest.fixture
def workdir(tmp_path):
    write_dataset(tmp_path / "dataset.h5", morse_molecules([[7, 1, 1, 1]], 20), level_of_theory="morse")
    return tmp_path


def test_train_task_writes_model_curve_and_metrics(workdir):
    settings = {"dataset": "dataset.h5", "model": TINY, "training": {**FAST, "max_epochs": 4}}
    result = run_train_task(settings, workdir)
    assert result["complete"] and result["stop_reason"] == "max_epochs" and result["epochs"] == 4
    expected = {k: len(v) for k, v in resolve_split(read_arrays(workdir / "dataset.h5"), None).items()}
    assert result["n_conformations"] == expected and sum(expected.values()) == 20  # fixed keyed-hash split
    assert set(result["metrics"]) == {"valid", "test"}
    assert result["metrics"]["test"]["energy"]["n"] == expected["test"]
    model = load_model(workdir / "model.pt")
    assert model.config.elements == [1, 7]  # taken from the dataset
    for name in ("checkpoint.pt", "learning_curve.csv", "learning_curves.png"):
        assert (workdir / name).is_file(), name
    json.dumps(result)  # result.json must be serialisable


def test_train_task_restart_continues_the_checkpoint(workdir, tmp_path_factory):
    settings = {"dataset": "dataset.h5", "model": TINY, "training": {**FAST, "max_epochs": 3}}
    run_train_task(settings, workdir)
    second = tmp_path_factory.mktemp("second")
    for name in ("dataset.h5", "checkpoint.pt", "learning_curve.csv"):
        (second / name).write_bytes((workdir / name).read_bytes())
    settings["training"]["max_epochs"] = 5
    result = run_train_task({**settings, "restart_checkpoint": "checkpoint.pt"}, second)
    assert result["epochs"] == 5
    assert read_curve(second / "learning_curve.csv")["epoch"] == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_train_task_errors_are_task_errors(workdir):
    with pytest.raises(TaskError, match="unknown training settings"):
        run_train_task({"dataset": "dataset.h5", "training": {"epochs": 3}}, workdir)
    with pytest.raises(TaskError, match="split: unknown keys"):
        run_train_task({"dataset": "dataset.h5", "model": TINY, "split": {"ratio": 0.8}}, workdir)
    with pytest.raises(TaskError, match=r"N \(Z=7\) that the model does not know"):
        run_train_task({"dataset": "dataset.h5", "model": {**TINY, "elements": [1, 8]}}, workdir)


def test_test_task_metrics_and_plots(workdir):
    run_train_task({"dataset": "dataset.h5", "model": TINY, "training": {**FAST, "max_epochs": 2}}, workdir)
    result = run_test_task({"dataset": "dataset.h5", "model": "model.pt", "subset": "test"}, workdir)
    assert result["n_conformations"] == len(resolve_split(read_arrays(workdir / "dataset.h5"), None)["test"])
    assert set(result["metrics"]) >= {"energy", "forces", "dipole"}
    assert {"correlation.png", "error_histogram.png", "error_vs_energy.png", "predictions.csv"} <= set(
        result["files"]
    )
    every = run_test_task({"dataset": "dataset.h5", "model": "model.pt", "indices": [0, 3, 5]}, workdir)
    assert every["n_conformations"] == 3
    with pytest.raises(TaskError, match="subset must be"):
        run_test_task({"dataset": "dataset.h5", "model": "model.pt", "subset": "training"}, workdir)
    (workdir / "broken.pt").write_bytes(b"not a model")
    with pytest.raises(TaskError, match="corrupt"):
        run_test_task({"dataset": "dataset.h5", "model": "broken.pt"}, workdir)


def test_resolve_split_explicit_and_reproducible():
    arrays = morse_molecules([[7, 1, 1, 1]], 10)
    from aiida_mlpes.core.dataset import conformation_hashes

    arrays.hash = conformation_hashes(arrays)
    a, b = resolve_split(arrays, None), resolve_split(arrays, {"seed": 0})
    assert all(np.array_equal(a[k], b[k]) for k in a)
    explicit = resolve_split(arrays, {"train": [0, 1], "valid": [2]})
    assert explicit["test"].size == 0
    with pytest.raises(TaskError, match="out of range"):
        resolve_split(arrays, {"train": [0, 11], "valid": [2]})
