"""Diverse selection, candidate geometries (DMC walkers + MD, SPARC window) and saddle escape, on analytic
surfaces of H2O-like and one-atom systems."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_mlpes.core.characterize.analytic import MullerBrown, PairPotential
from aiida_mlpes.core.characterize.dmc import run_dmc
from aiida_mlpes.core.characterize.explore import explore, force_deviation
from aiida_mlpes.core.characterize.holes import pair_descriptor, select_diverse
from aiida_mlpes.core.characterize.optimize import find_minimum, optimize_minimum

WATER = [8, 1, 1]
R_OH = 0.96


def water_surface(r_hh: float = 1.52) -> PairPotential:
    """Two O-H Morse bonds and a harmonic H-H spring: bent minimum (HOH ~105 deg), linear saddle."""
    return PairPotential(
        [
            (0, 1, "morse", (5.0, 2.2, R_OH)),
            (0, 2, "morse", (5.0, 2.2, R_OH)),
            (1, 2, "harmonic", (8.0, r_hh)),
        ]
    )


def bent_water() -> np.ndarray:
    angle = np.deg2rad(104.5) / 2
    return np.array(
        [
            [0, 0, 0],
            [R_OH * np.sin(angle), 0, R_OH * np.cos(angle)],
            [-R_OH * np.sin(angle), 0, R_OH * np.cos(angle)],
        ]
    )


def linear_water() -> np.ndarray:
    return np.array([[0, 0, 0], [1.0, 0, 0], [-1.0, 0, 0]])


class FakeCommittee:
    """The water surface plus a committee spread that grows with the distance from the minimum."""

    def __init__(self, minimum: np.ndarray, scale: float = 1.0) -> None:
        self.surface = water_surface()
        self.minimum = minimum
        self.scale = scale

    def __call__(self, positions):
        return self.surface(positions)

    def evaluate(self, positions, forces=True):
        energy, f = self.surface(positions)
        desc = pair_descriptor(np.array(WATER), positions) - pair_descriptor(
            np.array(WATER), self.minimum[None]
        )
        spread = self.scale * np.linalg.norm(desc, axis=1)  # eV/A
        std = np.zeros_like(positions)
        std[:, 0, 0] = spread  # one component of one atom: max per-atom deviation == spread
        return {"energy": energy, "forces": f, "energy_std": spread, "forces_std": std}


def test_descriptor_is_invariant_to_permutation_rotation_translation():
    rng = np.random.default_rng(0)
    x = bent_water() + 0.05 * rng.standard_normal((3, 3))
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    moved = x[[0, 2, 1]] @ q.T + [1.0, -2.0, 3.0]
    np.testing.assert_allclose(
        pair_descriptor(np.array(WATER), x[None]), pair_descriptor(np.array(WATER), moved[None])
    )
    assert pair_descriptor(np.array(WATER), x[None]).shape == (1, 3)  # O-H (2 pairs) + H-H (1)


def test_one_dense_basin_cannot_take_the_whole_quota():
    rng = np.random.default_rng(1)
    basins = [bent_water(), bent_water() * 1.15, bent_water() * 0.9]
    sizes = [200, 4, 3]
    positions = np.concatenate(
        [b + 0.005 * rng.standard_normal((n, 3, 3)) for b, n in zip(basins, sizes, strict=True)]
    )
    label = np.repeat([0, 1, 2], sizes)
    for seed in range(5):
        picked = select_diverse(WATER, positions, 6, seed=seed)
        assert len(set(picked)) == 6 and set(label[picked]) == {0, 1, 2}
        np.testing.assert_array_equal(picked, select_diverse(WATER, positions, 6, seed=seed))  # deterministic
    # with weights, the heaviest comes first
    weights = np.linspace(0, 1, len(positions))
    assert select_diverse(WATER, positions, 3, weights=weights)[0] == len(positions) - 1
    assert (
        len(select_diverse(WATER, positions[:4], 10)) == 4 and len(select_diverse(WATER, positions, 0)) == 0
    )
    # duplicates of picked structures are taken last
    dup = np.concatenate([positions[:1]] * 5 + [positions[205:207]])
    assert len(set(select_diverse(WATER, dup, 2).tolist()) & {0, 1, 2, 3, 4}) <= 1
    with pytest.raises(ValueError, match="weights must be"):
        select_diverse(WATER, positions, 3, weights=-weights)


def test_explore_without_committee_mixes_dmc_walkers_and_md_frames():
    surface = water_surface()
    minimum = optimize_minimum(surface, WATER, bent_water(), fmax=1e-4).positions
    dmc = run_dmc(surface, WATER, minimum, nwalkers=100, nsteps=60, eqsteps=20, seed=0)
    kwargs = {"walkers": dmc.walkers, "n_candidates": 12, "md_steps": 80, "md_save_interval": 4, "seed": 3}
    found = explore(surface, WATER, minimum, **kwargs)
    assert len(found) == 12 and found.force_std_max is None
    assert found.counts["pool_dmc"] == len(dmc.walkers) and found.counts["pool_md"] == 20
    assert found.counts["selected_dmc"] == found.counts["selected_md"] == 6  # md_fraction 0.5
    assert found.md["frames"] == 20 and not found.md["failed"]
    assert set(found.origin) <= {"dmc", "md"} and (found.energies > 0).all()
    again = explore(surface, WATER, minimum, **kwargs)
    np.testing.assert_array_equal(found.positions, again.positions)  # same seed, same candidates
    other = explore(surface, WATER, minimum, **{**kwargs, "seed": 4})
    assert not np.array_equal(found.positions, other.positions)
    walkers_only = explore(surface, WATER, minimum, **{**kwargs, "md_fraction": 0.0})
    assert walkers_only.counts["selected_dmc"] == 12
    topped_up = explore(surface, WATER, minimum, **{**kwargs, "n_candidates": 30, "md_fraction": 1.0})
    assert topped_up.counts["selected_md"] == 20 and topped_up.counts["selected_dmc"] == 10
    md_only = explore(surface, WATER, minimum, n_candidates=5, md_steps=40, seed=0)
    assert len(md_only) == 5 and set(md_only.origin) == {"md"}


def test_explore_with_a_committee_uses_the_sparc_window():
    minimum = bent_water()
    committee = FakeCommittee(minimum, scale=2.0)
    rng = np.random.default_rng(2)
    walkers = minimum + rng.normal(scale=0.05, size=(300, 3, 3))
    deviation = force_deviation(committee, walkers)
    assert deviation.shape == (300,) and (deviation >= 0).all()

    class PerAtom:
        def evaluate(self, positions):
            return {"forces_std": np.tile([[0.1, 0.3, 0.2]], (len(positions), 1))}  # (B, N) per atom

    class Direct:
        def evaluate(self, positions):
            return {
                "forces_std_max": np.full(len(positions), 0.7),
                "forces_std": np.zeros((len(positions), 3, 3)),
            }

    np.testing.assert_allclose(force_deviation(PerAtom(), walkers[:4]), 0.3)
    np.testing.assert_allclose(force_deviation(Direct(), walkers[:4]), 0.7)  # the committee's own figure wins
    assert force_deviation(water_surface(), walkers) is None
    window = (0.05, np.quantile(deviation, 0.8))
    found = explore(committee, WATER, minimum, walkers=walkers, n_candidates=10, md_steps=0, window=window)
    assert len(found) == 10 and found.settings["committee"]
    assert ((found.force_std_max >= window[0]) & (found.force_std_max <= window[1])).all()
    assert found.force_std_max[0] == pytest.approx(
        deviation[deviation <= window[1]].max()
    )  # most uncertain first
    counts = found.counts
    assert counts["below_window"] + counts["in_window"] + counts["above_window"] == 300
    assert found.pool_force_std["max"] == pytest.approx(deviation.max())
    # a window that holds few: filled from below (fill=True) or not
    narrow = (np.sort(deviation)[-3], deviation.max())
    filled = explore(committee, WATER, minimum, walkers=walkers, n_candidates=10, md_steps=0, window=narrow)
    assert len(filled) == 10 and (filled.force_std_max[:3] >= narrow[0]).all()
    assert (filled.force_std_max[3:] < narrow[0]).all()
    strict = explore(
        committee, WATER, minimum, walkers=walkers, n_candidates=10, md_steps=0, window=narrow, fill=False
    )
    assert len(strict) == 3


def test_explore_drops_non_finite_structures_and_checks_options():
    surface = water_surface()
    minimum = bent_water()

    def holey(positions):
        e, f = surface(positions)
        return np.where(positions[:, 1, 0] > minimum[1, 0] + 0.02, np.nan, e), f

    walkers = minimum + np.random.default_rng(0).normal(scale=0.03, size=(50, 3, 3))
    found = explore(holey, WATER, minimum, walkers=walkers, n_candidates=50, md_steps=0)
    assert found.counts["dropped_nonfinite"] > 0 and len(found) == 50 - found.counts["dropped_nonfinite"]
    assert np.isfinite(found.energies).all()
    for kwargs, match in [
        ({"window": (0.5, 0.1)}, "window must be"),
        ({"md_fraction": 1.5}, "md_fraction must be in"),
        ({"n_candidates": -1}, "n_candidates"),
        ({"temperature": 0}, "temperature must be positive"),
        ({"md_steps": 10, "md_save_interval": 20}, "md_save_interval"),
        ({"walkers": np.zeros((2, 4, 3))}, "walkers have shape"),
    ]:
        with pytest.raises(ValueError, match=match):
            explore(surface, WATER, minimum, **kwargs)


def test_minimum_that_is_a_saddle_is_escaped_on_muller_brown():
    mb = MullerBrown()
    saddle = np.array([[-0.82200156, 0.6243128, 0.0]])
    plain = optimize_minimum(mb, [1], saddle)
    assert plain.converged and np.allclose(plain.positions, saddle, atol=1e-3)  # stuck on the saddle
    found = find_minimum(mb, [1], saddle)
    assert found.converged and found.saddle_escaped and found.imaginary_frequencies == []
    assert len(found.saddle_frequencies) == 1 and found.saddle_frequencies[0][0] < -20
    # the saddle joins minima near (-0.558, 1.442) and (-0.050, 0.467): the lower one is kept
    np.testing.assert_allclose(found.positions[0, :2], [-0.558, 1.442], atol=0.01)
    assert found.energy < found.saddle_energies[0]
    checked = find_minimum(mb, [1], saddle, max_escapes=0)
    assert not checked.saddle_escaped and len(checked.imaginary_frequencies) == 1


def test_linear_water_is_bent_by_the_saddle_escape():
    surface = water_surface()
    found = find_minimum(surface, WATER, linear_water())
    assert found.saddle_escaped and found.imaginary_frequencies == []
    a, b = found.positions[1] - found.positions[0], found.positions[2] - found.positions[0]
    angle = np.degrees(np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    assert 90 < angle < 120
    assert len(found.modes.frequencies) == 3 and (found.modes.frequencies > 0).all()
    with pytest.raises(ValueError, match="displacement > 0"):
        find_minimum(surface, WATER, linear_water(), displacement=0)
