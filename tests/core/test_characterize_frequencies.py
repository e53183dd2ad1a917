"""Harmonic frequencies and normal modes on potentials with known Hessians."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_mlpes.core.characterize.analytic import HarmonicTrap, MullerBrown, PairPotential
from aiida_mlpes.core.characterize.frequencies import (
    EIGENVALUE_TO_CM,
    finite_difference_hessian,
    harmonic_frequencies,
    modes_from_hessian,
    normal_modes,
)
from aiida_mlpes.core.units import INV_CM


def triangle(k: float = 10.0, r0: float = 1.0) -> tuple[PairPotential, np.ndarray]:
    positions = np.array([[0.0, 0.0, 0.0], [r0, 0.0, 0.0], [0.5 * r0, np.sqrt(3) / 2 * r0, 0.0]])
    pot = PairPotential(
        [(0, 1, "harmonic", (k, r0)), (1, 2, "harmonic", (k, r0)), (0, 2, "harmonic", (k, r0))]
    )
    return pot, positions


def chain(k: float = 40.0) -> tuple[PairPotential, np.ndarray]:
    """A CO2-like linear triatomic O=C=O held by two Morse bonds (curvature k at r0 = 1.16 A)."""
    depth, r0 = 5.0, 1.16
    a = np.sqrt(k / (2 * depth))
    pot = PairPotential([(0, 1, "morse", (depth, a, r0)), (1, 2, "morse", (depth, a, r0))])
    return pot, np.array([[-r0, 0.0, 0.0], [0.0, 0.0, 0.0], [r0, 0.0, 0.0]])


@pytest.mark.parametrize("method, tol", [("autograd", 1e-6), ("finite_difference", 0.05)])
def test_equilateral_triangle_is_exact(method, tol):
    k, m = 10.0, 2.0
    pot, positions = triangle(k)
    freqs = harmonic_frequencies(pot, [1, 1, 1], positions, masses=[m] * 3, method=method)
    # breathing sqrt(3k/m), degenerate pair sqrt(3k/2m)
    expected = np.array([np.sqrt(1.5 * k / m)] * 2 + [np.sqrt(3 * k / m)]) * EIGENVALUE_TO_CM
    assert freqs.shape == (3,)
    np.testing.assert_allclose(freqs, expected, atol=tol)


@pytest.mark.parametrize("method, tol", [("autograd", 1e-6), ("finite_difference", 0.1)])
def test_linear_triatomic_has_3n_minus_5_modes(method, tol):
    k, mo, mc = 40.0, 15.995, 12.0
    pot, positions = chain(k)
    modes = normal_modes(pot, [8, 6, 8], positions, masses=[mo, mc, mo], method=method)
    assert modes.linear and modes.projected
    assert modes.frequencies.shape == (4,)
    # two bends with zero force constant (bond terms only), symmetric and antisymmetric stretch
    np.testing.assert_allclose(modes.frequencies[:2], 0.0, atol=6.0)
    symmetric = np.sqrt(k / mo) * EIGENVALUE_TO_CM
    antisymmetric = np.sqrt(k / mo * (1 + 2 * mo / mc)) * EIGENVALUE_TO_CM
    np.testing.assert_allclose(modes.frequencies[2:], [symmetric, antisymmetric], atol=tol)
    # the symmetric stretch moves only the oxygens, with reduced mass m_O... (unit vector: 2 atoms)
    sym = modes.modes[2]
    assert abs(sym[1]).max() < 1e-6
    np.testing.assert_allclose(modes.reduced_masses[2], mo, rtol=1e-6)


def test_diatomic():
    k, m1, m2 = 30.0, 1.008, 35.0
    pot = PairPotential([(0, 1, "harmonic", (k, 1.3))])
    freqs = harmonic_frequencies(pot, [1, 17], [[0, 0, 0], [0.3, 0.4, 1.2]], masses=[m1, m2])
    mu = m1 * m2 / (m1 + m2)
    np.testing.assert_allclose(freqs, [np.sqrt(k / mu) * EIGENVALUE_TO_CM], rtol=1e-5)


def test_nonlinear_molecule_matches_unprojected_spectrum():
    """For an invariant potential at a minimum the full mass-weighted Hessian has six zero eigenvalues and
    the rest are the vibrations: an independent check of the projection."""
    rng = np.random.default_rng(3)
    positions = rng.normal(size=(5, 3)) * 1.2
    terms = [
        (i, j, "morse", (4.0, 1.5, float(np.linalg.norm(positions[i] - positions[j]))))
        for i in range(5)
        for j in range(i)
    ]
    pot = PairPotential(terms)
    masses = np.array([12.0, 1.008, 1.008, 16.0, 14.0])
    hessian = pot.hessian(positions)
    w = np.repeat(masses**-0.5, 3)
    full = np.linalg.eigvalsh(hessian * w[:, None] * w[None, :])
    expected = np.sqrt(np.sort(full)[6:]) * EIGENVALUE_TO_CM
    np.testing.assert_allclose(np.sort(full)[:6], 0.0, atol=1e-8)
    freqs = harmonic_frequencies(pot, [6, 1, 1, 8, 7], positions, masses=masses, method="autograd")
    np.testing.assert_allclose(freqs, expected, rtol=1e-8)
    fd = harmonic_frequencies(pot, [6, 1, 1, 8, 7], positions, masses=masses)
    np.testing.assert_allclose(fd, expected, atol=0.5)


def test_invariance_under_rotation_and_translation():
    pot, positions = triangle()
    rot = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    moved = positions @ rot.T + [3.0, -2.0, 1.0]
    a = harmonic_frequencies(pot, [1, 1, 1], positions)
    b = harmonic_frequencies(pot, [1, 1, 1], moved)
    np.testing.assert_allclose(a, b, atol=0.01)  # finite-difference error depends on orientation


def test_saddle_gives_one_negative_frequency_and_external_potential_keeps_all_modes():
    mb = MullerBrown()
    ts = np.array([[-0.822, 0.624, 0.0]])
    modes = normal_modes(mb, [1], ts, project="auto", method="autograd")
    assert not modes.projected and modes.frequencies.shape == (3,)
    assert modes.frequencies[0] < -1000 and (modes.frequencies[1:] > 0).all()
    assert list(modes.imaginary()) == [0]
    with pytest.raises(ValueError, match="single atom"):
        harmonic_frequencies(mb, [1], ts)


def test_harmonic_zpe_of_a_trap():
    k, m = np.array([10.0, 20.0]), np.array([1.008, 16.0])
    trap = HarmonicTrap(np.zeros((2, 3)), k)
    modes = normal_modes(trap, [1, 8], np.zeros((2, 3)), masses=m, project=False)
    np.testing.assert_allclose(modes.zpe, trap.ground_state(m), rtol=1e-6)
    assert modes.zpe / INV_CM > 0


def test_finite_difference_uses_one_batched_call():
    pot, positions = triangle()
    calls = []

    def counting(batch):
        calls.append(len(batch))
        return pot(batch)

    hessian = finite_difference_hessian(counting, positions)
    assert calls == [18]
    np.testing.assert_allclose(hessian, pot.hessian(positions), atol=1e-3)  # O(step^2) error
    calls.clear()
    finite_difference_hessian(counting, positions, batch_size=5)
    assert calls == [5, 5, 5, 3]


def test_bad_input():
    pot, positions = triangle()
    with pytest.raises(ValueError, match="masses have 2 entries but there are 3 atoms"):
        harmonic_frequencies(pot, [1, 1, 1], positions, masses=[1.0, 1.0])
    with pytest.raises(ValueError, match="non-positive mass"):
        harmonic_frequencies(pot, [1, 1, 1], positions, masses=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="expected \\(3, 3\\)"):
        harmonic_frequencies(pot, [1, 1, 1], positions[:2])
    with pytest.raises(ValueError, match="invalid atomic number"):
        harmonic_frequencies(pot, [1, 0, 1], positions)
    with pytest.raises(ValueError, match="hessian\\(positions\\) method"):
        harmonic_frequencies(lambda x: pot(x), [1, 1, 1], positions, method="autograd")
    with pytest.raises(ValueError, match="unknown Hessian method"):
        harmonic_frequencies(pot, [1, 1, 1], positions, method="magic")
    with pytest.raises(ValueError, match="hessian has shape"):
        modes_from_hessian(np.zeros((6, 6)), positions, np.ones(3))
