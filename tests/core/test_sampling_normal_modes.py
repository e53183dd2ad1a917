"""Normal-mode sampling (eqs. 1-2) and scan (eqs. 3-9) on an exactly harmonic surface."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from scipy import stats

from aiida_mlpes.core.sampling import normal_mode_sampling, normal_mode_scan
from aiida_mlpes.core.units import KB
from tests.core.test_sampling_models import harmonic_molecule

FREQUENCIES = [1000.0, 1500.0, 1600.0, 3300.0, 3400.0, 3500.0]


def _coefficients(result, system=0):
    """Displacement coefficients f_i of every sample along the modes (least squares on x - x_eq)."""
    info = result.systems[system]
    atoms, _ = harmonic_molecule()
    from aiida_mlpes.core.characterize.frequencies import modes_from_hessian

    modes = modes_from_hessian(_.hessian, atoms.positions, atoms.get_masses())
    q = modes.modes.reshape(len(modes.frequencies), -1).T
    dx = result.samples.positions.reshape(len(result), -1) - atoms.positions.reshape(-1)
    f, *_ = np.linalg.lstsq(q, dx.T, rcond=None)
    assert np.allclose(info["frequencies"], modes.frequencies, atol=1e-3)
    return f.T, modes.force_constants


def test_modes_and_energies_follow_eqs_1_2():
    atoms, calc = harmonic_molecule()
    temperature, n = 800.0, 3000
    kt = KB * temperature
    result = normal_mode_sampling(atoms, calc, n_samples=n, temperature=temperature, seed=3)
    assert len(result) == n and result.samples.forces is not None
    assert np.allclose(result.systems[0]["frequencies"], FREQUENCIES, atol=1e-3)
    # exactly harmonic: driver energy = harmonic energy of the displacement
    assert np.allclose(result.samples.energy, result.sample_data["harmonic_energy"], rtol=1e-7, atol=1e-10)
    f, k = _coefficients(result)
    mode_energy = 0.5 * k * f**2
    # eq. 2: each mode's energy 1.5 c kT with c ~ U[0, 1]: uniform on [0, 1.5 kT]
    for i in range(len(k)):
        assert stats.kstest(mode_energy[:, i] / (1.5 * kt), "uniform").pvalue > 1e-3
    # the sign is a fair coin
    assert abs(np.mean(f > 0) - 0.5) < 4 * 0.5 / np.sqrt(f.size)
    # total: sum of 6 independent U[0, 1.5 kT]
    total = result.samples.energy
    mean, var = 6 * 0.75 * kt, 6 * (1.5 * kt) ** 2 / 12
    assert abs(total.mean() - mean) < 4 * np.sqrt(var / n)
    assert abs(total.var() / var - 1) < 0.1


def test_zero_point_scales_each_mode_by_its_quantum():
    """zero_point: mode i carries energy uniform on [0, 1.5 max(kB T, hbar omega_i)]; soft modes keep kB T."""
    from aiida_mlpes.core.units import INV_CM

    atoms, calc = harmonic_molecule()
    temperature, n = 2000.0, 3000
    kt = KB * temperature
    result = normal_mode_sampling(atoms, calc, n_samples=n, temperature=temperature, zero_point=True, seed=4)
    f, k = _coefficients(result)
    mode_energy = 0.5 * k * f**2
    scales = np.maximum(kt, np.asarray(FREQUENCIES) * INV_CM)
    assert scales[0] == kt and scales[-1] > 2.5 * kt  # 1000 cm^-1 stays thermal at 2000 K, 3500 does not
    for i in range(len(k)):
        assert stats.kstest(mode_energy[:, i] / (1.5 * scales[i]), "uniform").pvalue > 1e-3
    assert np.allclose(result.samples.energy, result.sample_data["harmonic_energy"], rtol=1e-7, atol=1e-10)


def test_hessian_samples_keep_the_finite_difference_structures():
    """hessian_samples: the reference and its 6N central-difference structures come first, with the driver's
    own results (no extra driver call), then the n_samples random ones."""
    from aiida_mlpes.core.characterize.frequencies import DEFAULT_STEP

    atoms, calc = harmonic_molecule()
    plain = normal_mode_sampling(atoms.copy(), calc, n_samples=10, temperature=300, seed=2)
    kept = normal_mode_sampling(
        atoms.copy(), calc, n_samples=10, temperature=300, seed=2, hessian_samples=True
    )
    n = 1 + 6 * len(atoms)
    assert len(kept) == n + 10 and kept.info["driver_calls"] == plain.info["driver_calls"]
    np.testing.assert_allclose(kept.samples.positions[-10 * len(atoms) :], plain.samples.positions)
    moves = kept.samples.positions[: n * len(atoms)].reshape(n, -1) - atoms.positions.reshape(-1)
    assert np.allclose(moves[0], 0) and np.allclose(np.abs(moves[1:]).max(axis=1), DEFAULT_STEP)
    np.testing.assert_allclose(
        kept.samples.energy, kept.sample_data["harmonic_energy"], rtol=1e-6, atol=1e-12
    )


def test_low_temperature_samples_follow_eq_2_at_their_own_temperature():
    """low_temperature_samples: after the usual samples (unchanged), more at low_temperature without the
    zero-point scale: every mode's energy uniform on [0, 1.5 kB T_low]; flagged in sample_data."""
    atoms, calc = harmonic_molecule()
    n, extra, low = 200, 3000, 150.0
    plain = normal_mode_sampling(atoms.copy(), calc, n_samples=n, temperature=2000.0, zero_point=True, seed=5)
    both = normal_mode_sampling(
        atoms.copy(),
        calc,
        n_samples=n,
        temperature=2000.0,
        zero_point=True,
        hessian_samples=True,
        low_temperature_samples=extra,
        low_temperature=low,
        seed=5,
    )
    n_hessian = 1 + 6 * len(atoms)
    assert len(both) == n_hessian + n + extra
    flags = both.sample_data["low_temperature"]
    assert not flags[: n_hessian + n].any() and flags[n_hessian + n :].all()
    start = (n_hessian) * len(atoms)
    np.testing.assert_allclose(
        both.samples.positions[start : start + n * len(atoms)], plain.samples.positions
    )
    cold = both.samples.select(np.flatnonzero(flags))
    f, k = _coefficients(dataclasses.replace(both, samples=cold))
    mode_energy = 0.5 * k * f**2
    for i in range(len(k)):
        assert stats.kstest(mode_energy[:, i] / (1.5 * KB * low), "uniform").pvalue > 1e-3
    assert cold.energy.max() < 6 * 1.5 * KB * low
    with pytest.raises(ValueError, match="low_temperature_samples must be >= 0"):
        normal_mode_sampling(atoms, calc, n_samples=2, temperature=300, low_temperature_samples=-1)
    with pytest.raises(ValueError, match="low_temperature must be > 0"):
        normal_mode_sampling(
            atoms, calc, n_samples=2, temperature=300, low_temperature_samples=2, low_temperature=0
        )


def test_saddle_optimization_samples_around_the_transition_state():
    """optimize="saddle": a distorted planar NH3 goes to xTB's planar saddle (one imaginary mode, left out by the
    default frequency range); samples are displaced around it. A bad value is named."""
    from ase import Atoms

    from aiida_mlpes.core.sampling.drivers import make_driver

    pytest.importorskip("tblite")
    guess = Atoms("NH3", positions=[(0, 0, 0.05), (1.05, 0, 0), (-0.5, 0.9, 0), (-0.5, -0.85, 0)])
    result = normal_mode_sampling(
        guess, make_driver("tblite"), n_samples=20, temperature=500, optimize="saddle", fmax=1e-3, seed=1
    )
    info = result.systems[0]
    assert info["stationary_point"] == "saddle" and info["optimization_converged"]
    frequencies = np.asarray(info["frequencies"])
    assert np.sum(frequencies < -100) == 1 and 0 not in info["selected_modes"]
    assert len(result) == 20
    with pytest.raises(ValueError, match="optimize must be one of"):
        normal_mode_sampling(guess, make_driver("tblite"), n_samples=2, temperature=500, optimize="ts")


def test_frequency_range_selects_modes_and_energy_replaces_kt():
    atoms, calc = harmonic_molecule()
    by_energy = normal_mode_sampling(
        atoms, calc, n_samples=200, energy=0.1, frequency_range=(1200, 3350), seed=5
    )
    assert list(by_energy.systems[0]["selected_modes"]) == [1, 2, 3]
    f, _ = _coefficients(by_energy)
    assert np.abs(f[:, [0, 4, 5]]).max() < 1e-8
    assert np.abs(f[:, [1, 2, 3]]).min() > 0
    assert by_energy.samples.energy.max() <= 3 * 1.5 * 0.1 + 1e-9
    by_temperature = normal_mode_sampling(
        atoms, calc, n_samples=200, temperature=0.1 / KB, frequency_range=(1200, 3350), seed=5
    )
    assert np.allclose(by_temperature.samples.positions, by_energy.samples.positions)


def test_frequency_range_without_modes_is_a_clear_error():
    atoms, calc = harmonic_molecule()
    with pytest.raises(ValueError, match=r"selects none of the 6 normal modes of system 0"):
        normal_mode_sampling(atoms, calc, n_samples=5, temperature=300, frequency_range=(4000, None))
    with pytest.raises(ValueError, match="temperature"):
        normal_mode_sampling(atoms, calc, n_samples=5, temperature=-300)
    with pytest.raises(ValueError, match="exactly one of temperature"):
        normal_mode_sampling(atoms, calc, n_samples=5, temperature=300, energy=0.1)
    flat_atoms, flat = harmonic_molecule(frequencies=(0.0, 1500.0, 1600.0, 3300.0, 3400.0, 3500.0))
    with pytest.raises(ValueError, match=r"normal mode 0 of system 0 is flat"):
        normal_mode_scan(flat_atoms, flat, frequency_range=None)
    assert len(normal_mode_scan(flat_atoms, flat, energy_limit=0.1, frequency_range=(10, None))) == 11
    with pytest.raises(ValueError, match="low < high"):
        normal_mode_sampling(atoms, calc, n_samples=5, temperature=300, frequency_range=(3000, 100))


def _lattice_points(limit_ratio, size):
    """Multipliers n (all nonzero) with sum n^2 <= limit_ratio, for ``size`` modes."""
    top = int(np.sqrt(limit_ratio))
    values = [v for v in range(-top, top + 1) if v]
    return {n for n in itertools.product(values, repeat=size) if sum(v * v for v in n) <= limit_ratio}


@pytest.mark.parametrize(
    ("nmax", "frequency_range", "max_multiplier"), [(1, None, None), (2, (1200, None), None), (2, None, 2)]
)
def test_scan_points_lie_on_mode_combinations_and_energy_grid(nmax, frequency_range, max_multiplier):
    atoms, calc = harmonic_molecule()
    e_step, ratio = 0.05, 10.5
    result = normal_mode_scan(
        atoms,
        calc,
        energy_step=e_step,
        energy_limit=ratio * e_step,
        nmax=nmax,
        frequency_range=frequency_range,
        max_multiplier=max_multiplier,
    )
    info = result.systems[0]
    selected = [i for i, nu in enumerate(FREQUENCIES) if frequency_range is None or nu >= frequency_range[0]]
    assert list(info["selected_modes"]) == selected
    from aiida_mlpes.core.characterize.frequencies import modes_from_hessian

    modes = modes_from_hessian(calc.hessian, atoms.positions, atoms.get_masses())
    scale = np.sqrt(2 * e_step / modes.force_constants)  # eq. 8
    found: dict[tuple[int, ...], set] = {}
    for m in range(len(result)):
        mode_ids = result.sample_data["scan_modes"][m]
        mult = result.sample_data["scan_multipliers"][m]
        used = mode_ids >= 0
        combo, n = tuple(mode_ids[used]), tuple(mult[used])
        expected = atoms.positions + np.einsum(
            "k,kna->na", np.array(n) * scale[list(combo)], modes.modes[list(combo)]
        )
        assert np.allclose(result.samples.positions[result.samples.atom_slice(m)], expected, atol=1e-10)
        # harmonic: every point lies on the E_step grid, E = E_step * sum n^2 <= E_limit
        assert np.isclose(result.samples.energy[m], e_step * sum(v * v for v in n), atol=1e-9)
        found.setdefault(combo, set()).add(n)
    assert found.pop(()) == {()}  # the reference structure
    combos = [c for s in range(1, nmax + 1) for c in itertools.combinations(selected, s)]
    assert sorted(found) == sorted(combos)
    for combo, points in found.items():
        expected_points = _lattice_points(ratio, len(combo))
        if max_multiplier:
            expected_points = {n for n in expected_points if max(map(abs, n)) <= max_multiplier}
        assert points == expected_points, combo
    # every evaluated point is in the trajectory, kept or not
    assert len(result.trajectory_energy) == info["n_points"] >= len(result) - 1


def test_scan_on_tblite_nh3_matches_paper_listing_3_shape():
    """NH3 with GFN2-xTB: single and pair scans of the modes above 100 cm^-1 (paper Listing 3)."""
    from ase.build import molecule

    from aiida_mlpes.core.sampling import make_driver

    atoms = molecule("NH3")
    result = normal_mode_scan(
        atoms, make_driver("tblite"), energy_step=0.1, energy_limit=0.5, nmax=1, optimize=True
    )
    info = result.systems[0]
    assert len(info["frequencies"]) == 6 and np.all(info["frequencies"] > 900)
    de = result.samples.energy - info["reference_energy"]
    assert np.all(np.abs(de) <= 0.5 + 1e-12)
    # anharmonic, but the first step along each mode costs about E_step (eq. 3)
    first = np.abs(result.sample_data["scan_multipliers"][:, 0]) == 1
    assert np.allclose(de[first], 0.1, rtol=0.35)
