"""Langevin MD sampling: thermostat physics, bookkeeping, reproducibility, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from aiida_mlpes.core.sampling import high_friction_md, langevin_md
from aiida_mlpes.core.units import KB
from tests.core.test_sampling_models import Einstein


def _crystal(n=32, seed=0):
    positions = np.random.default_rng(seed).uniform(0, 10, (n, 3))
    atoms = Atoms(f"Ar{n}", positions=positions)
    return atoms, Einstein(positions, k=2.0)


def _block_error(series, blocks=20):
    means = np.array([b.mean() for b in np.array_split(series, blocks)])
    return means.std(ddof=1) / np.sqrt(blocks)


def test_kinetic_and_potential_energy_match_the_thermostat():
    """Einstein crystal at 300 K: <T_kin> = T (3N - 3 degrees of freedom, centre of mass fixed) and
    <E_pot> = (3N - 3) kT / 2 (equipartition), within statistical error."""
    atoms, calc = _crystal()
    temperature = 300.0
    result = langevin_md(
        atoms,
        calc,
        temperature=temperature,
        timestep=5.0,
        steps=4000,
        save_interval=20,
        friction=0.02,
        equilibration_steps=400,
        seed=11,
    )
    t_kin = result.trajectory["temperature"]
    assert len(t_kin) == 4000 and result.systems[0]["degrees_of_freedom"] == 93
    error = _block_error(t_kin)
    assert abs(t_kin.mean() - temperature) < max(4 * error, 0.005 * temperature)
    assert abs(t_kin.mean() - temperature) < 0.04 * temperature
    e_pot = result.trajectory_energy
    expected = 0.5 * 93 * KB * temperature
    assert abs(e_pot.mean() - expected) < max(4 * _block_error(e_pot), 0.005 * expected)
    # samples: every 20th production step, with the driver's energy and forces at those positions
    assert len(result) == 200
    assert np.allclose(result.sample_data["time_fs"], 100.0 * np.arange(1, 201))
    assert np.allclose(result.samples.energy, e_pot[19::20])
    sample = result.samples.to_atoms(7)
    assert np.allclose(sample.get_forces(), calc.get_forces(sample))


def test_high_friction_thermalises_at_once_and_samples_from_the_start():
    """No equilibration: the kinetic temperature is already at T in the first 100 fs."""
    atoms, calc = _crystal(seed=1)
    result = high_friction_md(
        atoms, calc, temperature=500.0, timestep=1.0, steps=2000, save_interval=5, seed=2
    )
    assert len(result) == 400
    t_kin = result.trajectory["temperature"]
    assert abs(t_kin.mean() - 500.0) < max(4 * _block_error(t_kin), 5.0)
    assert abs(t_kin[:100].mean() - 500.0) < 0.1 * 500.0
    # the structures spread out from the start: displacement variance reaches kT/k per coordinate
    dx = result.samples.positions.reshape(len(result), -1, 3) - atoms.positions
    assert 0.7 < np.var(dx[200:]) / (KB * 500.0 / 2.0) < 1.3


def test_reproducible_from_seed_and_several_systems():
    a, calc_a = _crystal(n=8, seed=3)
    args = {"temperature": 300.0, "steps": 50, "save_interval": 10}
    first = langevin_md(a, calc_a, seed=7, **args)
    again = langevin_md(a, calc_a, seed=7, **args)
    other = langevin_md(a, calc_a, seed=8, **args)
    assert first.info["seed"] == 7
    assert np.array_equal(first.samples.positions, again.samples.positions)
    assert not np.allclose(first.samples.positions, other.samples.positions)
    # two systems: system 0 keeps its own random stream whatever follows it
    both = langevin_md([a, a.copy()], calc_a, seed=7, **args)
    assert len(both) == 10 and list(both.sample_system) == [0] * 5 + [1] * 5
    assert np.array_equal(both.samples.select(range(5)).positions, first.samples.positions)
    assert not np.allclose(both.samples.select(range(5, 10)).positions, first.samples.positions)
    unseeded = langevin_md(a, calc_a, **args)
    replay = langevin_md(a, calc_a, seed=unseeded.info["seed"], **args)
    assert np.array_equal(unseeded.samples.positions, replay.samples.positions)


def test_tblite_nh3_is_reproducible_and_records_driver_time():
    """With a real SCF driver shared between runs: the same seed gives the same trajectory (the driver is
    restarted, no SCF guess carries over) and the energies are the driver's own."""
    from aiida_mlpes.core.sampling import make_driver

    driver = make_driver("tblite")
    atoms = molecule("NH3")
    first = langevin_md(atoms, driver, temperature=500.0, steps=40, save_interval=10, seed=1)
    langevin_md(molecule("H2O"), driver, temperature=500.0, steps=5, save_interval=5, seed=3)
    again = langevin_md(atoms, driver, temperature=500.0, steps=40, save_interval=10, seed=1)
    assert np.array_equal(first.samples.positions, again.samples.positions)
    check = make_driver("tblite")
    sample = first.samples.to_atoms(3)
    assert np.isclose(check.get_potential_energy(sample), first.samples.energy[3], atol=1e-8)
    assert first.samples.dipole is not None and first.samples.atomic_charges is not None
    assert 0 < first.info["driver_time_s"] < first.info["wall_time_s"]
    assert first.info["driver_calls"] == 41


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": -1.0}, "temperature must be >= 0"),
        ({"temperature": 300, "timestep": -1.0}, "timestep must be > 0"),
        ({"temperature": 300, "steps": 0}, "steps must be >= 1"),
        ({"temperature": 300, "steps": 10, "save_interval": 20}, "save_interval"),
        ({"temperature": 300, "friction": 2.0}, "friction \\* timestep"),
        ({"temperature": "hot"}, "temperature must be a number"),
    ],
)
def test_bad_settings_are_refused_before_any_driver_call(kwargs, match):
    atoms, calc = _crystal(n=4)
    calc.calculate = None  # would fail if called
    with pytest.raises(ValueError, match=match):
        langevin_md(atoms, calc, **kwargs)
