"""Minimum energy path, minimum dynamic path and geometry optimisation on surfaces with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from ase.io import read

from aiida_mlpes.core.characterize.analytic import HarmonicTrap, MullerBrown, PairPotential
from aiida_mlpes.core.characterize.mdp import minimum_dynamic_path
from aiida_mlpes.core.characterize.mep import minimum_energy_path
from aiida_mlpes.core.characterize.optimize import optimize_minimum, optimize_ts

# Müller-Brown stationary points (x, y), classic literature values
MB_MINIMA = {"A": (-0.558224, 1.441726), "B": (0.623499, 0.028038), "C": (-0.050011, 0.466694)}
MB_SADDLES = {"AC": (-0.822002, 0.624313), "CB": (0.212487, 0.292988)}


def xyz(point, z=0.0):
    return np.array([[point[0], point[1], z]])


@pytest.fixture(scope="module")
def mb():
    return MullerBrown(scale=0.01)


@pytest.mark.parametrize("saddle, ends", [("AC", ("A", "C")), ("CB", ("B", "C"))])
def test_mep_from_mueller_brown_saddle_ends_in_its_minima(mb, saddle, ends, tmp_path):
    ts = optimize_ts(mb, [1], xyz(MB_SADDLES[saddle]) + np.array([[0.01, -0.01, 0.02]]))
    assert ts.converged
    np.testing.assert_allclose(ts.positions[0, :2], MB_SADDLES[saddle], atol=1e-4)
    path = minimum_energy_path(mb, [1], ts.positions, fmax=1e-4)
    assert path.converged == (True, True)
    found = {tuple(np.round(p[0, :2], 3)) for p in (path.positions[0], path.positions[-1])}
    expected = {tuple(np.round(MB_MINIMA[e], 3)) for e in ends}
    assert found == expected
    # downhill from the TS on both sides, the TS is the highest point
    e = path.energies
    assert np.argmax(e) == path.ts_index
    assert np.all(np.diff(e[: path.ts_index + 1]) > 0) and np.all(np.diff(e[path.ts_index :]) < 0)
    assert path.positions.shape == (len(e), 1, 3)
    assert np.all(np.diff(path.coordinate) > 0) and path.coordinate[path.ts_index] == 0
    # written trajectory and plot
    frames = read(path.write(tmp_path / "mep.extxyz"), index=":")
    assert len(frames) == len(path)
    np.testing.assert_allclose([f.get_potential_energy() for f in frames], e)
    assert path.plot(tmp_path / "mep.png").stat().st_size > 5000


def test_mep_on_raw_mueller_brown_from_rounded_saddle_coordinates():
    """The classic surface in its own units (energies ~100 'eV'), saddle given to three decimals: the TS is
    recognised (scale-free Newton-step test), refined, and the path still joins A and C through it."""
    raw = MullerBrown(scale=1.0, kz=0.0)
    start = xyz((-0.822, 0.624))
    assert np.linalg.norm(raw(start[None])[1]) > 0.1  # far from zero force in these units
    path = minimum_energy_path(raw, [1], start)
    assert path.converged == (True, True)
    np.testing.assert_allclose(path.positions[path.ts_index, 0, :2], MB_SADDLES["AC"], atol=1e-5)
    ends = {tuple(np.round(p[0, :2], 3)) for p in (path.positions[0], path.positions[-1])}
    assert ends == {tuple(np.round(MB_MINIMA[k], 3)) for k in ("A", "C")}
    np.testing.assert_allclose(path.energies[[0, -1]].min(), -146.699517, atol=1e-5)


def test_mep_mass_weighted_reaches_the_same_minima_for_a_molecule():
    """Proton transfer O-H...O <-> O...H-O on a pair surface: Morse O-H bonds and a stiff O-O spring hold
    the oxygens 3 Angstrom apart, so the symmetric structure is a saddle between two mirror-image minima."""
    terms = [
        (0, 1, "morse", (1.0, 2.0, 1.0)),
        (1, 2, "morse", (1.0, 2.0, 1.0)),
        (0, 2, "harmonic", (20.0, 3.0)),
    ]
    pot = PairPotential(terms)
    numbers, masses = [8, 1, 8], [16.0, 1.008, 16.0]
    ts = optimize_ts(pot, numbers, np.array([[-1.5, 0, 0], [0.05, 0.02, 0], [1.5, 0, 0]]), masses=masses)
    assert ts.converged and len(ts.modes.imaginary(10.0)) == 1
    for mass_weighted in (False, True):
        path = minimum_energy_path(pot, numbers, ts.positions, masses=masses, mass_weighted=mass_weighted)
        assert path.converged == (True, True)
        ends = [optimize_minimum(pot, numbers, p).positions for p in (path.positions[0], path.positions[-1])]
        for end, relaxed in zip((path.positions[0], path.positions[-1]), ends, strict=True):
            np.testing.assert_allclose(end, relaxed, atol=2e-3)
        # the two minima are mirror images: H near one or the other oxygen
        d_first = np.linalg.norm(path.positions[0][1] - path.positions[0][0])
        d_last = np.linalg.norm(path.positions[-1][1] - path.positions[-1][2])
        np.testing.assert_allclose(d_first, d_last, atol=2e-3)
        np.testing.assert_allclose(path.barriers[0], path.barriers[1], rtol=1e-3)


def test_mdp_conserves_energy_and_leaves_the_saddle(mb, tmp_path):
    ts = xyz(MB_SADDLES["AC"])
    path = minimum_dynamic_path(mb, [1], ts, timestep=0.2, nsteps=1500, check=True)
    total = path.extra["total_energy"]
    drop = path.energies[path.ts_index] - path.energies.min()
    assert drop > 0.5  # it slides down ~1 eV towards A
    assert np.ptp(total) < 5e-3 * drop
    # velocity Verlet: the energy error is second order in the time step, and does not drift
    half = minimum_dynamic_path(mb, [1], ts, timestep=0.1, nsteps=3000)
    ratio = np.ptp(total) / np.ptp(half.extra["total_energy"])
    assert 3.0 < ratio < 5.0
    assert abs(total[-1] - total[path.ts_index]) < 5e-3 * drop
    assert path.coordinate[0] == -300.0 and path.coordinate[-1] == 300.0
    np.testing.assert_allclose(path.energies + path.extra["kinetic_energy"], total)
    assert path.plot(tmp_path / "mdp.png", title="MDP").stat().st_size > 5000
    sparse = minimum_dynamic_path(mb, [1], ts, timestep=0.2, nsteps=100, record_every=30)
    assert len(sparse) == 2 * 5  # steps 0, 30, 60, 90, 100 each way


def test_mdp_with_initial_kinetic_energy_conserves_it():
    mb = MullerBrown(scale=0.01)
    path = minimum_dynamic_path(
        mb, [1], xyz(MB_SADDLES["CB"]), displacement=0.0, kinetic_energy=0.01, nsteps=400
    )
    total = path.extra["total_energy"]
    e_ts = mb(xyz(MB_SADDLES["CB"])[None])[0][0]
    np.testing.assert_allclose(path.extra["kinetic_energy"][path.ts_index], 0.01, rtol=1e-12)
    np.testing.assert_allclose(total, e_ts + 0.01, atol=2e-3)
    assert path.energies.min() < e_ts - 0.2


def test_optimize_minimum_with_ase(mb):
    result = optimize_minimum(mb, [1], xyz((-0.4, 1.3), z=0.2), fmax=1e-4)
    assert result.converged and result.max_force < 1e-4
    np.testing.assert_allclose(result.positions[0], [*MB_MINIMA["A"], 0.0], atol=1e-4)
    with pytest.raises(ValueError, match="unknown ASE optimizer"):
        optimize_minimum(mb, [1], xyz((0, 0)), optimizer="Nope")


def test_bad_transition_states(mb):
    with pytest.raises(
        ValueError, match="not a transition state: expected exactly one imaginary frequency, found 0"
    ):
        minimum_energy_path(mb, [1], xyz(MB_MINIMA["A"]))
    with pytest.raises(ValueError, match="not a stationary point"):
        minimum_energy_path(mb, [1], xyz(MB_SADDLES["AC"]) + np.array([[0.15, 0.0, 0.0]]))
    # a second-order saddle (maximum in x and y of an inverted trap) has two imaginary frequencies
    hill = HarmonicTrap(np.zeros((1, 3)), np.array([[-1.0, -2.0, 3.0]]))
    with pytest.raises(ValueError, match="found 2"):
        minimum_dynamic_path(hill, [1], np.zeros((1, 3)))
    with pytest.raises(ValueError, match="masses have 1 entries but there are 3 atoms"):
        minimum_energy_path(mb, [1, 1, 1], np.zeros((3, 3)), masses=[1.0])
    with pytest.raises(ValueError, match="timestep must be positive"):
        minimum_dynamic_path(mb, [1], xyz(MB_SADDLES["AC"]), timestep=0)
