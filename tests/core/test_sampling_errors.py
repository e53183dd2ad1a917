"""Failing drivers keep the samples collected so far; drivers by name; the monitor; the result type."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT

from aiida_mlpes.core.sampling import (
    DriverError,
    MonitoredCalculator,
    SamplingError,
    high_friction_md,
    langevin_md,
    make_driver,
    metadynamics,
    metropolis_mc,
    normal_mode_sampling,
    normal_mode_scan,
)
from tests.core.test_sampling_models import Einstein, Failing, harmonic_molecule


def _nh3_einstein():
    atoms = molecule("NH3")
    return atoms, Einstein(atoms.positions, k=5.0)


@pytest.mark.parametrize(
    ("sampler", "kwargs", "fail_at", "kept", "where"),
    [
        # call 1: forces at the start; step s computes call s + 1
        (langevin_md, {"temperature": 300, "steps": 100, "save_interval": 10}, 55, 5, "step 54"),
        (high_friction_md, {"temperature": 300, "steps": 100, "save_interval": 10}, 55, 5, "step 54"),
        (
            metadynamics,
            {"temperature": 300, "steps": 100, "save_interval": 10, "collective_variables": [[0, 1]]},
            55,
            5,
            "step 54",
        ),
        # call 1: the starting state; trial t computes call t + 1
        (metropolis_mc, {"temperature": 300, "steps": 200, "save_interval": 10}, 105, 10, "trial 104"),
    ],
)
def test_dynamics_samplers_keep_samples_when_the_driver_fails(sampler, kwargs, fail_at, kept, where):
    atoms, inner = _nh3_einstein()
    with pytest.raises(
        SamplingError, match=f"on system 0 at {where}: .*SCF did not converge.*{kept} samples kept"
    ) as info:
        sampler(atoms, Failing(inner, fail_at), seed=1, **kwargs)
    result = info.value.result
    assert result.failed and "SCF did not converge" in result.message
    assert len(result) == kept
    assert np.all(np.isfinite(result.samples.energy))
    assert isinstance(info.value.__cause__, DriverError)


def test_normal_mode_samplers_keep_samples_when_the_driver_fails():
    atoms, inner = harmonic_molecule()
    # 1 reference + 24 Hessian evaluations, then samples
    with pytest.raises(SamplingError, match=r"at sample 8: .*7 samples kept") as info:
        normal_mode_sampling(atoms, Failing(inner, 33), n_samples=20, temperature=300, seed=1)
    assert len(info.value.result) == 7 and info.value.result.failed
    with pytest.raises(SamplingError, match="non-finite energy") as info:
        normal_mode_sampling(atoms, Failing(inner, 30, nan=True), n_samples=20, temperature=300, seed=1)
    assert len(info.value.result) == 4
    with pytest.raises(SamplingError, match=r"during the harmonic analysis: .*0 samples kept") as info:
        normal_mode_sampling(atoms, Failing(inner, 10), n_samples=20, temperature=300, seed=1)
    assert len(info.value.result) == 0
    full = normal_mode_scan(atoms, inner, energy_step=0.1, energy_limit=0.45)
    with pytest.raises(SamplingError, match="scan point") as info:
        normal_mode_scan(atoms, Failing(inner, 40), energy_step=0.1, energy_limit=0.45)
    partial = info.value.result
    assert 1 < len(partial) < len(full)
    assert np.array_equal(partial.samples.positions, full.samples.select(range(len(partial))).positions)


def test_drivers_by_name_and_unknown_names():
    atoms = molecule("NH3")
    tblite = make_driver("tblite", method="GFN1-xTB")
    assert tblite.parameters["method"] == "GFN1-xTB" and tblite.parameters["verbosity"] == 0
    atoms.calc = tblite
    assert -160 < atoms.get_potential_energy() < -100
    with pytest.raises(ValueError, match=r"unknown driver 'gaussian9'; known drivers: .*tblite"):
        make_driver("gaussian9")
    with pytest.raises(ValueError, match="needs parameter 'model'"):
        make_driver("mlpes")
    with pytest.raises(ValueError, match="must be an ASE calculator"):
        MonitoredCalculator(object())


def test_one_driver_for_several_different_systems():
    """The monitor tells the driver what changed: switching molecules rebuilds it; energies stay exact."""
    systems = [molecule("NH3"), molecule("H2O"), molecule("CH4")]
    result = metropolis_mc(systems, EMT(), temperature=500, steps=60, save_interval=20, seed=2)
    assert list(result.sample_system) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    fresh = EMT()
    for i in range(len(result)):
        sample = result.samples.to_atoms(i)
        assert np.isclose(fresh.get_potential_energy(sample), result.samples.energy[i], atol=1e-12)
        assert np.allclose(fresh.get_forces(sample), result.samples.forces[result.samples.atom_slice(i)])


def test_summary_is_json_and_bad_systems_are_refused():
    atoms, calc = _nh3_einstein()
    result = langevin_md(atoms, calc, temperature=300, steps=20, save_interval=10, seed=0)
    summary = json.loads(json.dumps(result.summary()))
    assert summary["n_samples"] == 2 and summary["n_trajectory"] == 20 and summary["info"]["seed"] == 0
    with pytest.raises(ValueError, match="no structures"):
        langevin_md([], calc, temperature=300)
    with pytest.raises(ValueError, match=r"systems\[1\] is a str"):
        langevin_md([atoms, "NH3"], calc, temperature=300)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        langevin_md(atoms, calc, temperature=300, seed=-3)


def test_progress_is_logged_at_info_level(caplog, monkeypatch):
    from aiida_mlpes.core.sampling import _common

    monkeypatch.setattr(_common, "PROGRESS_INTERVAL", 0.0)
    atoms, calc = _nh3_einstein()
    with caplog.at_level("INFO", logger="aiida_mlpes.sampling"):
        langevin_md(atoms, calc, temperature=300, steps=20, save_interval=10, seed=0)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("md system 0: 10/20 steps (") and "steps/s" in m for m in messages)
    assert messages[-1].startswith("md system 0: 20/20 steps")


def test_monitor_is_right_with_a_driver_that_keeps_a_reference_to_the_atoms():
    """Some calculators store the Atoms they were given instead of a copy; moving the atoms in place must
    still trigger a new calculation."""
    from ase.calculators.calculator import Calculator

    class NoCopy(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=()):
            self.atoms = atoms  # no copy
            self.results = {"energy": float(atoms.positions.sum()), "forces": -np.ones((len(atoms), 3))}

    atoms, _ = _nh3_einstein()
    result = metropolis_mc(atoms, NoCopy(), temperature=300, steps=50, save_interval=1, seed=0)
    assert np.allclose(result.samples.energy, result.samples.positions.reshape(50, -1).sum(axis=1))
