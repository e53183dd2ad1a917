"""Collective variables and metadynamics: analytic gradients, the bias, escaping a well, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from aiida_mlpes.core.sampling import langevin_md, metadynamics, parse_cv
from aiida_mlpes.core.sampling.metadynamics import MetadynamicsBias, MetadynamicsCalculator, parse_walls
from tests.core.test_sampling_models import DoubleWellBond, Einstein, _numerical_forces


def _ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.positions += np.random.default_rng(0).normal(0, 0.1, atoms.positions.shape)
    return atoms


@pytest.mark.parametrize(
    ("spec", "reference"),
    [
        ([0, 1], lambda a: a.get_distance(0, 1)),
        ([1, 0, 2], lambda a: a.get_angle(1, 0, 2)),
        ([3, 0, 1, 2], lambda a: a.get_dihedral(3, 0, 1, 2)),
        ([4, 0, 1, 8], lambda a: a.get_dihedral(4, 0, 1, 8)),
        (["reactive", 0, 1, 1, 2], lambda a: a.get_distance(0, 1) - a.get_distance(1, 2)),
        ({"kind": "reactive", "atoms": [3, 0, 2, 1]}, lambda a: a.get_distance(3, 0) - a.get_distance(2, 1)),
    ],
)
def test_cv_values_match_ase_and_gradients_match_finite_differences(spec, reference):
    atoms = _ethanol()
    cv = parse_cv(spec)
    value, gradient = cv.value_and_gradient(atoms.positions)
    ref = reference(atoms)
    assert np.isclose((value - ref + 180) % 360 - 180 if cv.periodic else value - ref, 0.0, atol=1e-9)
    h, numeric = 1e-6, np.zeros_like(atoms.positions)
    for i in range(len(atoms)):
        for k in range(3):
            plus, minus = atoms.positions.copy(), atoms.positions.copy()
            plus[i, k] += h
            minus[i, k] -= h
            numeric[i, k] = (cv.value(plus) - cv.value(minus)) / (2 * h)
    assert np.allclose(gradient, numeric, atol=1e-6 * max(1.0, np.abs(numeric).max()))


def test_bias_is_the_sum_of_deposited_gaussians_and_forces_are_its_gradient():
    atoms = _ethanol()
    cvs = [parse_cv(s) for s in ([0, 1], [1, 0, 2], [3, 0, 1, 2], ["reactive", 0, 1, 1, 2])]
    widths = [0.1, 10.0, 20.0, 0.1]
    walls = parse_walls([{"cv": 0, "upper": 1.2, "force_constant": 5.0}, {"cv": [0, 2], "lower": 3.0}], cvs)
    bias = MetadynamicsBias(cvs, height=0.05, widths=widths, walls=walls)
    rng = np.random.default_rng(2)
    for _ in range(5):
        bias.deposit(atoms.positions + rng.normal(0, 0.05, atoms.positions.shape))
    calc = MetadynamicsCalculator(Einstein(atoms.positions + 0.02, k=1.0), bias)
    probe = atoms.copy()
    probe.positions += rng.normal(0, 0.03, probe.positions.shape)
    s = np.array([cv.value(probe.positions) for cv in cvs])
    diff = s - bias.centers
    diff[:, 2] = (diff[:, 2] + 180) % 360 - 180
    gaussians = 0.05 * np.exp(-0.5 * ((diff / widths) ** 2).sum(axis=1)).sum()
    d01, d02 = probe.get_distance(0, 1), probe.get_distance(0, 2)
    wall = 0.5 * 5.0 * max(d01 - 1.2, 0) ** 2 + 0.5 * 10.0 * max(3.0 - d02, 0) ** 2
    assert wall > 0
    energy = calc.get_potential_energy(probe)
    assert np.isclose(calc.results["bias_energy"], gaussians + wall, rtol=1e-12)
    assert np.isclose(energy, calc.driver_results["energy"] + gaussians + wall)
    assert np.allclose(calc.get_forces(probe), _numerical_forces(calc, probe), atol=1e-6)


@pytest.mark.parametrize(
    "specs",
    [
        [[0, 1], [0, 2], [1, 2]],  # plain bonds: the values are the distances
        [[0, 1], ["reactive", 0, 1, 1, 2], [2, 0]],  # a shared pair and a reversed one
    ],
)
def test_distance_cv_bias_forces_are_its_gradient(specs):
    """Distance CVs take the CV set's pullback (no dense Jacobian); walls on a CV the bias does not use."""
    atoms = _ethanol()
    cvs = [parse_cv(s) for s in specs]
    walls = parse_walls([{"cv": 0, "upper": 1.0}, {"cv": [0, 3], "lower": 2.5, "force_constant": 3.0}], cvs)
    bias = MetadynamicsBias(cvs, height=0.1, widths=[0.1, 0.2, 0.15], walls=walls)
    rng = np.random.default_rng(4)
    for _ in range(7):
        bias.deposit(atoms.positions + rng.normal(0, 0.04, atoms.positions.shape))
    calc = MetadynamicsCalculator(Einstein(atoms.positions, k=0.5), bias)
    probe = atoms.copy()
    probe.positions += rng.normal(0, 0.03, probe.positions.shape)
    s = np.array([cv.value(probe.positions) for cv in cvs])
    gaussians = 0.1 * np.exp(-0.5 * (((s - bias.centers) / [0.1, 0.2, 0.15]) ** 2).sum(axis=1)).sum()
    energy, gradient = bias.gaussians(s)
    assert np.isclose(energy, gaussians, rtol=1e-12)
    step = 1e-6 * np.eye(3)
    numeric = [(bias.gaussians(s + h)[0] - bias.gaussians(s - h)[0]) / 2e-6 for h in step]
    assert np.allclose(gradient, numeric, atol=1e-6)
    calc.get_potential_energy(probe)
    assert calc.results["bias_energy"] > gaussians  # a wall is active
    assert np.allclose(calc.get_forces(probe), _numerical_forces(calc, probe), atol=1e-6)


def _bond_lengths(result):
    pos = result.samples.positions.reshape(len(result), 2, 3)
    return np.linalg.norm(pos[:, 1] - pos[:, 0], axis=1)


def test_metadynamics_escapes_a_well_plain_md_does_not_leave():
    """Double well in a bond (wells at 1.0 and 2.0 Angstrom, barrier 0.5 eV ~ 19 kT at 300 K)."""
    atoms = Atoms("C2", positions=[[0, 0, 0], [1.0, 0, 0]])
    run = {
        "temperature": 300.0,
        "timestep": 1.0,
        "steps": 2000,
        "save_interval": 1,
        "friction": 0.02,
        "seed": 6,
    }
    plain = langevin_md(atoms, DoubleWellBond(), **run)
    assert _bond_lengths(plain).max() < 1.3
    meta = metadynamics(
        atoms,
        DoubleWellBond(),
        collective_variables=[[0, 1]],
        height=0.05,
        widths=0.05,
        deposition_interval=10,
        **run,
    )
    d = _bond_lengths(meta)
    crossed = np.flatnonzero(d > 1.6)
    assert len(crossed) > 0, d.max()
    assert np.allclose(meta.sample_data["cv_values"][:, 0], d)
    # the samples carry the unbiased driver energy; the bias is the sum of the Gaussians deposited so far
    assert np.allclose(
        meta.samples.energy,
        [DoubleWellBond().energy_forces(p.reshape(2, 3))[0] for p in meta.samples.positions.reshape(-1, 6)],
    )
    centers = meta.systems[0]["gaussian_centers"][:, 0]
    assert len(centers) == 200
    steps = np.arange(1, 2001)
    deposited = (steps - 1) // 10
    expected = [
        0.05 * np.exp(-0.5 * ((d[i] - centers[: deposited[i]]) / 0.05) ** 2).sum() for i in range(2000)
    ]
    assert np.allclose(meta.trajectory["bias_energy"], expected, atol=1e-12)
    assert np.allclose(centers, d[9::10])


def test_walls_confine_and_reproducibility():
    atoms = Atoms("C2", positions=[[0, 0, 0], [1.0, 0, 0]])
    args = {
        "collective_variables": [[0, 1]],
        "temperature": 300.0,
        "steps": 1500,
        "save_interval": 1,
        "height": 0.05,
        "widths": 0.05,
        "walls": [{"cv": 0, "upper": 1.3, "force_constant": 50.0}],
        "seed": 3,
    }
    walled = metadynamics(atoms, DoubleWellBond(), **args)
    assert _bond_lengths(walled).max() < 1.5
    again = metadynamics(atoms, DoubleWellBond(), **args)
    assert np.array_equal(walled.samples.positions, again.samples.positions)


@pytest.mark.parametrize(
    ("cvs", "extra", "match"),
    [
        (
            [[0, 5]],
            {},
            r"collective variable 0 \(bond \[0, 5\]\) names atom 5, but system 0 has only 4 atoms",
        ),
        ([[0, 1], [1, 2, 9]], {}, r"collective variable 1 \(angle \[1, 2, 9\]\) names atom 9"),
        ([[0, 0]], {}, "names the same atom twice"),
        ([["torsion", 0, 1, 2, 3]], {}, "unknown collective variable kind 'torsion'"),
        ([["reactive", 0, 1, 2]], {}, "a reactive CV needs 4 atoms"),
        ([[0, 1, 2, 3, 0]], {}, "2, 3 or 4 atoms expected"),
        ([], {}, "non-empty list"),
        ([[0, 1]], {"widths": [0.1, 0.2]}, "widths has 2 entries for 1 collective variables"),
        ([[0, 1]], {"height": -0.1}, "height must be > 0"),
        ([[0, 1]], {"walls": [{"cv": 3, "upper": 2.0}]}, "cv index 3 out of range"),
        ([[0, 1]], {"walls": [{"cv": [0, 7], "upper": 2.0}]}, "names atom 7"),
        ([[0, 1]], {"walls": [{"cv": 0}]}, "lower and/or an upper bound"),
        ([[0, 1]], {"temperature": -300.0}, "temperature must be >= 0"),
    ],
)
def test_bad_input_is_refused_before_any_step(cvs, extra, match):
    atoms = molecule("NH3")
    calc = Einstein(atoms.positions)
    calc.calculate = None  # would fail if called
    kwargs = {"temperature": 300.0, "steps": 10, **extra}
    with pytest.raises(ValueError, match=match):
        metadynamics(atoms, calc, collective_variables=cvs, **kwargs)
