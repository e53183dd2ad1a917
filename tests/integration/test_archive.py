"""Publication: an AiiDA archive of a finished labelling + training graph, imported into a fresh profile, keeps
every node and link, and its model gives bitwise the same energies; the dataset exports with its lineage."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.tools.archive import create_archive, import_archive
from ase.io import read

from aiida_mlpes.calculations.train import TrainCalculation
from aiida_mlpes.core.dataset_io import export_file
from aiida_mlpes.workflows.reference import ReferenceWorkChain
from tests.integration.conftest import JOB_ENV, molecules

pytestmark = pytest.mark.slow
TINY = {"n_features": 16, "n_rbf": 8, "n_blocks": 1, "cutoff": 4.0}


def _graph() -> tuple[set[str], set[tuple[str, str, str, str]]]:
    """Every node uuid and every link (source, target, type, label) of the loaded profile."""
    nodes = {uuid for (uuid,) in orm.QueryBuilder().append(orm.Node, project="uuid").iterall()}
    qb = orm.QueryBuilder()
    qb.append(orm.Node, tag="source", project="uuid")
    qb.append(orm.Node, with_incoming="source", edge_project=["type", "label"], project="uuid")
    links = {(s, t, kind, label) for s, t, kind, label in qb.iterall()}
    return nodes, links


def _energies(model: orm.Node, structures) -> np.ndarray:
    calculator = model.calculator()
    values = []
    for atoms in structures:
        atoms.calc = calculator
        values.append(atoms.get_potential_energy())
    return np.array(values)


def test_archive_round_trip_keeps_graph_and_model(
    aiida_config_tmp, aiida_profile_factory, require_xtb, tmp_path
):
    with aiida_profile_factory(aiida_config_tmp):
        computer = orm.Computer(
            label="local",
            hostname="localhost",
            transport_type="core.local",
            scheduler_type="core.direct",
            workdir=str(tmp_path / "work"),
        ).store()
        computer.configure(safe_interval=0.0)
        computer.set_minimum_job_poll_interval(0.0)
        xtb = orm.InstalledCode(
            label="xtb",
            computer=computer,
            filepath_executable=require_xtb,
            default_calc_job_plugin="mlpes.xtb",
        ).store()
        runner = orm.InstalledCode(
            label="aiida-mlpes-run",
            computer=computer,
            filepath_executable=shutil.which("aiida-mlpes-run") or "aiida-mlpes-run",
        ).store()
        labelled, reference = run_get_node(
            ReferenceWorkChain,
            code=xtb,
            structures=molecules(24, names=("H2O", "H2CO")),
            batch_size=orm.Int(12),
            options=orm.Dict({"environment_variables": JOB_ENV}),
        )
        assert reference.is_finished_ok, reference.exit_message
        settings = {"model": TINY, "training": {"batch_size": 4, "max_epochs": 3, "progress_bar": False}}
        trained, train = run_get_node(
            TrainCalculation,
            code=runner,
            dataset=labelled["dataset"],
            settings=orm.Dict(settings),
            threads=orm.Int(1),
        )
        assert train.is_finished_ok, train.exit_message
        nodes, links = _graph()
        probe_arrays = molecules(3, names=("H2CO", "H2O"), seed=7).get_arrays()
        probe = [probe_arrays.to_atoms(i) for i in range(len(probe_arrays))]
        before = _energies(trained["model"], probe)
        model_uuid = trained["model"].uuid
        archive = tmp_path / "publication.aiida"
        create_archive([reference, train], filename=archive)

        # the dataset with per-conformation lineage: extxyz (info 'source') and the HDF5 file itself
        dataset = labelled["dataset"]
        arrays = dataset.get_arrays()
        export_file(arrays, tmp_path / "dataset.extxyz", level_of_theory=dataset.level_of_theory)
        frames = read(tmp_path / "dataset.extxyz", index=":")
        jobs = {n.uuid for n in reference.called_descendants if isinstance(n, orm.CalcJobNode)}
        assert len(frames) == 24 and {f.info["source"] for f in frames} == jobs
        with dataset.as_path() as path, h5py.File(path) as handle:
            sources = {s.decode() if isinstance(s, bytes) else s for s in handle["source"][()]}
        assert sources == jobs

    with aiida_profile_factory(aiida_config_tmp):  # a fresh, empty profile
        import_archive(archive)
        imported_nodes, imported_links = _graph()
        assert imported_nodes == nodes  # node for node (the archive holds no other profile's nodes)
        assert imported_links == links
        model = orm.load_node(model_uuid)
        after = _energies(model, probe)
        assert np.array_equal(before, after)  # bitwise
