"""PESModel, TrainCalculation (mlpes.train) and ModelTestCalculation (mlpes.test): inputs, validation, parsing,
and end-to-end runs through the aiida-mlpes-run executable."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from aiida import orm
from aiida.common.folders import SandboxFolder
from aiida.common.links import LinkType
from aiida.engine import run_get_node
from aiida.orm import QueryBuilder

from aiida_mlpes.calculations.test import ModelTestCalculation
from aiida_mlpes.calculations.train import TrainCalculation
from aiida_mlpes.core.dataset import split_indices
from aiida_mlpes.core.models import ModelConfig, build_model
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.data.model import PESModel
from tests.core.test_training import morse_molecules

TINY = {"n_features": 16, "n_rbf": 8, "n_blocks": 1, "cutoff": 4.0}
FAST = {"batch_size": 8, "progress_bar": False, "device": "cpu", "threads": 1}


@pytest.fixture
def dataset() -> PESDataset:
    return PESDataset.from_arrays(morse_molecules([[7, 1, 1, 1]], 20), level_of_theory="morse").store()


@pytest.fixture
def tiny_model() -> PESModel:
    torch.manual_seed(0)
    model = build_model(ModelConfig(elements=[1, 7], **TINY))
    model.set_reference([-13.6, -1480.0], 0.5)
    return PESModel.from_model(model, metadata={"best_epoch": 3}).store()


@pytest.fixture
def runner_code(aiida_code_installed):
    executable = shutil.which("aiida-mlpes-run")
    assert executable, "aiida-mlpes-run is not on PATH: install the package (pip install -e .)"
    return aiida_code_installed(filepath_executable=executable, default_calc_job_plugin="mlpes.train")


def test_pes_model_node_attributes_load_and_query(tiny_model, tmp_path):
    loaded = orm.load_node(tiny_model.pk)
    assert isinstance(loaded, PESModel)
    assert loaded.architecture == "physnet" and loaded.elements == ["H", "N"]
    assert loaded.base.attributes.get("atomic_numbers") == [1, 7]
    assert loaded.base.attributes.get("element_energies") == pytest.approx([-13.6, -1480.0])
    assert loaded.base.attributes.get("n_parameters") > 0
    assert loaded.base.attributes.get("best_epoch") == 3
    assert set(loaded.versions) >= {"torch", "numpy", "ase", "aiida-mlpes"}
    assert loaded.model_config["n_features"] == 16
    model = loaded.load()
    assert model.config.elements == [1, 7] and not model.training
    assert float(model.energy_scale) == 0.5
    from ase.build import molecule

    atoms = molecule("NH3")
    atoms.calc = loaded.calculator()
    from aiida_mlpes.core.models import collate
    from aiida_mlpes.core.ragged import RaggedArrays

    expected = model(collate(RaggedArrays.from_atoms([atoms])), compute_forces=True)["energy"]
    assert atoms.get_potential_energy() == pytest.approx(float(expected[0]), abs=1e-5)
    query = QueryBuilder().append(
        PESModel, filters={"attributes.architecture": "physnet", "attributes.cutoff": 4.0}, project="uuid"
    )
    assert tiny_model.uuid in query.all(flat=True)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        PESModel(file=tmp_path / "bad.pt")


def _process(cls, **inputs):
    builder = cls.get_builder()
    options = inputs.pop("options", {})
    for key, value in inputs.items():
        builder[key] = value
    for key, value in options.items():
        builder.metadata.options[key] = value
    return cls(inputs=dict(builder._inputs(prune=True)))


def test_train_prepare_for_submission(runner_code, dataset, tiny_model):
    settings = orm.Dict({"model": TINY, "training": {"max_epochs": 3}, "split": {"seed": 2}})
    process = _process(
        TrainCalculation,
        code=runner_code,
        dataset=dataset,
        settings=settings,
        parent_model=tiny_model,
        options={"max_wallclock_seconds": 3600},
    )
    with SandboxFolder() as folder:
        calcinfo = process.prepare_for_submission(folder)
        task = json.loads(Path(folder.get_abs_path("input.json")).read_text())
    assert calcinfo.codes_info[0].cmdline_params == ["train", "input.json"]
    assert (dataset.uuid, dataset.filename, "dataset.h5") in calcinfo.local_copy_list
    assert (tiny_model.uuid, tiny_model.filename, "parent_model.pt") in calcinfo.local_copy_list
    assert task["parent_model"] == "parent_model.pt" and task["restart_checkpoint"] is None
    assert task["training"]["wall_time_limit"] == pytest.approx(0.9 * 3600 - 120)
    assert task["wall_time_is_budget"] is False  # stopping there is unfinished work: exit 400
    assert task["split"] == {"seed": 2}
    assert calcinfo.retrieve_temporary_list == ["model.pt"]


def test_train_inputs_are_validated(runner_code, dataset):
    no_forces = morse_molecules([[7, 1, 1, 1]], 4)
    no_forces.forces = None
    bare = PESDataset.from_arrays(no_forces, level_of_theory="morse").store()
    with pytest.raises(ValueError, match="no forces"):
        _process(TrainCalculation, code=runner_code, dataset=bare)
    with pytest.raises(ValueError, match="unknown keys"):
        _process(TrainCalculation, code=runner_code, dataset=dataset, settings=orm.Dict({"optimizer": {}}))
    with pytest.raises(ValueError, match="unknown training settings"):
        _process(
            TrainCalculation, code=runner_code, dataset=dataset, settings=orm.Dict({"training": {"lr": 1}})
        )
    with pytest.raises(ValueError, match=r"lacks elements \[7\]"):
        _process(
            TrainCalculation,
            code=runner_code,
            dataset=dataset,
            settings=orm.Dict({"model": {"elements": [1]}}),
        )


@pytest.mark.slow
def test_train_then_restart_then_test_end_to_end(runner_code, dataset):
    settings = {"model": TINY, "training": {**FAST, "max_epochs": 3}}
    results, node = run_get_node(
        TrainCalculation, code=runner_code, dataset=dataset, settings=orm.Dict(settings)
    )
    assert node.is_finished_ok, (
        node.exit_message,
        node.outputs.retrieved.base.repository.list_object_names(),
    )
    assert isinstance(results["model"], PESModel)
    assert results["result"]["epochs"] == 3 and results["result"]["complete"]
    assert set(results["metrics"].get_dict()) == {"valid", "test"}
    curve = results["learning_curve"].get_content()
    assert curve.splitlines()[0].startswith("epoch,lr")
    assert "model.pt" not in node.outputs.retrieved.base.repository.list_object_names()

    settings["training"]["max_epochs"] = 5
    results2, node2 = run_get_node(
        TrainCalculation,
        code=runner_code,
        dataset=dataset,
        settings=orm.Dict(settings),
        restart_folder=node.outputs.remote_folder,
    )
    assert node2.is_finished_ok, node2.exit_message
    assert results2["result"]["epochs"] == 5
    assert len(results2["learning_curve"].get_content().splitlines()) == 1 + 5

    tested, node3 = run_get_node(
        ModelTestCalculation,
        code=runner_code,
        model=results2["model"],
        dataset=dataset,
        settings=orm.Dict({"subset": "test"}),
    )
    assert node3.is_finished_ok, node3.exit_message
    n_test = len(split_indices(dataset.get_arrays().hash)["test"])  # default split: 80/10/10, seed 0
    assert tested["metrics"]["energy"]["n"] == n_test
    assert {"correlation.png", "error_histogram.png", "error_vs_energy.png", "predictions.csv"} <= set(
        tested["plots"].base.repository.list_object_names()
    )
    with tested["predictions"].open(mode="rb") as handle:
        data = np.load(io.BytesIO(handle.read()))
        assert data["energy_pred"].shape == (n_test,)


def test_test_calculation_rejects_unknown_elements(runner_code, tiny_model):
    water = PESDataset.from_arrays(morse_molecules([[8, 1, 1]], 3), level_of_theory="morse").store()
    with pytest.raises(ValueError, match="not trained on"):
        _process(ModelTestCalculation, code=runner_code, model=tiny_model, dataset=water)


def test_users_wall_time_budget_is_a_normal_end(dataset, tmp_path):
    from aiida_mlpes.core.training_task import run_train_task

    with dataset.as_path() as path:
        shutil.copyfile(path, tmp_path / "dataset.h5")
    settings = {
        "dataset": "dataset.h5",
        "model": TINY,
        "training": {**FAST, "max_epochs": 10**6, "wall_time_limit": 0.3},
    }
    result = run_train_task({**settings, "wall_time_is_budget": True}, tmp_path)
    assert result["complete"] and result["stop_reason"] == "wall_time"


def test_train_parser_reports_incomplete_training(dataset, tmp_path, aiida_localhost):
    """A run stopped by its wall-time limit keeps its outputs and exits with 400 (restartable)."""
    from aiida.plugins import ParserFactory

    from aiida_mlpes.core.training_task import run_train_task

    workdir = tmp_path / "work"
    workdir.mkdir()
    with dataset.as_path() as path:
        shutil.copyfile(path, workdir / "dataset.h5")
    result = run_train_task(
        {
            "dataset": "dataset.h5",
            "model": TINY,
            "training": {**FAST, "max_epochs": 10**6, "wall_time_limit": 0.3},
        },
        workdir,
    )
    assert not result["complete"]
    (workdir / "result.json").write_text(json.dumps({"status": "ok", **result}))
    retrieved = orm.FolderData()
    for name in ("result.json", "learning_curve.csv"):
        retrieved.base.repository.put_object_from_file(str(workdir / name), name)
    temporary = tmp_path / "temporary"
    temporary.mkdir()
    shutil.copyfile(workdir / "model.pt", temporary / "model.pt")
    node = orm.CalcJobNode(computer=aiida_localhost)
    node.set_process_type("aiida.calculations:mlpes.train")
    node.set_option("resources", {"num_machines": 1})
    node.store()
    retrieved.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label="retrieved")
    retrieved.store()
    outputs, calcfunction = ParserFactory("mlpes.train").parse_from_node(
        node, store_provenance=False, retrieved_temporary_folder=str(temporary)
    )
    assert calcfunction.exit_status == 400
    assert "Resubmit with restart_folder" in calcfunction.exit_message
    assert isinstance(outputs["model"], PESModel) and outputs["result"]["stop_reason"] == "wall_time"


def test_committee_model_node_and_committee_size_setting(runner_code, dataset, tiny_model):
    from aiida_mlpes.core.models import Committee

    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(build_model(ModelConfig(elements=[1, 7], **TINY)))
    node = PESModel.from_model(Committee.from_members(members)).store()
    assert node.committee_size == 2 and tiny_model.committee_size == 1
    assert "committee of 2" in str(node)
    assert node.base.attributes.get("n_parameters") == 2 * tiny_model.base.attributes.get("n_parameters")
    assert isinstance(node.load(), Committee)

    settings = orm.Dict({"model": TINY, "committee_size": 4})
    process = _process(TrainCalculation, code=runner_code, dataset=dataset, settings=settings)
    with SandboxFolder() as folder:
        process.prepare_for_submission(folder)
        task = json.loads(Path(folder.get_abs_path("input.json")).read_text())
    assert task["committee_size"] == 4
    with pytest.raises(ValueError, match="committee_size must be an integer >= 1"):
        _process(
            TrainCalculation, code=runner_code, dataset=dataset, settings=orm.Dict({"committee_size": 0})
        )
    with pytest.raises(ValueError, match="zero spread"):
        _process(
            TrainCalculation,
            code=runner_code,
            dataset=dataset,
            settings=orm.Dict({"committee_size": 3}),
            parent_model=tiny_model,
        )
    with pytest.raises(ValueError, match="does not match the parent committee"):
        _process(
            TrainCalculation,
            code=runner_code,
            dataset=dataset,
            settings=orm.Dict({"committee_size": 3}),
            parent_model=node,
        )
    _process(
        TrainCalculation, code=runner_code, dataset=dataset, parent_model=node
    )  # member-wise fine-tuning


@pytest.mark.slow
def test_train_a_committee_end_to_end(runner_code):
    water_methane = morse_molecules([[8, 1, 1], [6, 1, 1, 1, 1]], 20, seed=4)
    dataset = PESDataset.from_arrays(water_methane, level_of_theory="morse").store()
    # splits come from keyed hashes: this one leaves two test conformations of these twenty
    split = {"fractions": [0.6, 0.2, 0.2], "seed": 0}
    settings = {"model": TINY, "training": {**FAST, "max_epochs": 2}, "committee_size": 2, "split": split}
    results, node = run_get_node(
        TrainCalculation, code=runner_code, dataset=dataset, settings=orm.Dict(settings)
    )
    assert node.is_finished_ok, node.exit_message
    assert results["model"].committee_size == 2
    committee = results["result"]["committee"]
    assert committee["size"] == 2 and committee["test"]["energy_std_mean"] > 0
    tested, node2 = run_get_node(
        ModelTestCalculation, code=runner_code, model=results["model"], dataset=dataset
    )
    assert node2.is_finished_ok, node2.exit_message
    assert tested["metrics"]["energy"]["n"] == 20


def _killed_train_node(aiida_localhost, files: dict[str, Path], exit_status: int | None) -> orm.CalcJobNode:
    """A stored mlpes.train CalcJobNode with a remote folder and a retrieved folder of ``files`` (no
    result.json: the task never finished), exit status as the scheduler's parser left it."""
    node = orm.CalcJobNode(computer=aiida_localhost)
    node.set_process_type("aiida.calculations:mlpes.train")
    node.set_option("resources", {"num_machines": 1})
    node.store()
    if exit_status is not None:
        node.set_exit_status(exit_status)
    retrieved = orm.FolderData()
    for name, path in files.items():
        retrieved.base.repository.put_object_from_file(str(path), name)
    retrieved.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label="retrieved")
    retrieved.store()
    remote = orm.RemoteData(computer=aiida_localhost, remote_path=str(next(iter(files.values())).parent))
    remote.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label="remote_folder")
    remote.store()
    return node


def test_walltime_kill_by_the_scheduler_is_exit_120_naming_the_checkpoint_epoch(
    dataset, tmp_path, aiida_localhost
):
    """SLURM killed the task (the scheduler's parser set 120): the parser keeps 120, not 300 (a crash), and
    reports the checkpoint's epoch, which ``checkpoint_epoch`` reads from the retrieved checkpoint.json."""
    from aiida.plugins import ParserFactory

    from aiida_mlpes.calculations.train import checkpoint_epoch
    from aiida_mlpes.core.training_task import run_train_task

    workdir = tmp_path / "work"
    workdir.mkdir()
    with dataset.as_path() as path:
        shutil.copyfile(path, workdir / "dataset.h5")
    training = {**FAST, "max_epochs": 5, "checkpoint_interval": 2, "checkpoint_min_seconds": 0}
    run_train_task({"dataset": "dataset.h5", "model": TINY, "training": training}, workdir)
    info = json.loads((workdir / "checkpoint.json").read_text())
    saved = torch.load(workdir / "checkpoint.pt", weights_only=True)
    assert info["epoch"] == saved["state"]["epoch"] == 5

    parse = ParserFactory("mlpes.train")
    killed = _killed_train_node(
        aiida_localhost,
        {
            "checkpoint.json": workdir / "checkpoint.json",
            "learning_curve.csv": workdir / "learning_curve.csv",
        },
        exit_status=120,
    )
    assert checkpoint_epoch(killed) == 5
    _, calcfunction = parse.parse_from_node(killed, store_provenance=False)
    assert (
        calcfunction.exit_status == TrainCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME.status == 120
    )
    logs = " ".join(log.message for log in orm.Log.collection.get_logs_for(killed))
    assert "checkpoint of epoch 5" in logs and "restart_folder" in logs

    early = _killed_train_node(
        aiida_localhost, {"learning_curve.csv": workdir / "learning_curve.csv"}, exit_status=120
    )
    assert checkpoint_epoch(early) is None
    _, calcfunction = parse.parse_from_node(early, store_provenance=False)
    assert calcfunction.exit_status == 120
    assert "before its first checkpoint" in " ".join(
        log.message for log in orm.Log.collection.get_logs_for(early)
    )
    # no walltime from the scheduler: a task that died without result.json is a crash (300)
    crashed = _killed_train_node(
        aiida_localhost, {"checkpoint.json": workdir / "checkpoint.json"}, exit_status=None
    )
    _, calcfunction = parse.parse_from_node(crashed, store_provenance=False)
    assert calcfunction.exit_status == TrainCalculation.exit_codes.ERROR_NO_RESULT.status
