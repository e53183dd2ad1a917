"""Metropolis Monte Carlo: the acceptance rule, the Boltzmann distribution, step adaptation, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from scipy import stats

from aiida_mlpes.core.sampling import metropolis_mc
from aiida_mlpes.core.units import KB
from tests.core.test_sampling_models import Einstein, LinearField


def test_acceptance_follows_the_metropolis_rule():
    """In a linear field E = F x every trial has dE = F dx with dx ~ U[-d, d]; Metropolis accepts with
    probability min(1, exp(-dE/kT)), so the acceptance ratio is 1/2 + (1 - exp(-a d)) / (2 a d), a = F/kT."""
    temperature, force, n = 300.0, 1.0, 20000
    kt = KB * temperature
    atoms = Atoms("Ar", positions=[[0.0, 0.0, 0.0]])
    for step in (0.5 * kt / force, kt / force, 3 * kt / force):
        result = metropolis_mc(
            atoms, LinearField(force), temperature=temperature, steps=n, max_step=step, seed=4
        )
        ad = force * step / kt
        expected = 0.5 + (1 - np.exp(-ad)) / (2 * ad)
        measured = result.systems[0]["acceptance"]
        assert abs(measured - expected) < 4 * np.sqrt(expected * (1 - expected) / n), (ad, measured, expected)
    # downhill moves are always accepted: on a flat surface everything is
    flat = metropolis_mc(atoms, LinearField(0.0), temperature=temperature, steps=500, seed=1)
    assert flat.systems[0]["acceptance"] == 1.0


def test_samples_follow_the_boltzmann_distribution():
    """One atom in a 3-D harmonic well: x, y, z ~ N(0, kT/k); <E> = 3/2 kT."""
    temperature, k = 400.0, 1.5
    kt = KB * temperature
    atoms = Atoms("Ar", positions=[[0.0, 0.0, 0.0]])
    result = metropolis_mc(
        atoms,
        Einstein(np.zeros((1, 3)), k=k),
        temperature=temperature,
        steps=40000,
        save_interval=40,
        warmup_steps=2000,
        seed=9,
    )
    x = result.samples.positions / np.sqrt(kt / k)
    assert len(x) == 1000
    for axis in range(3):
        assert stats.kstest(x[:, axis], "norm").pvalue > 1e-3
    counts, edges = np.histogram(x.ravel(), bins=np.linspace(-3, 3, 13))
    probabilities = np.diff(stats.norm.cdf(edges))
    chi2 = stats.chisquare(counts, probabilities / probabilities.sum() * counts.sum())
    assert chi2.pvalue > 1e-3
    energy = result.trajectory_energy
    blocks = np.array([b.mean() for b in np.array_split(energy, 20)])
    assert abs(energy.mean() - 1.5 * kt) < max(4 * blocks.std(ddof=1) / np.sqrt(20), 0.01 * kt)
    # the kept states carry their energies and forces
    assert np.allclose(result.samples.energy, 0.5 * k * (result.samples.positions**2).sum(axis=1))
    assert np.allclose(result.samples.forces, -k * result.samples.positions)


def test_step_adapts_in_warmup_only_and_chain_is_reproducible():
    atoms = Atoms("Ar", positions=[[0.0, 0.0, 0.0]])
    calc = Einstein(np.zeros((1, 3)), k=1.0)
    args = {"temperature": 300.0, "steps": 3000, "max_step": 0.01, "save_interval": 10, "seed": 5}
    fixed = metropolis_mc(atoms, calc, **args)
    assert fixed.systems[0]["max_step"] == 0.01 and fixed.systems[0]["acceptance"] > 0.9
    adapted = metropolis_mc(atoms, calc, warmup_steps=2000, target_acceptance=0.4, **args)
    assert adapted.systems[0]["max_step"] > 0.1
    assert abs(adapted.systems[0]["acceptance"] - 0.4) < 0.08
    assert len(adapted.trajectory_energy) == 3000  # warm-up not recorded
    again = metropolis_mc(atoms, calc, warmup_steps=2000, target_acceptance=0.4, **args)
    assert np.array_equal(adapted.samples.positions, again.samples.positions)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": -5.0}, "temperature must be > 0"),
        ({"temperature": 300, "max_step": -0.1}, "max_step must be > 0"),
        ({"temperature": 300, "target_acceptance": 1.5}, "target_acceptance"),
        ({"temperature": 300, "warmup_steps": -1}, "warmup_steps must be >= 0"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        metropolis_mc(Atoms("Ar"), Einstein(np.zeros((1, 3))), **kwargs)
