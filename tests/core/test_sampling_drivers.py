"""The ML model as a sampling driver: batched evaluation through ``as_potential`` and the ASE path agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule

from aiida_mlpes.core.sampling import (
    MonitoredCalculator,
    langevin_md,
    make_driver,
    normal_mode_sampling,
    normal_mode_scan,
)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from aiida_mlpes.core.models import ModelConfig, build_model, save_model

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(elements=[1, 7], n_features=16, n_rbf=8, n_blocks=1, cutoff=4.0, dtype="float64")
    )
    model.set_reference([-13.6, -1480.0], 0.5)
    with torch.no_grad():  # a fresh model predicts a flat surface: give it some shape
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return save_model(model, tmp_path_factory.mktemp("model") / "model.pt")


def test_ml_driver_batches_and_matches_single_structure_evaluation(model_path):
    driver = make_driver("mlpes", model=str(model_path))
    atoms = molecule("NH3")
    monitor = MonitoredCalculator(driver)
    rng = np.random.default_rng(0)
    batch = atoms.positions + rng.normal(0, 0.05, (7, len(atoms), 3))
    batched = monitor.evaluate_many(atoms, batch)
    assert monitor.calls == 7 and len(monitor._potentials) == 1  # one batched potential call
    for pos, res in zip(batch, batched, strict=True):
        single = atoms.copy()
        single.positions = pos
        single.calc = make_driver("mlpes", model=str(model_path))
        assert np.isclose(single.get_potential_energy(), res["energy"], atol=1e-8)
        assert np.allclose(single.get_forces(), res["forces"], atol=1e-8)


def test_samplers_run_on_the_ml_driver(model_path):
    driver = make_driver("mlpes", model=str(model_path))
    atoms = molecule("NH3")
    scan = normal_mode_scan(
        atoms, driver, energy_step=0.05, energy_limit=0.3, frequency_range=(-1e5, None), nmax=2
    )
    assert len(scan) > 1 and np.all(np.abs(scan.samples.energy - scan.systems[0]["reference_energy"]) <= 0.3)
    md = langevin_md(molecule("NH3"), driver, temperature=300.0, steps=20, save_interval=10, seed=1)
    assert len(md) == 2 and np.all(np.isfinite(md.samples.energy))


def test_pyscf_driver_by_name():
    """H2 at HF/STO-3G: the harmonic frequency is 5481 cm^-1 (textbook value ~5480)."""
    import pyscf  # noqa: F401

    driver = make_driver("pyscf", method="HF", basis="sto-3g")
    result = normal_mode_sampling(
        molecule("H2"), driver, n_samples=3, temperature=1000, seed=0, optimize=True
    )
    assert abs(result.systems[0]["frequencies"][0] - 5481) < 15
    assert result.samples.dipole is not None and np.all(
        result.samples.energy > result.systems[0]["reference_energy"]
    )
