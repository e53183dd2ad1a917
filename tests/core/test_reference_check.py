"""Reference frequencies from reference single points (aiida_mlpes.core.characterize.reference_check)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule

from aiida_mlpes.core.characterize.analytic import PairPotential
from aiida_mlpes.core.characterize.frequencies import harmonic_frequencies
from aiida_mlpes.core.characterize.reference_check import reference_at, reference_modes, validation_geometries


def springs(atoms):
    """Harmonic springs between all pairs at their current lengths: a minimum with 3N-6 real modes."""
    d = atoms.get_all_distances()
    n = len(atoms)
    return PairPotential(
        [(i, j, "harmonic", (5.0 + i + j, d[i, j])) for i in range(n) for j in range(i + 1, n)]
    )


@pytest.mark.parametrize("name", ["H2O", "CH4", "HCN"])
def test_labels_of_the_displaced_geometries_give_the_direct_frequencies(name):
    atoms = molecule(name)
    potential = springs(atoms)
    geometries = validation_geometries(atoms.positions)
    assert geometries.shape == (1 + 6 * len(atoms), len(atoms), 3)
    np.testing.assert_array_equal(geometries[0], atoms.positions)
    energies, forces = potential(geometries)
    order = np.random.default_rng(0).permutation(len(geometries))  # labels come back in any order
    modes = reference_modes(atoms.numbers, atoms.positions, geometries[order], energies[order], forces[order])
    direct = harmonic_frequencies(potential, atoms.numbers, atoms.positions)
    np.testing.assert_allclose(modes.frequencies[-len(direct) :], direct, atol=1e-3)
    energy, force = reference_at(atoms.positions, geometries[order], energies[order], forces[order])
    assert energy == pytest.approx(energies[0])
    np.testing.assert_allclose(force, forces[0])


def test_a_missing_label_is_named():
    atoms = molecule("H2O")
    potential = springs(atoms)
    geometries = validation_geometries(atoms.positions)
    energies, forces = potential(geometries)
    with pytest.raises(KeyError, match="1 of 18 geometries have no reference label"):
        reference_modes(atoms.numbers, atoms.positions, geometries[:-1], energies[:-1], forces[:-1])


def test_only_the_minimum_without_frequencies():
    atoms = molecule("NH3")
    assert validation_geometries(atoms.positions, frequencies=False).shape == (1, 4, 3)
