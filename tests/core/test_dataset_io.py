"""Import/export of extxyz, ASE db and npz (ours and Asparagus-style) with unit conversion."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units

from aiida_mlpes.core.dataset import DatasetError, read_arrays, write_dataset
from aiida_mlpes.core.dataset_io import export_file, import_file
from aiida_mlpes.core.units import BOHR, HARTREE, KCAL_PER_MOL, energy_factor, length_factor
from tests.core.test_dataset import assert_same


@pytest.mark.parametrize("ext", ["db", "npz"])
def test_lossless_formats_round_trip_bit_for_bit(tmp_path, arrays, ext):
    path = export_file(arrays, tmp_path / f"x.{ext}")
    assert_same(import_file(path), arrays)


def test_extxyz_round_trip(tmp_path, arrays):
    first = export_file(arrays, tmp_path / "a.xyz")
    back = import_file(first)
    # per-atom columns keep 8 decimals (ASE's format); energies, dipoles and charges keep every bit
    np.testing.assert_allclose(back.positions, arrays.positions, rtol=0, atol=5.1e-9)
    np.testing.assert_allclose(back.forces, arrays.forces, rtol=0, atol=5.1e-9)
    np.testing.assert_array_equal(back.energy, arrays.energy)
    np.testing.assert_array_equal(back.dipole, arrays.dipole)
    # a file that went through the dataset comes back byte for byte
    h5 = write_dataset(tmp_path / "a.h5", back)
    second = export_file(read_arrays(h5), tmp_path / "b.xyz")
    assert first.read_text() == second.read_text().replace(" source=import:a.xyz", "")


def test_hdf5_to_every_format_and_back(tmp_path, arrays):
    h5 = write_dataset(tmp_path / "d.h5", arrays)
    for ext in ("db", "npz"):
        assert_same(import_file(export_file(read_arrays(h5), tmp_path / f"d.{ext}")), arrays)


def test_asparagus_npz_import(realdata):
    path = realdata / "datasets" / "h2co_B3LYP_cc-pVDZ_4001.npz"
    arrays = import_file(path)
    assert len(arrays) == 4001
    assert list(arrays.atomic_numbers[:4]) == [6, 8, 1, 1]
    assert arrays.energy[0] == pytest.approx(-15.756286804786159, abs=1e-12)
    np.testing.assert_allclose(arrays.forces[0], [1.63676964, -0.53233379, -2.81510878], atol=1e-8)
    np.testing.assert_allclose(arrays.positions[0], [0.16700538, -0.38996825, -0.2807415], atol=1e-8)
    np.testing.assert_allclose(arrays.dipole[0], [0.05242542, -0.1272109, -0.0797301], atol=1e-8)
    assert arrays.source[0] == "import:h2co_B3LYP_cc-pVDZ_4001.npz"


def test_padded_npz_with_different_sizes_and_units(tmp_path):
    r = np.zeros((2, 4, 3))
    r[0, :3] = [[0, 0, 0], [0, 0, 1.8], [1.7, 0, -0.5]]
    r[1] = [[0, 0, 0], [0, 0, 1.9], [1.8, 0, -0.6], [-1.0, 1.5, -0.6]]
    z = np.array([[8, 1, 1, 0], [7, 1, 1, 1]])
    f = np.ones((2, 4, 3))
    np.savez(tmp_path / "p.npz", R=r, Z=z, N=[3, 4], E=[-76.0, -56.0], F=f)
    arrays = import_file(tmp_path / "p.npz", energy_unit="Hartree", length_unit="Bohr")
    assert list(arrays.n_atoms) == [3, 4] and list(arrays.atomic_numbers) == [8, 1, 1, 7, 1, 1, 1]
    np.testing.assert_allclose(arrays.positions[1], [0, 0, 1.8 * units.Bohr])
    np.testing.assert_allclose(arrays.energy, np.array([-76.0, -56.0]) * units.Hartree)
    np.testing.assert_allclose(arrays.forces, units.Hartree / units.Bohr)


def test_md17_xyz_in_kcal_per_mol(realdata):
    # MD17 style: energy on the comment line, forces as extra columns (kcal/mol, kcal/mol/Angstrom)
    path = realdata / "datasets" / "ethanol_snip_md17_schnetpack.xyz"
    arrays = import_file(path, fmt="md17", energy_unit="kcal/mol")
    assert list(arrays.n_atoms) == [9, 9, 9]
    np.testing.assert_allclose(
        arrays.energy / KCAL_PER_MOL, [-97208.40600498248, -97208.37630463531, -97208.041987903]
    )
    np.testing.assert_allclose(arrays.positions[0], [0.0072, -0.5687, 0.0])
    np.testing.assert_allclose(
        arrays.forces[0] / KCAL_PER_MOL, [1.4517297437249999, 6.01923561735, 5.2067503058e-07]
    )


def test_plain_xyz_geometry(realdata):
    arrays = import_file(realdata / "geometries" / "nh3_c3v_asparagus.xyz")
    assert list(arrays.atomic_numbers) == [7, 1, 1, 1]
    assert arrays.energy[0] == pytest.approx(-120.44423512318978)  # GFN2-xTB minimum, eV


def test_unit_constants():
    assert pytest.approx(27.211386, rel=1e-7) == HARTREE
    assert pytest.approx(0.52917721, rel=1e-7) == BOHR
    assert pytest.approx(0.0433641, rel=1e-5) == KCAL_PER_MOL
    assert energy_factor("kJ/mol") == pytest.approx(0.01036427, rel=1e-6)
    assert length_factor("nm") == 10.0
    with pytest.raises(ValueError, match="Unknown energy unit 'furlong'"):
        energy_factor("furlong")


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        ("3\n\nO 0 0 0\nH 0 0\n", "bad.xyz", "bad.xyz: cannot read as extxyz"),
        ("1\n\nXx 0 0 0\n", "unknown.xyz", "unknown.xyz"),
        ("", "empty.xyz", "empty.xyz"),
    ],
)
def test_malformed_files_name_the_file(tmp_path, content, name, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DatasetError, match=message):
        import_file(tmp_path / name)


def test_npz_bad_shapes_and_missing_keys(tmp_path):
    np.savez(tmp_path / "a.npz", R=np.zeros((2, 3, 3)), Z=np.ones((2, 4), int))
    with pytest.raises(DatasetError, match="field 'R' has shape"):
        import_file(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", energy=np.zeros(2))
    with pytest.raises(DatasetError, match=r"lacks the keys \['atomic_numbers', 'positions'\]"):
        import_file(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", R=np.zeros((1, 2, 3)), Z=[[1, 1]], E=[np.nan])
    with pytest.raises(DatasetError, match="'energy' of conformation 0 is NaN"):
        import_file(tmp_path / "c.npz")


def test_unknown_extension(tmp_path):
    (tmp_path / "x.csv").write_text("1")
    with pytest.raises(DatasetError, match="cannot tell the format"):
        import_file(tmp_path / "x.csv")
