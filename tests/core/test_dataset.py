"""HDF5 dataset: schema, append, random access, split, merge with deduplication, bad input."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from aiida_mlpes.core.dataset import (
    Dataset,
    DatasetError,
    DatasetWriter,
    conformation_hashes,
    merge_files,
    read_arrays,
    split_indices,
    write_dataset,
)
from aiida_mlpes.core.ragged import RaggedArrays
from tests.conftest import make_arrays


def assert_same(a: RaggedArrays, b: RaggedArrays) -> None:
    for name in (
        "n_atoms",
        "atomic_numbers",
        "positions",
        "energy",
        "forces",
        "dipole",
        "charge",
        "atomic_charges",
    ):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype.kind == y.dtype.kind
            np.testing.assert_array_equal(x, y, err_msg=name)


def test_hdf5_round_trip_is_bit_exact(tmp_path, arrays):
    path = write_dataset(tmp_path / "d.h5", arrays, level_of_theory="GFN2-xTB")
    back = read_arrays(path)
    assert_same(arrays, back)
    with h5py.File(path) as f:
        assert f["positions"].dtype == np.float64 and f["energy"].dtype == np.float64
        assert f.attrs["level_of_theory"] == "GFN2-xTB"
        assert f.attrs["schema_version"] == 1
        assert "eV" in f.attrs["units"]
    assert list(back.hash) == list(conformation_hashes(arrays))


def test_random_access_and_iteration(tmp_path, arrays):
    path = write_dataset(tmp_path / "d.h5", arrays)
    ds = Dataset(path)
    assert len(ds) == 5
    atoms = ds[3]
    np.testing.assert_array_equal(atoms.positions, arrays.to_atoms(3).positions)
    assert atoms.get_potential_energy() == arrays.energy[3]
    np.testing.assert_array_equal(ds[-1].numbers, arrays.to_atoms(4).numbers)
    assert [a.get_chemical_formula() for a in ds] == ["H3N", "H2O", "H3N", "H2O", "H3N"]
    assert ds.elements == [1, 7, 8]
    with pytest.raises(IndexError):
        ds[5]


def test_append_in_several_calls_and_reopen(tmp_path):
    path = tmp_path / "d.h5"
    first, second = make_arrays(3, seed=1), make_arrays(4, seed=2)
    write_dataset(path, first, "xtb")
    with DatasetWriter(path, level_of_theory="xtb", mode="a") as writer:
        assert writer.append(second) == 7
    assert_same(read_arrays(path), RaggedArrays.concatenate([first, second]))


def test_failed_append_leaves_file_untouched(tmp_path, arrays):
    path = write_dataset(tmp_path / "d.h5", arrays)
    before = path.read_bytes()
    bad = make_arrays(2, seed=5)
    bad.forces[1, 0] = np.nan
    with (
        pytest.raises(DatasetError, match="'forces' of conformation 0 is NaN"),
        DatasetWriter(path, mode="a") as w,
    ):
        w.append(make_arrays(1, seed=3))
        w.append(bad, name="bad.xyz")
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*tmp"))


def test_appending_other_level_of_theory_is_refused(tmp_path, arrays):
    path = write_dataset(tmp_path / "d.h5", arrays, "GFN2-xTB")
    with pytest.raises(DatasetError, match="level of theory"), DatasetWriter(path, "PBE/def2-SVP", mode="a"):
        pass


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: setattr(a, "energy", a.energy[:-1]), r"'energy' has shape \(4,\), expected \(5,\)"),
        (
            lambda a: a.atomic_numbers.__setitem__(5, 0),
            "unknown element with atomic number 0 in conformation 1",
        ),
        (
            lambda a: a.atomic_numbers.__setitem__(0, 200),
            "unknown element with atomic number 200 in conformation 0",
        ),
        (
            lambda a: a.positions.__setitem__((8, 1), np.inf),
            "'positions' of conformation 2 is NaN or infinite",
        ),
        (lambda a: a.energy.__setitem__(4, np.nan), "'energy' of conformation 4 is NaN"),
        (lambda a: setattr(a, "dipole", np.zeros((5, 2))), r"'dipole' has shape \(5, 2\)"),
    ],
)
def test_bad_input_names_field_and_conformation(tmp_path, arrays, mutate, message):
    mutate(arrays)
    with pytest.raises(DatasetError, match=message):
        write_dataset(tmp_path / "d.h5", arrays)
    assert not (tmp_path / "d.h5").exists()


def test_empty_dataset_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="empty"):
        write_dataset(tmp_path / "d.h5", make_arrays(3).select([]))
    with pytest.raises(DatasetError, match="empty"):
        split_indices([])


def test_mismatched_fields_on_append(tmp_path, arrays):
    path = write_dataset(tmp_path / "d.h5", arrays)
    match = r"missing \['atomic_charges', 'charge', 'dipole'\]"
    with pytest.raises(DatasetError, match=match), DatasetWriter(path, mode="a") as w:
        w.append(make_arrays(2, with_optional=False))


def test_not_a_dataset(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="not a readable HDF5"):
        Dataset(tmp_path / "x.h5")
    with h5py.File(tmp_path / "y.h5", "w"):
        pass
    with pytest.raises(DatasetError, match="not an aiida-mlpes dataset"):
        Dataset(tmp_path / "y.h5")


def test_hash_ignores_noise_below_rounding_and_sees_real_changes(arrays):
    arrays.positions = np.round(arrays.positions, 3)  # away from the 1e-6 rounding boundaries
    h = conformation_hashes(arrays)
    assert len(set(h)) == 5
    shifted = arrays.select(range(5))
    shifted.positions = shifted.positions + 1e-9
    assert list(conformation_hashes(shifted)) == list(h)
    moved = arrays.select(range(5))
    moved.positions[0, 0] += 1e-4
    assert conformation_hashes(moved)[0] != h[0]
    assert list(conformation_hashes(moved)[1:]) == list(h[1:])


def test_split_is_reproducible_disjoint_and_keeps_duplicates_together():
    rng = np.random.default_rng(0)
    hashes = np.array([f"h{k}" for k in rng.integers(0, 400, size=1000)], dtype=object)
    split = split_indices(hashes, (0.8, 0.1, 0.1), seed=3)
    again = split_indices(hashes, (0.8, 0.1, 0.1), seed=3)
    other = split_indices(hashes, (0.8, 0.1, 0.1), seed=4)
    for name in split:
        np.testing.assert_array_equal(split[name], again[name])
    assert not np.array_equal(split["test"], other["test"])
    all_indices = np.concatenate(list(split.values()))
    assert sorted(all_indices) == list(range(1000))
    groups = [set(hashes[split[name]]) for name in ("train", "valid", "test")]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    # bytes (as read from HDF5) and str give the same split
    as_bytes = split_indices(np.array([h.encode() for h in hashes], dtype=object), (0.8, 0.1, 0.1), seed=3)
    for name in split:
        np.testing.assert_array_equal(split[name], as_bytes[name])


def test_split_of_a_growing_dataset_never_moves_a_conformation():
    old = [f"conf-{k}" for k in range(300)]
    new = old + [f"conf-{k}" for k in range(300, 2000)]
    first, grown = split_indices(old, seed=7), split_indices(new, seed=7)
    for name in first:
        np.testing.assert_array_equal(grown[name][grown[name] < 300], first[name])
    # shuffled order and duplicates do not matter either: the split follows the hash alone
    shuffled = np.random.default_rng(1).permutation(new + new[:50])
    again = split_indices(shuffled, seed=7)
    where = {h: name for name, idx in grown.items() for h in np.asarray(new)[idx]}
    assert all(where[h] == name for name, idx in again.items() for h in shuffled[idx])


def test_split_fractions_are_met_statistically():
    hashes = [f"x{k}" for k in range(20_000)]
    sizes = {k: len(v) for k, v in split_indices(hashes, (0.7, 0.2, 0.1), seed=0).items()}
    # binomial standard deviations: ~65, ~57, ~42
    assert abs(sizes["train"] - 14_000) < 300 and abs(sizes["valid"] - 4000) < 250
    assert abs(sizes["test"] - 2000) < 200
    assert len(split_indices(hashes[:100], (1.0, 0.0, 0.0))["train"]) == 100


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8])
def test_tiny_sets_still_train_and_validate(n):
    for seed in range(20):
        split = split_indices([f"s{k}" for k in range(n)], seed=seed)
        assert len(split["train"]) >= 1
        assert len(split["valid"]) >= (1 if n >= 2 else 0)
        assert sum(len(v) for v in split.values()) == n
        again = split_indices([f"s{k}" for k in range(n)], seed=seed)
        assert all(np.array_equal(split[k], again[k]) for k in split)
    # duplicates of a single conformation cannot be split
    assert len(split_indices(["a", "a", "a"])["train"]) == 3


def test_split_of_a_dataset_file(tmp_path):
    arrays = make_arrays(50)
    split = Dataset(write_dataset(tmp_path / "d.h5", arrays)).split(seed=0)
    assert sorted(np.concatenate(list(split.values()))) == list(range(50))
    assert all(len(split[k]) for k in ("train", "valid"))
    expected = split_indices(conformation_hashes(arrays), seed=0)
    assert all(np.array_equal(split[k], expected[k]) for k in split)
    with pytest.raises(ValueError, match="fractions"):
        split_indices(["a"], (0.5, 0.6, 0.1))


def test_merge_deduplicates_and_records_statistics(tmp_path):
    a, b = make_arrays(6, seed=1), make_arrays(4, seed=2)
    b_with_dup = RaggedArrays.concatenate([b, a.select([0, 2])])
    pa = write_dataset(tmp_path / "a.h5", a, "xtb")
    pb = write_dataset(tmp_path / "b.h5", b_with_dup, "xtb")
    stats = merge_files([pa, pb], tmp_path / "m.h5")
    assert stats == {"read": 12, "written": 10, "duplicates": 2}
    merged = read_arrays(tmp_path / "m.h5")
    assert_same(merged, RaggedArrays.concatenate([a, b]))
    assert Dataset(tmp_path / "m.h5").level_of_theory == "xtb"
    stats = merge_files([pa, pa], tmp_path / "n.h5", deduplicate=False)
    assert stats["written"] == 12


def test_merge_refuses_mixed_levels_unless_asked(tmp_path):
    pa = write_dataset(tmp_path / "a.h5", make_arrays(2, seed=1), "GFN2-xTB")
    pb = write_dataset(tmp_path / "b.h5", make_arrays(2, seed=2), "PBE/def2-SVP")
    with pytest.raises(DatasetError, match="different levels of theory"):
        merge_files([pa, pb], tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()
    merge_files([pa, pb], tmp_path / "m.h5", allow_mixed_levels=True)
    assert Dataset(tmp_path / "m.h5").level_of_theory == "GFN2-xTB + PBE/def2-SVP"


def test_merge_refuses_to_drop_fields_silently(tmp_path):
    pa = write_dataset(tmp_path / "a.h5", make_arrays(2, seed=1), "x")
    pb = write_dataset(tmp_path / "b.h5", make_arrays(2, seed=2, with_optional=False), "x")
    with pytest.raises(DatasetError, match="differ from the common fields"):
        merge_files([pa, pb], tmp_path / "m.h5")
    merge_files([pa, pb], tmp_path / "m.h5", allow_mixed_levels=True)
    assert Dataset(tmp_path / "m.h5").fields == ["energy", "forces"]


def test_dataset_pickles_without_handle(tmp_path, arrays):
    import pickle

    ds = Dataset(write_dataset(tmp_path / "d.h5", arrays))
    len(ds)
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone) == 5 and clone[0].get_potential_energy() == arrays.energy[0]
