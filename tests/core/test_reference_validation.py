"""Bad structures are rejected before submission, with a message naming conformation and atoms."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule

from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.core.reference.validation import (
    check_charge_multiplicity,
    structure_problems,
    validate_structures,
)


def arrays_of(*images) -> RaggedArrays:
    return RaggedArrays.from_atoms(images)


def test_good_structures_pass():
    arrays = arrays_of(molecule("NH3"), molecule("H2O"), molecule("CH4"))
    assert structure_problems(arrays) == {}
    validate_structures(arrays)


@pytest.mark.parametrize(
    ("numbers", "charge", "mult", "ok"),
    [
        ([7, 1, 1, 1], 0, 1, True),  # NH3: 10 electrons, singlet
        ([7, 1, 1, 1], 0, 2, False),  # 10 electrons cannot be a doublet
        ([7, 1, 1, 1], 1, 2, True),  # NH3+ doublet
        ([7, 1, 1, 1], 1, 1, False),  # 9 electrons cannot be a singlet
        ([7, 1, 1, 1], 0, 3, True),  # triplet is allowed by parity
        ([1], 0, 2, True),
        ([1], 2, 1, False),  # negative electron count
        ([1, 1], 0, 5, False),  # 4 unpaired electrons with only 2 electrons
        ([8, 8], 0, 0, False),  # multiplicity must be >= 1
    ],
)
def test_charge_multiplicity_parity(numbers, charge, mult, ok):
    assert (check_charge_multiplicity(numbers, charge, mult) is None) is ok


def test_parity_message_names_the_numbers():
    msg = check_charge_multiplicity([7, 1, 1, 1], 0, 2)
    assert "10 electrons" in msg and "multiplicity 2" in msg and "1, 3" in msg


def test_overlapping_atoms_named():
    bad = molecule("NH3")
    bad.positions[2] = bad.positions[0] + [0.1, 0.0, 0.0]
    arrays = arrays_of(molecule("NH3"), bad, molecule("NH3"))
    problems = structure_problems(arrays)
    assert list(problems) == [1]
    assert "atoms 0 (N) and 2 (H)" in problems[1] and "0.100 Angstrom" in problems[1]
    with pytest.raises(ValueError, match="conformation 1: atoms 0 \\(N\\) and 2 \\(H\\)"):
        validate_structures(arrays)


def test_overlap_threshold_is_configurable():
    h2 = molecule("H2")  # 0.74 Angstrom
    arrays = arrays_of(h2)
    assert structure_problems(arrays) == {}
    assert 0 in structure_problems(arrays, min_distance=0.8)


def test_unknown_elements():
    arrays = arrays_of(molecule("NH3"), molecule("H2O"))
    arrays.atomic_numbers[5] = 0  # atom 1 of water
    problems = structure_problems(arrays)
    assert "atom 1 has atomic number 0" in problems[1]
    arrays.atomic_numbers[5] = 130
    assert "atomic number 130" in structure_problems(arrays)[1]
    # method limits: GFN2-xTB ends at Rn (86)
    arrays.atomic_numbers[5] = 93  # Np: 8 + 93 + 1 electrons, even
    assert structure_problems(arrays) == {}
    assert "Z <= 86" in structure_problems(arrays, max_z=86)[1]


def test_non_finite_positions():
    arrays = arrays_of(molecule("NH3"))
    arrays.positions[3, 1] = np.nan
    assert "non-finite" in structure_problems(arrays)[0]


def test_many_problems_reported_together_and_per_conformation_charge():
    good, bad = molecule("NH3"), molecule("NH3")
    bad.positions[1] = bad.positions[0]
    arrays = arrays_of(*([good] * 3 + [bad] * 12))
    with pytest.raises(ValueError, match="12 invalid structure\\(s\\) \\(and 2 more\\)"):
        validate_structures(arrays)
    # per-conformation charges from the arrays when charge=None
    arrays = arrays_of(good, good)
    arrays.charge = np.array([0.0, 1.0])
    assert list(structure_problems(arrays, charge=None, multiplicity=1)) == [1]
    with pytest.raises(ValueError, match="no structures"):
        validate_structures(arrays.select([]))
