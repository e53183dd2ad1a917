"""Trainer: overfitting, bit-exact resume, fine-tuning, reference energies, bad input, NaN loss, ensembles."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from aiida_mlpes.core.models import ModelConfig, build_model, load_model, save_model
from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.core.training import (
    Trainer,
    TrainingConfig,
    TrainingDivergedError,
    WeightedLoss,
    energy_scale,
    fit_element_references,
    read_curve,
    resolve_device,
)
from aiida_mlpes.core.training.targets import DeviceBatches, composition_matrix

#: Element reference energies (eV) of the synthetic data: H, C, N, O.
REFS = {1: -13.6, 6: -1030.0, 7: -1480.0, 8: -2040.0}
CHARGES = {1: 0.2, 6: -0.5, 7: -0.6, 8: -0.4}


def morse_molecules(numbers_list, n_conf: int, seed: int = 0, noise: float = 0.08) -> RaggedArrays:
    """Random distortions of small molecules labelled with a Morse pair potential plus element references;
    dipole from fixed point charges. Energies eV, forces eV/A (analytic)."""
    rng = np.random.default_rng(seed)
    images = []
    for k in range(n_conf):
        numbers = np.asarray(numbers_list[k % len(numbers_list)])
        n = len(numbers)
        base = np.zeros((n, 3))
        base[1:, 0] = 1.0
        base[1:] = np.array(
            [[np.cos(a), np.sin(a), 0.3 * (-1) ** i] for i, a in enumerate(np.arange(1, n) * 2.1)]
        )
        pos = base + noise * rng.normal(size=(n, 3))
        diff = pos[:, None] - pos[None]
        r = np.linalg.norm(diff, axis=-1) + np.eye(n)
        d, a, r0 = 0.5, 1.8, 1.0
        x = np.exp(-a * (r - r0))
        pair = d * (1 - x) ** 2
        dpair = 2 * d * a * x * (1 - x)
        np.fill_diagonal(pair, 0.0)
        np.fill_diagonal(dpair, 0.0)
        energy = 0.5 * pair.sum() + sum(REFS[int(z)] for z in numbers)
        forces = -(dpair / r)[..., None] * diff
        forces = forces.sum(axis=1)
        q = np.array([CHARGES[int(z)] for z in numbers])
        q -= q.mean()
        images.append((numbers, pos, energy, forces, q @ pos, q))
    return RaggedArrays(
        n_atoms=[len(i[0]) for i in images],
        atomic_numbers=np.concatenate([i[0] for i in images]),
        positions=np.concatenate([i[1] for i in images]),
        energy=np.array([i[2] for i in images]),
        forces=np.concatenate([i[3] for i in images]),
        dipole=np.array([i[4] for i in images]),
        atomic_charges=np.concatenate([i[5] for i in images]),
    )


def tiny_config(**kwargs) -> ModelConfig:
    base = {"elements": [1, 7], "n_features": 16, "n_rbf": 8, "n_blocks": 1, "cutoff": 4.0}
    base.update(kwargs)
    return ModelConfig(**base)


def quick(**kwargs) -> TrainingConfig:
    base = {"max_epochs": 10, "batch_size": 4, "progress_bar": False, "device": "cpu", "threads": 1}
    base.update(kwargs)
    return TrainingConfig(**base)


@pytest.fixture(scope="module")
def nh3() -> RaggedArrays:
    return morse_molecules([[7, 1, 1, 1]], 16)


def test_config_roundtrip_and_validation():
    config = TrainingConfig(loss_weights={"dipole": 0.0}, max_epochs=7)
    assert config.loss_weights == {
        "energy": 1.0,
        "forces": 50.0,
        "dipole": 0.0,
        "charge": 1.0,
        "atomic_charges": 0.0,
    }
    assert TrainingConfig.from_dict(config.to_dict()) == config
    defaults = TrainingConfig()
    assert (defaults.learning_rate, defaults.weight_decay, defaults.amsgrad) == (1e-3, 1e-5, True)
    assert (defaults.lr_decay, defaults.ema_decay, defaults.validation_interval) == (0.999, 0.99, 5)
    with pytest.raises(ValueError, match="unknown training settings"):
        TrainingConfig.from_dict({"max_epoch": 3})
    with pytest.raises(ValueError, match="loss_weights: unknown"):
        TrainingConfig(loss_weights={"stress": 1.0})
    with pytest.raises(ValueError, match="batch_size"):
        TrainingConfig(batch_size=0)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainingConfig(ema_decay=1.0)


def test_device_resolution():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_element_references_fitted_exactly():
    arrays = morse_molecules([[7, 1, 1, 1], [8, 1, 1], [7, 7], [8, 8, 1], [1, 1]], 20, noise=0.0)
    # remove the (composition-dependent) Morse part so that the energies are exactly linear in composition
    counts = composition_matrix(arrays, [1, 7, 8])
    truth = np.array([REFS[1], REFS[7], REFS[8]])
    arrays.energy = counts @ truth
    refs = fit_element_references(arrays, [1, 7, 8])
    np.testing.assert_allclose(refs, truth, rtol=0, atol=1e-9)
    assert refs.dtype == np.float64
    # single composition: minimum-norm solution still reproduces the mean energy
    single = morse_molecules([[7, 1, 1, 1]], 5)
    refs = fit_element_references(single, [1, 7])
    assert composition_matrix(single, [1, 7])[0] @ refs == pytest.approx(single.energy.mean(), abs=1e-9)
    # scale: RMS force component
    assert energy_scale(single, [1, 7], refs) == pytest.approx(np.sqrt(np.mean(single.forces**2)))
    with pytest.raises(ValueError, match=r"O \(Z=8\).*conformation 1"):
        fit_element_references(morse_molecules([[7, 1, 1, 1], [8, 1, 1]], 2), [1, 7])


def test_weighted_huber_loss_matches_hand_computation():
    loss_fn = WeightedLoss({"energy": 1.0, "forces": 50.0, "dipole": 25.0, "charge": 1.0}, beta=1.0)
    batch = {
        "positions": torch.zeros(3, 3, dtype=torch.float64),
        "batch": torch.tensor([0, 0, 1]),
        "energy": torch.tensor([-100.0, -50.0], dtype=torch.float64),
        "forces": torch.zeros(3, 3, dtype=torch.float64),
        "dipole": torch.zeros(2, 3, dtype=torch.float64),
        "charge": torch.tensor([0.0, 1.0], dtype=torch.float64),
    }
    out = {
        "energy": torch.tensor([-99.5, -53.0], dtype=torch.float64),  # errors 0.5 (quadratic), -3 (linear)
        "forces": torch.full((3, 3), 0.2, dtype=torch.float64),
        "dipole": torch.tensor([[2.0, 0, 0], [0, 0, 0]], dtype=torch.float64),
        "atomic_charges": torch.tensor([0.1, 0.1, 0.5], dtype=torch.float64),  # sums 0.2 vs 0, 0.5 vs 1
    }
    total, rows = loss_fn(out, batch)
    e = (0.5 * 0.5**2 + (3 - 0.5)) / 2
    f = 0.5 * 0.2**2
    d = (2 - 0.5) / 6
    q = (0.5 * 0.2**2 + 0.5 * 0.5**2) / 2
    assert float(total) == pytest.approx(e + 50 * f + 25 * d + q, rel=1e-12)
    np.testing.assert_allclose(rows[:, 1].numpy(), [1.75, 0.2, 2 / 6, 0.35], rtol=1e-12)


def test_device_batches_match_collate(nh3):
    from aiida_mlpes.core.models import collate

    data = DeviceBatches(nh3, torch.device("cpu"), torch.float32)
    idx = np.array([5, 0, 11])
    ours, ref = data.batch(idx), collate(nh3, idx)
    assert set(ours) == set(ref)
    for key in ref:
        assert torch.equal(ours[key], ref[key]), key


def test_tiny_model_overfits_few_structures(tmp_path, nh3):
    config = quick(
        max_epochs=200, learning_rate=1e-2, ema_decay=0.0, validation_interval=200, checkpoint_interval=200
    )
    trainer = Trainer(tiny_config(), config, tmp_path)
    result = trainer.fit(nh3, np.arange(4), np.arange(4))
    curve = read_curve(result.learning_curve)
    first, last = curve["train_loss"][0], min(curve["train_loss"][-20:])
    assert last < first * 1e-2, (first, last)
    assert result.valid_metrics["energy"]["mae"] < 0.02  # eV, from ~0.3 eV spread
    model = load_model(result.best_model)
    np.testing.assert_allclose(
        model.element_energies.numpy(), fit_element_references(nh3.select(np.arange(4)), [1, 7])
    )


def _state(path):
    return torch.load(path, weights_only=True)


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path, nh3, monkeypatch):
    model_config = tiny_config(dtype="float64")
    config = quick(
        max_epochs=9, checkpoint_interval=2, checkpoint_min_seconds=0, validation_interval=2, ema_decay=0.9
    )
    train, valid = np.arange(12), np.arange(12, 16)
    full = Trainer(model_config, config, tmp_path / "full").fit(nh3, train, valid)
    # first a run that stops after epoch 4 (checkpoint written), then one killed in the middle of epoch 6
    first = Trainer(model_config, config, tmp_path / "split").fit(nh3, train, valid, max_epochs=4)
    assert first.epochs == 4
    calls = {"n": 0}
    original = WeightedLoss.__call__

    def interrupted(self, out, batch):
        calls["n"] += 1
        if calls["n"] == 3 + 2:  # resumes at epoch 5; 3 steps per epoch: second step of epoch 6
            raise KeyboardInterrupt
        return original(self, out, batch)

    with monkeypatch.context() as patch:
        patch.setattr(WeightedLoss, "__call__", interrupted)
        with pytest.raises(KeyboardInterrupt):
            Trainer(model_config, config, tmp_path / "split").fit(nh3, train, valid)
    assert _state(tmp_path / "split" / "checkpoint.pt")["state"]["epoch"] == 4
    torch.manual_seed(1234)  # resuming must restore every random state itself
    resumed = Trainer(model_config, config, tmp_path / "split").fit(nh3, train, valid)
    assert resumed.epochs == full.epochs == 9
    a, b = _state(full.checkpoint), _state(resumed.checkpoint)
    for part in ("model", "best_state"):
        for key in a[part]:
            assert torch.allclose(a[part][key], b[part][key], rtol=0, atol=1e-10), (part, key)
    for key in a["ema"]["module"]:
        assert torch.allclose(a["ema"]["module"][key], b["ema"]["module"][key], rtol=0, atol=1e-10), key
    assert resumed.best_epoch == full.best_epoch
    assert resumed.best_valid_loss == pytest.approx(full.best_valid_loss, rel=1e-10)
    best_a, best_b = _state(full.best_model)["state_dict"], _state(resumed.best_model)["state_dict"]
    assert all(torch.allclose(best_a[k], best_b[k], rtol=0, atol=1e-10) for k in best_a)
    rows_full, rows_resumed = read_curve(full.learning_curve), read_curve(resumed.learning_curve)
    assert rows_full["epoch"] == rows_resumed["epoch"] == list(map(float, range(1, 10)))
    np.testing.assert_allclose(rows_full["train_loss"], rows_resumed["train_loss"], rtol=1e-7)


def test_fine_tuning_starts_from_parent_weights(tmp_path, nh3):
    parent = Trainer(tiny_config(), quick(max_epochs=3), tmp_path / "parent").fit(
        nh3, np.arange(8), np.arange(8, 12)
    )
    parent_model = load_model(parent.best_model)
    shifted = morse_molecules([[7, 1, 1, 1]], 8, seed=5)
    shifted.energy = shifted.energy + 1.0  # other level of theory: refs must stay unless asked
    child = Trainer(
        config=quick(max_epochs=2, learning_rate=1e-4), workdir=tmp_path / "child", parent=parent.best_model
    )
    for (name, p), q in zip(
        parent_model.state_dict().items(), child.model.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    result = child.fit(shifted, np.arange(6), np.arange(6, 8))
    tuned = load_model(result.best_model)
    assert torch.equal(tuned.element_energies, parent_model.element_energies)
    assert torch.equal(tuned.energy_scale, parent_model.energy_scale)
    changed = [
        not torch.equal(a, b) for a, b in zip(parent_model.parameters(), tuned.parameters(), strict=True)
    ]
    assert any(changed)
    refit = Trainer(
        config=quick(max_epochs=1, refit_references=True),
        workdir=tmp_path / "refit",
        parent=parent.best_model,
    )
    refit.fit(shifted, np.arange(6), np.arange(6, 8))
    np.testing.assert_allclose(
        refit.model.element_energies.numpy(), fit_element_references(shifted.select(np.arange(6)), [1, 7])
    )
    with pytest.raises(ValueError, match=r"O \(Z=8\)"):
        Trainer(config=quick(), workdir=tmp_path / "x", parent=parent.best_model).fit(
            morse_molecules([[8, 1, 1]], 4), [0, 1], [2, 3]
        )


def test_missing_forces_and_unknown_elements_raise_before_training(tmp_path, nh3):
    no_forces = nh3.select(np.arange(8))
    no_forces.forces = None
    trainer = Trainer(tiny_config(), quick(), tmp_path)
    with pytest.raises(ValueError, match=r"no 'forces' but the loss weights forces with 50"):
        trainer.fit(no_forces, np.arange(6), [6, 7])
    assert not (tmp_path / "checkpoint.pt").exists()
    # energies only: allowed when the force weight is zero
    result = Trainer(tiny_config(), quick(max_epochs=2, loss_weights={"forces": 0}), tmp_path / "e").fit(
        no_forces, np.arange(6), [6, 7]
    )
    assert result.loss_properties == ["energy", "dipole", "charge"]
    water = morse_molecules([[7, 1, 1, 1], [8, 1, 1]], 6)
    with pytest.raises(ValueError, match=r"valid split: .*O \(Z=8\).*conformation 3"):
        trainer.fit(water, [0, 2], [3, 5])
    bad = nh3.select(np.arange(8))
    bad.energy[3] = np.nan
    with pytest.raises(ValueError, match=r"'energy' is not finite in conformation 3"):
        trainer.fit(bad, np.arange(6), [6, 7])
    bad = nh3.select(np.arange(8))
    bad.forces[4 * 5 + 2, 1] = np.inf
    with pytest.raises(ValueError, match=r"train split: field 'forces' is not finite in conformation 5"):
        trainer.fit(bad, [0, 5, 2], [6, 7])
    with pytest.raises(ValueError, match="valid split is empty"):
        trainer.fit(nh3, np.arange(6), [])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, nh3, monkeypatch):
    calls = {"n": 0}
    original = WeightedLoss.__call__

    def poisoned(self, out, batch):
        calls["n"] += 1
        total, rows = original(self, out, batch)
        return (total * float("nan") if calls["n"] > 9 else total), rows

    monkeypatch.setattr(WeightedLoss, "__call__", poisoned)
    config = quick(
        max_epochs=10, checkpoint_interval=1, checkpoint_min_seconds=0
    )  # 3 steps/epoch: NaN in epoch 4
    with pytest.raises(TrainingDivergedError, match=r"epoch 4.*last good checkpoint \(epoch 3\)"):
        Trainer(tiny_config(), config, tmp_path).fit(nh3, np.arange(12), np.arange(12, 16))
    state = _state(tmp_path / "checkpoint.pt")
    assert state["state"]["epoch"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_wall_time_limit_and_early_stopping(tmp_path, nh3):
    result = Trainer(tiny_config(), quick(max_epochs=1000, wall_time_limit=0.5), tmp_path / "wall").fit(
        nh3, np.arange(12), np.arange(12, 16)
    )
    assert result.stop_reason == "wall_time" and result.epochs < 1000
    assert _state(result.checkpoint)["state"]["epoch"] == result.epochs
    # a learning rate too small to change float32 weights: no validation improves after epoch 1
    config = quick(max_epochs=50, learning_rate=1e-30, validation_interval=1, early_stopping_patience=3)
    result = Trainer(tiny_config(), config, tmp_path / "early").fit(nh3, np.arange(12), np.arange(12, 16))
    assert (result.stop_reason, result.best_epoch, result.epochs) == ("early_stopping", 1, 4)
    again = Trainer(tiny_config(), config, tmp_path / "early").fit(nh3, np.arange(12), np.arange(12, 16))
    assert (again.stop_reason, again.epochs) == ("early_stopping", 4)


def test_learning_curve_csv_and_best_model_metadata(tmp_path, nh3):
    result = Trainer(tiny_config(), quick(max_epochs=6, validation_interval=3), tmp_path).fit(
        nh3, np.arange(12), np.arange(12, 16)
    )
    with open(result.learning_curve, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["valid_loss"] != "" for r in rows] == [False, False, True, False, False, True]
    assert float(rows[0]["lr"]) == pytest.approx(1e-3 * 0.999)
    for name in ("energy", "forces", "dipole", "charge"):
        assert f"valid_mae_{name}" in rows[0]
    model = load_model(result.best_model)
    assert model.metadata["best_epoch"] == result.best_epoch
    assert model.metadata["valid_metrics"]["energy"]["mae"] == pytest.approx(
        result.valid_metrics["energy"]["mae"]
    )
    assert math.isfinite(result.best_valid_loss)


def test_ensemble_members_differ_and_committee_std(tmp_path, nh3):
    from aiida_mlpes.core.ensemble import committee_predict, train_ensemble

    results = train_ensemble(
        nh3, np.arange(12), np.arange(12, 16), tiny_config(), quick(max_epochs=2), tmp_path, 2
    )
    models = [load_model(r.best_model) for r in results]
    assert not torch.equal(next(models[0].parameters()), next(models[1].parameters()))
    committee = committee_predict(models, nh3)
    assert committee["energy_std"].shape == (16,) and (committee["energy_std"] > 0).all()
    assert committee["forces_std_max"].shape == (16,)
    same = committee_predict([models[0], models[0]], nh3)
    assert np.all(same["energy_std"] == 0) and np.all(same["forces_std_max"] == 0)


def test_parent_module_and_model_file_roundtrip(tmp_path, nh3):
    model = build_model(tiny_config())
    path = save_model(model, tmp_path / "m.pt")
    from_module = Trainer(config=quick(), workdir=tmp_path / "a", parent=model)
    from_file = Trainer(config=quick(), workdir=tmp_path / "b", parent=path)
    for a, b in zip(from_module.model.parameters(), from_file.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_painn_trains_and_its_loss_drops(tmp_path, nh3):
    config = quick(max_epochs=40, learning_rate=5e-3, validation_interval=40, checkpoint_interval=40)
    result = Trainer(tiny_config(architecture="painn"), config, tmp_path).fit(
        nh3, np.arange(8), np.arange(8, 12)
    )
    curve = read_curve(result.learning_curve)
    assert min(curve["train_loss"][-5:]) < 0.2 * curve["train_loss"][0]
    assert load_model(result.best_model).config.architecture == "painn"


def test_seeded_training_with_pinned_threads_is_bitwise_reproducible(tmp_path, nh3):
    """Same seed, same threads: identical weights bit for bit (the dense layout of a one-molecule batch)."""
    threads = min(2, torch.get_num_threads())
    config = quick(max_epochs=4, threads=threads, seed=7)
    train, valid = np.arange(12), np.arange(12, 16)
    runs = [Trainer(tiny_config(), config, tmp_path / name).fit(nh3, train, valid) for name in ("a", "b")]
    a, b = (_state(run.checkpoint)["model"] for run in runs)
    assert all(torch.equal(a[key], b[key]) for key in a)
    other = Trainer(tiny_config(), quick(max_epochs=4, threads=threads, seed=8), tmp_path / "c").fit(
        nh3, train, valid
    )
    c = _state(other.checkpoint)["model"]
    assert not all(torch.equal(a[key], c[key]) for key in a)
