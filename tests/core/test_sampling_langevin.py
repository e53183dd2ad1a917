"""LeanLangevin (ASE's Langevin step on plain arrays) follows ASE's own step for a seeded run."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms, FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

from aiida_mlpes.core.sampling.langevin import DRAW_BLOCK, LeanLangevin


def _trajectory(propagator, name: str, friction: float, steps: int, constraint=FixCom):
    atoms = molecule(name)
    atoms.calc = EMT()
    atoms.set_constraint(constraint() if constraint is FixCom else constraint)
    rng = np.random.default_rng(7)
    MaxwellBoltzmannDistribution(atoms, temperature_K=500, rng=rng)
    Stationary(atoms)
    dyn = propagator(atoms, units.fs, temperature_K=500, friction=friction / units.fs, fixcm=False, rng=rng)
    positions, momenta = [], []
    for _ in range(steps):
        dyn.step()
        positions.append(atoms.positions.copy())
        momenta.append(atoms.get_momenta())
    return np.array(positions), np.array(momenta), dyn


@pytest.mark.parametrize(("name", "friction"), [("CH3OH", 0.01), ("H2O", 0.5), ("HCN", 0.01)])
def test_lean_step_gives_the_trajectory_of_ase_step(name, friction):
    steps = 2 * DRAW_BLOCK + 20  # across blocks of random draws
    x_ase, p_ase, _ = _trajectory(Langevin, name, friction, steps)
    x_lean, p_lean, dyn = _trajectory(LeanLangevin, name, friction, steps)
    assert dyn.lean
    assert np.abs(x_lean - x_ase).max() < 1e-10
    assert np.abs(p_lean - p_ase).max() < 1e-9
    # the centre of mass stays put and the total momentum is zero, as with FixCom
    masses = molecule(name).get_masses()
    assert np.allclose(masses @ x_lean[-1], masses @ x_lean[0], atol=1e-10)
    assert np.allclose(p_lean[-1].sum(axis=0), 0.0, atol=1e-12)


def test_other_constraints_fall_back_to_ase_step():
    fixed = FixAtoms(indices=[0])
    x_ase, _, _ = _trajectory(Langevin, "H2O", 0.01, 30, constraint=fixed)
    x_lean, _, dyn = _trajectory(LeanLangevin, "H2O", 0.01, 30, constraint=FixAtoms(indices=[0]))
    assert not dyn.lean
    assert np.array_equal(x_lean, x_ase)
    assert np.array_equal(x_lean[:, 0], np.repeat(x_lean[:1, 0], 30, axis=0))


def test_new_temperature_applies_to_random_numbers_already_drawn():
    """Changing the temperature mid-block (ASE's set_temperature) must act at once, as in ASE."""
    runs = []
    for propagator in (Langevin, LeanLangevin):
        atoms = molecule("H2O")
        atoms.calc = EMT()
        atoms.set_constraint(FixCom())
        rng = np.random.default_rng(3)
        MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=rng)
        dyn = propagator(atoms, units.fs, temperature_K=300, friction=0.02 / units.fs, fixcm=False, rng=rng)
        for step in range(40):
            if step == 10:
                dyn.set_temperature(temperature_K=1000)
            dyn.step()
        runs.append(atoms.positions.copy())
    assert np.abs(runs[0] - runs[1]).max() < 1e-10
