"""Diffusion Monte Carlo: exact ground states, reproducibility, batching, hole detection, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_mlpes.core.characterize.analytic import (
    HarmonicTrap,
    MullerBrown,
    PairPotential,
    morse_ground_state,
)
from aiida_mlpes.core.characterize.dmc import DEFAULT_HOLE_THRESHOLD, blocking_error, run_dmc

H2_R0 = 0.74


def assert_exact(result, exact):
    """Within three standard errors and within 1 %."""
    deviation = abs(result.zpe - exact)
    assert deviation < 3 * result.zpe_error, (result.zpe, result.zpe_error, exact)
    assert deviation < 0.01 * exact, (result.zpe, exact)
    assert result.zpe_error < 0.005 * exact


@pytest.mark.parametrize(
    "mass, k, timestep",
    [(1.008, 30.0, 5.0), (15.995, 50.0, 10.0), (4.0, 3.0, 10.0)],
)
def test_isotropic_harmonic_oscillator(mass, k, timestep):
    trap = HarmonicTrap(np.zeros((1, 3)), k)
    result = run_dmc(
        trap,
        [1],
        np.zeros((1, 3)),
        masses=[mass],
        nwalkers=1000,
        nsteps=3000,
        eqsteps=500,
        timestep=timestep,
        seed=11,
    )
    exact = trap.ground_state([mass])
    assert_exact(result, exact)
    np.testing.assert_allclose(result.harmonic_zpe, exact, rtol=1e-6)
    assert result.n_holes == 0 and result.holes.shape == (0, 1, 3)


def test_anisotropic_oscillators_of_several_masses():
    masses = np.array([1.008, 12.0, 15.995])
    k = np.array([[10.0, 20.0, 30.0], [50.0, 60.0, 70.0], [5.0, 100.0, 20.0]])
    centers = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    trap = HarmonicTrap(centers, k)
    result = run_dmc(
        trap,
        [1, 6, 8],
        centers,
        masses=masses,
        nwalkers=1000,
        nsteps=3000,
        eqsteps=500,
        timestep=10.0,
        seed=5,
    )
    assert_exact(result, trap.ground_state(masses))


def test_morse_diatomic_resolves_anharmonicity():
    """H2-like Morse bond: E0 = hw/2 - (hw)^2/16D, 1.4 % below the harmonic ZPE. (The free centre of mass
    and the rotation contribute nothing to a J=0 ground state.)"""
    depth, a = 4.7, 1.9
    pot = PairPotential([(0, 1, "morse", (depth, a, H2_R0))])
    result = run_dmc(
        pot, [1, 1], [[0, 0, 0], [H2_R0, 0, 0]], nwalkers=2000, nsteps=4000, eqsteps=500, timestep=5.0, seed=2
    )
    exact = morse_ground_state(depth, a, 1.008 / 2)
    assert_exact(result, exact)
    assert result.harmonic_zpe > exact * 1.01
    assert abs(result.zpe - exact) < abs(result.harmonic_zpe - exact)
    assert result.n_holes == 0


def test_harmonic_start_needs_little_equilibration_and_drift_is_flagged():
    masses = np.array([1.0, 2.0, 16.0])
    trap = HarmonicTrap(np.zeros((3, 3)), np.array([10.0, 20.0, 30.0]))
    exact = trap.ground_state(masses)
    kwargs = {
        "masses": masses,
        "nwalkers": 1000,
        "nsteps": 1500,
        "timestep": 5.0,
        "seed": 4,
        "collapse_factor": 0,
    }
    harmonic = run_dmc(trap, [1, 1, 8], np.zeros((3, 3)), eqsteps=20, initial="harmonic", **kwargs)
    assert_exact(harmonic, exact)
    assert harmonic.settings["initial"] == "harmonic"
    # walkers drawn from psi_0: their mean potential is E0 from the first step (unguided DMC)
    np.testing.assert_allclose(harmonic.potential_trace[:5].mean(), exact, rtol=0.02)
    # from the minimum with no equilibration, E_ref still climbs during the "production" steps
    assert harmonic.outcome == "completed" and harmonic.completed and harmonic.stopped is None
    assert harmonic.production_walker_steps == harmonic.population_trace[20:].sum()
    with pytest.warns(RuntimeWarning, match="not equilibrated, increase eqsteps"):
        cold = run_dmc(trap, [1, 1, 8], np.zeros((3, 3)), eqsteps=0, **{**kwargs, "nsteps": 200})
    assert cold.drift[0] > 3 * cold.drift[1]
    assert cold.outcome == "drift" and not cold.completed and np.isfinite(cold.zpe)


@pytest.mark.filterwarnings("ignore:DMC. E_ref drifts")  # a short run, not equilibrated on purpose
def test_reproducible_from_seed_and_traces():
    trap = HarmonicTrap(np.zeros((2, 3)), 20.0)
    kwargs = {"nwalkers": 300, "nsteps": 200, "eqsteps": 50, "timestep": 5.0}
    a = run_dmc(trap, [1, 8], np.zeros((2, 3)), seed=7, collapse_factor=0, **kwargs)
    b = run_dmc(trap, [1, 8], np.zeros((2, 3)), seed=7, collapse_factor=0, **kwargs)
    c = run_dmc(trap, [1, 8], np.zeros((2, 3)), seed=8, collapse_factor=0, **kwargs)
    np.testing.assert_array_equal(a.energy_trace, b.energy_trace)
    np.testing.assert_array_equal(a.population_trace, b.population_trace)
    np.testing.assert_array_equal(a.walkers, b.walkers)
    assert a.zpe == b.zpe
    assert not np.array_equal(a.energy_trace, c.energy_trace)
    assert a.energy_trace.shape == a.population_trace.shape == a.potential_trace.shape == (200,)
    # population feedback keeps the population near its target
    assert abs(a.population_trace[50:].mean() - 300) < 30


def test_memory_does_not_grow_with_steps():
    import tracemalloc

    trap = HarmonicTrap(np.zeros((3, 3)), 30.0)
    peaks = []
    for nsteps in (200, 4000):
        tracemalloc.start()
        run_dmc(
            trap,
            [1, 1, 1],
            np.zeros((3, 3)),
            nwalkers=500,
            nsteps=nsteps,
            eqsteps=10,
            seed=0,
            check=False,
            collapse_factor=0,
        )
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # only the three scalar traces grow: 3800 steps x 3 x 8 bytes ~ 90 kB
    assert peaks[1] - peaks[0] < 200_000, peaks


def test_one_batched_call_per_step_energies_only_and_chunks():
    trap = HarmonicTrap(np.zeros((1, 3)), 30.0)
    sizes = []

    class EnergyOnly:
        def __call__(self, positions):
            return trap(positions)

        def energies(self, positions):
            sizes.append(len(positions))
            return trap(positions)[0]

    pot = EnergyOnly()
    result = run_dmc(pot, [1], np.zeros((1, 3)), nwalkers=500, nsteps=20, eqsteps=5, seed=0, check=False)
    assert sizes == list(np.r_[500, result.population_trace[:-1]])  # the whole population, once per step
    sizes.clear()
    run_dmc(
        pot, [1], np.zeros((1, 3)), nwalkers=500, nsteps=3, eqsteps=1, seed=0, check=False, batch_size=200
    )
    assert sizes[:3] == [200, 200, 100]
    assert max(sizes) <= 200


def broken_h2(depth=2.0, shift=0.15, width=0.03):
    """H2 Morse bond plus a deep, narrow Gaussian well at r0 + shift: a hole reachable at the ZPE."""
    morse = PairPotential([(0, 1, "morse", (4.7, 1.9, H2_R0))])

    def potential(positions):
        energies, forces = morse(positions)
        v = positions[:, 1] - positions[:, 0]
        r = np.linalg.norm(v, axis=-1)
        well = -depth * np.exp(-((r - H2_R0 - shift) ** 2) / (2 * width**2))
        de_dr = -well * (r - H2_R0 - shift) / width**2
        f = (de_dr / r)[:, None] * v
        forces = forces.copy()
        forces[:, 0] += f
        forces[:, 1] -= f
        return energies + well, forces

    return potential


def test_broken_potential_yields_holes_correct_one_none():
    positions = np.array([[0, 0, 0], [H2_R0, 0, 0]])
    kwargs = {"nwalkers": 500, "nsteps": 600, "eqsteps": 100, "timestep": 5.0, "seed": 3}
    good = run_dmc(PairPotential([(0, 1, "morse", (4.7, 1.9, H2_R0))]), [1, 1], positions, **kwargs)
    assert good.n_holes == 0 and len(good.holes) == 0
    bad = run_dmc(broken_h2(), [1, 1], positions, **kwargs)
    assert bad.n_holes > 10
    assert bad.holes.shape == (len(bad.hole_energies), 2, 3)
    assert (bad.hole_energies < -DEFAULT_HOLE_THRESHOLD).all()
    assert set(bad.hole_reasons) == {"energy"}
    r = np.linalg.norm(bad.holes[:, 1] - bad.holes[:, 0], axis=1)
    assert np.all(np.abs(r - (H2_R0 + 0.15)) < 0.12)
    assert ((bad.hole_steps >= 0) & (bad.hole_steps < 600)).all()
    # holes are removed, so they cannot take over: the population stays near its target and the energy
    # stays above the minimum (the hole acts as an absorbing wall, which raises it)
    assert abs(bad.population_trace[100:].mean() - 500) < 50
    assert good.zpe < bad.zpe < 3 * good.zpe
    # without hole detection the walkers collapse into the well: the "ZPE" drops below the minimum
    blind = run_dmc(broken_h2(), [1, 1], positions, hole_threshold=None, **kwargs)
    assert blind.n_holes == 0 and blind.zpe < -0.1


def test_hole_storage_is_capped_and_a_full_store_truncates_the_run():
    positions = np.array([[0, 0, 0], [H2_R0, 0, 0]])
    kwargs = {"nwalkers": 500, "nsteps": 600, "eqsteps": 100, "seed": 3}
    bad = run_dmc(broken_h2(), [1, 1], positions, max_holes=5, **kwargs)
    assert len(bad.holes) == 5 and bad.n_holes >= 5
    assert bad.outcome == "truncated" and "max_holes=5" in bad.stopped
    assert len(bad.energy_trace) < 600 and bad.hole_steps.max() == len(bad.energy_trace) - 1
    # max_holes=0 stores none and never stops: the run goes on to the end, counting holes
    counted = run_dmc(broken_h2(), [1, 1], positions, max_holes=0, **kwargs)
    assert len(counted.holes) == 0 and counted.n_holes > 10 and len(counted.energy_trace) == 600
    assert counted.outcome != "truncated"


def test_collapsed_geometries_are_holes():
    """A very soft H-H spring lets atoms come closer than half their covalent radii at low energy."""
    soft = PairPotential([(0, 1, "harmonic", (1.0, H2_R0))])
    positions = np.array([[0, 0, 0], [H2_R0, 0, 0]])
    result = run_dmc(soft, [1, 1], positions, nwalkers=500, nsteps=400, eqsteps=100, seed=1)
    assert result.n_holes > 0 and set(result.hole_reasons) == {"collapse"}
    r = np.linalg.norm(result.holes[:, 1] - result.holes[:, 0], axis=1)
    assert (r < 0.31).all()
    none = run_dmc(soft, [1, 1], positions, nwalkers=500, nsteps=400, eqsteps=100, seed=1, collapse_factor=0)
    assert none.n_holes == 0


def test_uncertainty_holes_from_third_value_or_callable():
    trap = HarmonicTrap(np.zeros((1, 3)), 30.0)

    def std_of(positions):
        return 0.5 * np.linalg.norm(positions[:, 0], axis=-1)  # eV, grows away from the minimum

    def ensemble(positions):
        e, f = trap(positions)
        return e, f, std_of(positions)

    kwargs = {"nwalkers": 300, "nsteps": 100, "eqsteps": 10, "seed": 4, "uncertainty_threshold": 0.1}
    a = run_dmc(ensemble, [1], np.zeros((1, 3)), **kwargs)
    b = run_dmc(trap, [1], np.zeros((1, 3)), uncertainty=std_of, **kwargs)
    for result in (a, b):
        assert result.n_holes > 0 and set(result.hole_reasons) == {"uncertainty"}
        assert (np.linalg.norm(result.holes[:, 0], axis=1) > 0.2).all()
    np.testing.assert_array_equal(a.hole_steps, b.hole_steps)
    with pytest.raises(ValueError, match="uncertainty_threshold needs"):
        run_dmc(trap, [1], np.zeros((1, 3)), **kwargs)


def test_relative_uncertainty_spares_walkers_high_up_the_wall():
    """A committee whose spread is 8% of the height above the minimum: with an absolute threshold alone, walkers
    up the wall are holes; a relative part of 10% spares them all, and one of 5% flags exactly those whose spread
    exceeds threshold + 5% of their height."""
    trap = HarmonicTrap(np.zeros((1, 3)), 30.0)

    def proportional(positions):
        e, f = trap(positions)
        return e, f, 0.08 * e

    kwargs = {"nwalkers": 300, "nsteps": 150, "eqsteps": 10, "seed": 5, "uncertainty_threshold": 0.005}
    absolute = run_dmc(proportional, [1], np.zeros((1, 3)), **kwargs)
    spared = run_dmc(proportional, [1], np.zeros((1, 3)), uncertainty_relative=0.1, **kwargs)
    assert absolute.n_holes > 50 and set(absolute.hole_reasons) == {"uncertainty"}
    assert spared.n_holes == 0
    some = run_dmc(
        proportional,
        [1],
        np.zeros((1, 3)),
        uncertainty_relative=0.05,
        **{**kwargs, "uncertainty_threshold": 0.0002},
    )
    assert 0 < some.n_holes < absolute.n_holes
    assert np.all(0.08 * some.hole_energies > 0.0002 + 0.05 * some.hole_energies)
    with pytest.raises(ValueError, match="uncertainty_relative must be in"):
        run_dmc(proportional, [1], np.zeros((1, 3)), uncertainty_relative=-0.1, **kwargs)


def test_non_finite_energies_are_holes():
    trap = HarmonicTrap(np.zeros((1, 3)), 30.0)

    def nan_far_out(positions):
        e, f = trap(positions)
        return np.where(positions[:, 0, 0] > 0.15, np.nan, e), f

    result = run_dmc(nan_far_out, [1], np.zeros((1, 3)), nwalkers=300, nsteps=200, eqsteps=50, seed=2)
    assert result.n_holes > 0 and set(result.hole_reasons) == {"nonfinite"}
    assert (result.holes[:, 0, 0] > 0.15).all() and np.isfinite(result.zpe)


def test_a_surface_made_of_holes_stops_early_but_keeps_them(tmp_path):
    trap = HarmonicTrap(np.zeros((1, 3)), 30.0)

    def everywhere_uncertain(positions):
        e, f = trap(positions)
        return e, f, np.where(np.linalg.norm(positions[:, 0], axis=-1) > 0, 1.0, 0.0)

    with pytest.warns(RuntimeWarning, match="all walkers died at step 0"):
        result = run_dmc(
            everywhere_uncertain,
            [1],
            np.zeros((1, 3)),
            nwalkers=40,
            nsteps=50,
            eqsteps=10,
            seed=0,
            uncertainty_threshold=0.5,
        )
    assert result.stopped and result.n_holes == 40 and len(result.holes) == 40
    assert len(result.energy_trace) == 0 and np.isnan(result.zpe) and np.isnan(result.zpe_error)
    assert result.outcome == "collapsed" and not result.completed
    assert result.plot(tmp_path / "stopped.png").exists()


def test_exploding_population():
    """Hole detection off, and a surface 50 eV lower away from the minimum: every walker branches e^5 times."""
    trap = HarmonicTrap(np.zeros((2, 3)), 30.0)

    def sinking(positions):
        e, f = trap(positions)
        return e - 50.0 * (np.abs(positions).max(axis=(1, 2)) > 1e-3), f

    with pytest.warns(RuntimeWarning, match="population exploded"):
        result = run_dmc(
            sinking, [1, 8], np.zeros((2, 3)), nwalkers=50, nsteps=40, eqsteps=10, seed=0, check=False,
            hole_threshold=None, collapse_factor=0,
        )  # fmt: skip
    assert result.outcome == "exploded" and len(result.walkers) <= 500
    assert np.isnan(result.zpe)  # no production step: NaN, not an exception


def test_non_finite_everywhere_truncates_and_wall_time_limit():
    trap = HarmonicTrap(np.zeros((1, 3)), 30.0)

    def nowhere(positions):
        e, f = trap(positions)
        return np.where(np.abs(positions).max(axis=(1, 2)) > 0, np.nan, e), f

    with pytest.warns(RuntimeWarning, match="every walker had a non-finite energy at step 0"):
        result = run_dmc(
            nowhere, [1], np.zeros((1, 3)), nwalkers=30, nsteps=20, eqsteps=5, seed=0, check=False
        )
    assert result.outcome == "truncated" and set(result.hole_reasons) == {"nonfinite"}
    assert np.isnan(result.zpe)
    timed = run_dmc(
        trap, [1], np.zeros((1, 3)), nwalkers=30, nsteps=200, eqsteps=5, seed=0, max_wall_time=1e-9
    )
    assert timed.outcome == "truncated" and "wall time" in timed.stopped and len(timed.energy_trace) == 1
    with pytest.raises(ValueError, match="max_wall_time must be positive"):
        run_dmc(trap, [1], np.zeros((1, 3)), max_wall_time=0)


def test_too_few_walker_steps():
    trap = HarmonicTrap(np.zeros((1, 3)), 30.0)
    kwargs = {"nwalkers": 200, "nsteps": 300, "eqsteps": 100, "seed": 1, "initial": "harmonic"}
    default = run_dmc(trap, [1], np.zeros((1, 3)), **kwargs)
    assert default.settings["min_walker_steps"] == 200 * 200 // 2
    assert default.outcome == "completed", (default.outcome, default.drift)
    short = run_dmc(trap, [1], np.zeros((1, 3)), min_walker_steps=10 * 200 * 200, **kwargs)
    assert short.outcome == "too_short" and short.production_walker_steps < 10 * 200 * 200
    assert short.zpe == default.zpe  # the numbers are the same; only the verdict differs
    with pytest.raises(ValueError, match="min_walker_steps must be >= 0"):
        run_dmc(trap, [1], np.zeros((1, 3)), min_walker_steps=-1)


def test_blocking_error():
    rng = np.random.default_rng(0)
    white = rng.normal(size=2**14)
    np.testing.assert_allclose(blocking_error(white), 1 / np.sqrt(len(white)), rtol=0.1)
    phi = 0.9  # AR(1): the error of the mean grows by sqrt((1 + phi) / (1 - phi)) = 4.36
    x = np.zeros(2**15)
    noise = rng.normal(size=len(x))
    for i in range(1, len(x)):
        x[i] = phi * x[i - 1] + noise[i]
    naive = x.std() / np.sqrt(len(x))
    assert 3.6 < blocking_error(x) / naive < 5.0


def test_plot(tmp_path):
    trap = HarmonicTrap(np.zeros((1, 3)), 30.0)
    result = run_dmc(trap, [1], np.zeros((1, 3)), nwalkers=100, nsteps=100, eqsteps=10, seed=0)
    path = result.plot(tmp_path / "dmc.png")
    assert path.stat().st_size > 10_000


def test_bad_input():
    trap = HarmonicTrap(np.zeros((2, 3)), 30.0)
    x0 = np.zeros((2, 3))
    for kwargs, message in [
        ({"nwalkers": 0}, "nwalkers must be a positive integer"),
        ({"nwalkers": -10}, "nwalkers must be a positive integer"),
        ({"timestep": 0.0}, "timestep must be positive"),
        ({"timestep": -1.0}, "timestep must be positive"),
        ({"nsteps": 100, "eqsteps": 100}, "eqsteps must be an integer in"),
        ({"masses": [1.0, 2.0, 3.0]}, "masses have 3 entries but there are 2 atoms"),
        ({"masses": [1.0, 0.0]}, "non-positive mass"),
        ({"initial": "random"}, "initial must be 'minimum' or 'harmonic'"),
    ]:
        with pytest.raises(ValueError, match=message):
            run_dmc(trap, [1, 1], x0, **kwargs)
    with pytest.raises(ValueError, match="not a minimum"):
        run_dmc(trap, [1, 1], x0 + 0.05)
    mb = MullerBrown()
    with pytest.raises(ValueError, match="not a minimum: 1 imaginary"):
        run_dmc(mb, [1], [[-0.82200156, 0.6243128, 0.0]])
