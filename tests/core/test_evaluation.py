"""Evaluation: metrics against hand-computed values, prediction files, plots, predictions of a real model."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from aiida_mlpes.core.evaluation import (
    compute_metrics,
    evaluate_model,
    metrics,
    plot_learning_curves,
    predict,
    write_predictions,
)
from aiida_mlpes.core.models import ModelConfig, build_model, collate
from aiida_mlpes.core.ragged import RaggedArrays

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def two_molecules() -> RaggedArrays:
    return RaggedArrays(
        n_atoms=[2, 3],
        atomic_numbers=[1, 1, 7, 1, 1],
        positions=[[0, 0, 0], [0.74, 0, 0], [0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]],
        energy=np.array([-31.0, -1500.0]),
        forces=np.arange(15, dtype=float).reshape(5, 3) * 0.1,
        dipole=np.array([[0.0, 0, 0], [0.1, 0.2, 0.3]]),
    )


def test_metrics_match_hand_computed_values():
    m = metrics([1.0, 2.0, 4.0], [1.0, 3.0, 2.0])  # errors 0, -1, 2
    assert m["mae"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(np.sqrt(5 / 3))
    assert m["n"] == 3
    # Pearson r of (1,2,4) vs (1,3,2): cov 0.5, std 1.5275 and 1 (ddof 1) -> r = 0.327327
    r = 0.5 / (np.std([1, 2, 4], ddof=1) * np.std([1, 3, 2], ddof=1))
    assert m["one_minus_r2"] == pytest.approx(1 - r * r)
    perfect = metrics(np.array([[1.0, 2.0], [3.0, 5.0]]), np.array([[1.0, 2.0], [3.0, 5.0]]))
    assert perfect == {"mae": 0.0, "rmse": 0.0, "n": 4, "one_minus_r2": pytest.approx(0.0, abs=1e-15)}
    assert np.isnan(metrics([1.0, 1.0], [1.0, 2.0])["one_minus_r2"])  # constant prediction: r undefined
    with pytest.raises(ValueError, match="prediction has 2 values but reference 3"):
        metrics([1.0, 2.0], [1.0, 2.0, 3.0])


def test_prediction_files_and_plots(tmp_path):
    arrays = two_molecules()
    pred = {
        "energy": arrays.energy + np.array([0.01, -0.03]),
        "forces": arrays.forces + 0.05,
        "dipole": arrays.dipole * 1.1,
    }
    m = compute_metrics(pred, arrays)
    assert set(m) == {"energy", "forces", "dipole"}
    assert m["energy"]["mae"] == pytest.approx(0.02)
    assert m["forces"]["mae"] == pytest.approx(0.05)
    npz_path, csv_path = write_predictions(pred, arrays, tmp_path / "out" / "predictions")
    with np.load(npz_path) as data:
        np.testing.assert_array_equal(data["forces_pred"], pred["forces"])
        np.testing.assert_array_equal(data["energy_ref"], arrays.energy)
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 2
    assert float(rows[1]["energy_error"]) == pytest.approx(-0.03)
    assert float(rows[0]["forces_mae"]) == pytest.approx(0.05)
    assert float(rows[0]["forces_max_error"]) == pytest.approx(0.05 * np.sqrt(3))
    from aiida_mlpes.core.evaluation import plot_all

    for path in plot_all(pred, arrays, tmp_path / "plots"):
        assert path.read_bytes()[:8] == PNG_MAGIC, path
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {
        "correlation.png",
        "error_histogram.png",
        "error_vs_energy.png",
    }


def test_learning_curve_plot(tmp_path):
    curve = tmp_path / "learning_curve.csv"
    curve.write_text(
        "epoch,lr,wall_time_s,train_loss,valid_loss,valid_mae_energy,valid_rmse_energy,best\n"
        "1,0.001,0.1,2.0,,,,0\n2,0.001,0.2,1.0,1.5,0.3,0.4,1\n3,0.001,0.3,0.5,,,,0\n4,0.001,0.4,0.2,0.4,0.1,0.2,1\n"
    )
    path = plot_learning_curves(curve, tmp_path / "lc.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_predict_matches_model_and_rejects_unknown_elements(tmp_path):
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(elements=[1, 7], n_features=8, n_rbf=4, n_blocks=1, cutoff=4.0, dtype="float64")
    )
    model.set_reference([-13.0, -1480.0], 0.5)
    arrays = two_molecules()
    pred = predict(model, arrays, batch_size=1)
    out = model(collate(arrays, dtype=torch.float64), compute_forces=True)
    np.testing.assert_allclose(pred["energy"], out["energy"].detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(pred["forces"], out["forces"].detach().numpy(), rtol=0, atol=1e-10)
    assert pred["dipole"].shape == (2, 3) and pred["atomic_charges"].shape == (5,)
    result = evaluate_model(model, arrays, tmp_path)
    assert result["metrics"]["energy"]["n"] == 2
    assert {p.name for p in result["files"]} >= {"predictions.csv", "predictions.npz", "correlation.png"}
    water = RaggedArrays(n_atoms=[3], atomic_numbers=[8, 1, 1], positions=np.eye(3))
    with pytest.raises(ValueError, match=r"O \(Z=8\)"):
        predict(model, water)
