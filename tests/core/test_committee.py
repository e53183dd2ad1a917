"""Committee (one batched model of K members): equivalence with its members, training, resume, files, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aiida_mlpes.core.models import Committee, ModelConfig, build_model, collate, load_model, save_model
from aiida_mlpes.core.models.committee import committee_statistics, composition_signature, member_orders
from aiida_mlpes.core.models.io import read_model_file
from aiida_mlpes.core.training import Trainer, TrainingConfig
from tests.core.test_training import morse_molecules

WATER_METHANE = [[8, 1, 1], [6, 1, 1, 1, 1]]


def small_config(architecture: str = "physnet", dtype: str = "float32", **kwargs) -> ModelConfig:
    base = {"elements": [1, 6, 8], "n_features": 16, "n_rbf": 8, "n_blocks": 2, "cutoff": 5.0}
    base.update(kwargs)
    return ModelConfig(architecture=architecture, dtype=dtype, **base)


def distinct_members(config: ModelConfig, k: int = 3) -> list:
    """Members with different weights everywhere (zero-initialised output layers perturbed too)."""
    members = []
    for seed in range(k):
        torch.manual_seed(seed)
        model = build_model(config)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        model.set_reference(np.arange(len(config.elements)) - 3.0 * seed, 0.5 + seed)
        members.append(model)
    return members


def quick(**kwargs) -> TrainingConfig:
    base = {"max_epochs": 6, "batch_size": 4, "progress_bar": False, "device": "cpu", "threads": 1}
    base.update(kwargs)
    return TrainingConfig(**base)


@pytest.fixture
def mixed():
    """Water and methane geometries labelled with a Morse pair potential (two compositions, sizes 3 and 5)."""
    return morse_molecules(WATER_METHANE, 16, seed=3)


@pytest.mark.parametrize("architecture", ["physnet", "painn"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("strategy", ["grouped", "vmap"])
def test_committee_equals_its_members_evaluated_one_by_one(architecture, dtype, strategy, mixed):
    config = small_config(architecture, dtype)
    members = distinct_members(config)
    committee = Committee.from_members(members)
    committee.strategy = strategy
    batch = collate(mixed, np.arange(6), dtype=members[0].dtype)
    out = committee(batch)
    tol = {"float32": {"rtol": 1e-4, "atol": 2e-4}, "float64": {"rtol": 1e-10, "atol": 1e-10}}[dtype]
    for k, member in enumerate(members):
        ref = member(batch)
        for key in ("energy", "forces", "dipole", "atomic_charges"):
            np.testing.assert_allclose(out[key][k].double().numpy(), ref[key].double().numpy(), **tol)
    with torch.no_grad():
        energies = committee(batch, compute_forces=False)["energy"]
    np.testing.assert_allclose(energies.numpy(), out["energy"].numpy(), rtol=1e-12)
    # the members really differ, so the comparison above is not trivially met
    assert float(out["energy"].std(dim=0).min()) > 1e-3


def test_large_molecules_fall_back_to_the_member_loop(mixed):
    # all_pairs_max_atoms=3: methane (5 atoms) takes the geometry-dependent neighbour list
    members = distinct_members(small_config(dtype="float64", all_pairs_max_atoms=3), 2)
    committee = Committee.from_members(members)
    batch = collate(mixed, np.arange(4), dtype=torch.float64)
    out = committee(batch)
    for k, member in enumerate(members):
        ref = member(batch)
        for key in ("energy", "forces"):
            np.testing.assert_allclose(out[key][k].numpy(), ref[key].numpy(), rtol=1e-10, atol=1e-10)


def test_committee_gradients_stay_within_each_member(mixed):
    committee = Committee.from_members(distinct_members(small_config(dtype="float64")))
    batch = collate(mixed, np.arange(4), dtype=torch.float64)
    out = committee(batch, compute_forces=True, create_graph=True)
    (out["forces"][1].square().sum() + out["energy"][1].sum()).backward()
    for name, p in committee.stack.named_parameters():
        assert p.grad is not None, name
        assert float(p.grad[0].abs().max()) == 0.0 and float(p.grad[2].abs().max()) == 0.0, name
    assert any(float(p.grad[1].abs().max()) > 0 for p in committee.parameters())


def test_committee_of_one_is_rejected(tmp_path, mixed):
    config = small_config()
    with pytest.raises(ValueError, match="at least 2 members"):
        Committee.from_config(config, 1)
    with pytest.raises(ValueError, match="at least 2 members"):
        Committee.from_members([build_model(config)])
    with pytest.raises(ValueError, match="at least 2 members"):
        Trainer(config, quick(), tmp_path, committee_size=0)
    with pytest.raises(ValueError, match="different ModelConfig"):
        Committee.from_members([build_model(config), build_model(small_config(n_features=8))])


def test_save_load_roundtrip_and_file_content(tmp_path, mixed):
    members = distinct_members(small_config("painn"))
    committee = Committee.from_members(members)
    path = save_model(committee, tmp_path / "committee.pt", metadata={"note": "x"})
    content = read_model_file(path)
    assert content["committee_size"] == 3 and content["metadata"]["committee_size"] == 3
    assert all(v.shape[0] == 3 for v in content["state_dict"].values())
    loaded = load_model(path)
    assert isinstance(loaded, Committee) and loaded.size == 3 and loaded.metadata["note"] == "x"
    batch = collate(mixed, np.arange(5))
    a, b = committee(batch), loaded(batch)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # member k of the file is the original member k
    original = members[2].state_dict()
    assert all(torch.equal(v, original[k]) for k, v in loaded.member(2).state_dict().items())
    # single-model files are unchanged (format version 1, no committee_size)
    single = read_model_file(save_model(members[0], tmp_path / "single.pt"))
    assert single["format_version"] == 1 and "committee_size" not in single


def test_committee_statistics_zero_spread_for_identical_members(mixed):
    model = distinct_members(small_config())[0]
    committee = Committee.from_members([model, model])
    batch = collate(mixed, np.arange(5))
    stats = committee_statistics(committee(batch), batch["batch"].numpy(), 5)
    assert np.all(stats["energy_std"] == 0) and np.all(stats["forces_std_max"] == 0)
    np.testing.assert_allclose(stats["energy"], model(batch)["energy"].numpy(), rtol=1e-6)


def test_member_orders_keep_compositions_aligned(mixed):
    signature = composition_signature(mixed.n_atoms, mixed.atomic_numbers)
    assert len(np.unique(signature)) == 2
    rngs = [np.random.default_rng(k) for k in range(3)]
    orders = member_orders(np.random.default_rng(9).permutation(16), signature, rngs)
    for order in orders:
        assert sorted(order) == list(range(16))  # every conformation once per epoch
    assert np.all(signature[orders] == signature[orders[0]])  # same atoms at every slot
    assert not np.array_equal(orders[0], orders[1])  # own data order
    # one collate of the member blocks equals collating each member's batch and stacking them
    from aiida_mlpes.core.models.committee import stack_batches, unstack_members
    from aiida_mlpes.core.training.targets import DeviceBatches

    data = DeviceBatches(mixed, torch.device("cpu"), torch.float64)
    flat = unstack_members(data.batch(orders[:, 2:7].reshape(-1)), 3)
    stacked = stack_batches([data.batch(order[2:7]) for order in orders])
    assert set(flat) == set(stacked)
    for key, value in stacked.items():
        assert torch.equal(flat[key], value), key


def test_committee_training_lowers_each_members_loss_and_members_differ(tmp_path, mixed):
    from aiida_mlpes.core.training import WeightedLoss
    from aiida_mlpes.core.training.components import evaluate_loss

    config = small_config(dtype="float64")
    trainer = Trainer(
        config, quick(max_epochs=8, ema_decay=0.0, learning_rate=3e-3), tmp_path, committee_size=3
    )
    committee = trainer.model
    assert isinstance(committee, Committee)
    train, valid = np.arange(12), np.arange(12, 16)
    loss_fn = WeightedLoss({"energy": 1.0, "forces": 50.0})
    batches = [collate(mixed, train, dtype=torch.float64)]
    from aiida_mlpes.core.training.targets import fit_element_references

    refs = fit_element_references(mixed.select(train), config.elements)
    committee.set_reference(refs, 1.0)
    before = [evaluate_loss(committee.member(k), batches, loss_fn)[0] for k in range(3)]
    result = trainer.fit(mixed, train, valid)
    trained = load_model(result.best_model)
    assert isinstance(trained, Committee) and trained.size == 3
    after = [evaluate_loss(trained.member(k), batches, loss_fn)[0] for k in range(3)]
    assert all(a < 0.7 * b for a, b in zip(after, before, strict=True)), (before, after)
    energies = trained(collate(mixed, valid, dtype=torch.float64))["energy"]
    assert float(energies.std(dim=0).min()) > 0  # members differ
    # member 0 starts from the single model's initialisation with the same seed
    torch.manual_seed(0)
    single = build_model(config)
    assert torch.equal(Committee.from_config(config, 2, seed=0).member(0).embedding, single.embedding)


def test_committee_resume_matches_an_uninterrupted_run(tmp_path, mixed):
    config = small_config(dtype="float64")
    settings = quick(max_epochs=6, checkpoint_interval=2, checkpoint_min_seconds=0, validation_interval=2)
    train, valid = np.arange(12), np.arange(12, 16)
    full = Trainer(config, settings, tmp_path / "full", committee_size=2).fit(mixed, train, valid)
    Trainer(config, settings, tmp_path / "split", committee_size=2).fit(mixed, train, valid, max_epochs=4)
    torch.manual_seed(999)
    resumed = Trainer(config, settings, tmp_path / "split", committee_size=2).fit(mixed, train, valid)
    assert resumed.epochs == full.epochs == 6
    a, b = read_model_file(full.best_model)["state_dict"], read_model_file(resumed.best_model)["state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with pytest.raises(ValueError, match="committee of 2 members, not 3"):
        Trainer(config, settings, tmp_path / "split", committee_size=3).fit(mixed, train, valid)


def test_fine_tuning_a_committee_member_wise_and_single_parent_error(tmp_path, mixed):
    config = small_config()
    members = distinct_members(config, 2)
    parent = save_model(Committee.from_members(members), tmp_path / "parent.pt")
    trainer = Trainer(None, quick(max_epochs=2), tmp_path / "tune", parent=parent)
    assert isinstance(trainer.model, Committee) and trainer.model.size == 2
    for k in range(2):
        assert torch.equal(trainer.model.member(k).embedding, members[k].embedding)
    result = trainer.fit(mixed, np.arange(12), np.arange(12, 16))
    assert load_model(result.best_model).size == 2
    with pytest.raises(ValueError, match="does not match the parent committee"):
        Trainer(None, quick(), tmp_path / "x", parent=parent, committee_size=3)
    single = save_model(members[0], tmp_path / "single.pt")
    with pytest.raises(ValueError, match="identical members with zero spread"):
        Trainer(None, quick(), tmp_path / "y", parent=single, committee_size=4)
