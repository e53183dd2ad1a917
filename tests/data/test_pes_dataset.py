"""PESDataset node: storage, attributes for queries, merge provenance, CLI."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.orm import QueryBuilder
from click.testing import CliRunner

from aiida_mlpes.calculations.merge import merge_datasets
from aiida_mlpes.cli import cli
from aiida_mlpes.core.dataset import DatasetError, write_dataset
from aiida_mlpes.core.dataset_io import export_file
from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.data.dataset import PESDataset
from tests.conftest import make_arrays
from tests.core.test_dataset import assert_same


def test_store_and_query(arrays):
    node = PESDataset.from_arrays(arrays, level_of_theory="GFN2-xTB").store()
    loaded = orm.load_node(node.pk)
    assert isinstance(loaded, PESDataset)
    assert loaded.n_conformations == 5 and loaded.elements == ["H", "N", "O"]
    assert loaded.field_names == ["energy", "dipole", "charge", "forces", "atomic_charges"]
    assert loaded.base.attributes.get("energy_min") == pytest.approx(arrays.energy.min())
    assert_same(loaded.get_arrays(), arrays)
    with loaded.open_dataset() as dataset:
        assert dataset.level_of_theory == "GFN2-xTB" and len(dataset) == 5

    PESDataset.from_arrays(make_arrays(2, seed=9), level_of_theory="PBE/def2-SVP").store()
    query = QueryBuilder().append(
        PESDataset,
        filters={"attributes.level_of_theory": "GFN2-xTB", "attributes.n_conformations": {">": 3}},
        project="uuid",
    )
    assert node.uuid in query.all(flat=True)
    assert all(
        n >= 1 for n in QueryBuilder().append(PESDataset, project="attributes.n_conformations").all(flat=True)
    )


def test_empty_or_invalid_file_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="empty"):
        PESDataset.from_arrays(make_arrays(2).select([]))
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(DatasetError, match="not a readable HDF5"):
        PESDataset(file=tmp_path / "x.h5")


def test_merge_datasets_is_a_provenance_node():
    a = PESDataset.from_arrays(make_arrays(4, seed=1), "xtb").store()
    b_arrays = RaggedArrays.concatenate([make_arrays(3, seed=2), a.get_arrays().select([1])])
    b = PESDataset.from_arrays(b_arrays, "xtb").store()
    result, node = merge_datasets.run_get_node(first=a, second=b)
    merged = result["dataset"]
    assert merged.n_conformations == 7
    assert result["statistics"].get_dict() == {"read": 8, "written": 7, "duplicates": 1}
    assert merged.creator.pk == node.pk
    assert {link.node.pk for link in node.base.links.get_incoming().all()} == {a.pk, b.pk}
    sources = merged.get_arrays().source
    assert set(sources) == {""}  # synthetic data carry no source; real ones keep theirs through merges


def test_merge_datasets_refuses_mixed_levels():
    a = PESDataset.from_arrays(make_arrays(2, seed=1), "xtb").store()
    b = PESDataset.from_arrays(make_arrays(2, seed=2), "dft").store()
    with pytest.raises(DatasetError, match="different levels of theory"):
        merge_datasets(first=a, second=b)
    result = merge_datasets(first=a, second=b, allow_mixed_levels=orm.Bool(True))
    assert result["dataset"].level_of_theory == "dft + xtb"


def test_cli_import_show_export_merge(tmp_path, aiida_profile):
    arrays = make_arrays(6, seed=3)
    export_file(arrays, tmp_path / "in.npz")
    runner = CliRunner()
    profile = ["-p", aiida_profile.name]
    result = runner.invoke(
        cli, ["dataset", "import", str(tmp_path / "in.npz"), "--level-of-theory", "xtb", *profile]
    )
    assert result.exit_code == 0, result.output
    pk = result.output.split("PESDataset<")[1].split(">")[0]
    result = runner.invoke(cli, ["dataset", "show", pk, *profile])
    assert result.exit_code == 0 and "n_conformations" in result.output and "xtb" in result.output
    result = runner.invoke(cli, ["dataset", "export", pk, str(tmp_path / "out.xyz"), *profile])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.xyz").read_text().count("Properties=") == 6
    result = runner.invoke(cli, ["dataset", "export", pk, str(tmp_path / "out.h5"), *profile])
    assert result.exit_code == 0, result.output
    assert PESDataset(file=tmp_path / "out.h5").n_conformations == 6
    result = runner.invoke(cli, ["dataset", "merge", pk, pk, *profile])
    assert result.exit_code == 0, result.output
    assert "'duplicates': 6" in result.output
    result = runner.invoke(cli, ["dataset", "list", *profile])
    assert result.exit_code == 0 and pk in result.output


def test_cli_reports_bad_files_clearly(tmp_path, aiida_profile):
    np.savez(tmp_path / "bad.npz", R=np.zeros((1, 2, 3)), Z=[[1, 300]])
    result = CliRunner().invoke(
        cli, ["dataset", "import", str(tmp_path / "bad.npz"), "-p", aiida_profile.name]
    )
    assert result.exit_code != 0
    assert "unknown element with atomic number 300" in result.output


def test_write_dataset_source_survives_storage(tmp_path):
    arrays = make_arrays(2)
    arrays.source = np.array(["import:x.xyz", "1234-uuid"], dtype=object)
    node = PESDataset(file=write_dataset(tmp_path / "d.h5", arrays)).store()
    assert list(node.get_arrays().source) == ["import:x.xyz", "1234-uuid"]
