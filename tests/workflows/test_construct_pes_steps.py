"""ConstructPESWorkChain step by step: finished child nodes with chosen outputs are put in the context, each
step method is called alone, and every exit path is checked to emit what exists (model, dataset, history)."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ProcessState
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from ase.build import molecule

from aiida_mlpes.core.models import ModelConfig, build_model
from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.data.model import PESModel
from aiida_mlpes.workflows import construct_pes_functions as functions
from aiida_mlpes.workflows.construct_pes import ConstructPESWorkChain


def labelled(n=12, seed=0, name="NH3"):
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        atoms = molecule(name)
        atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
        images.append(atoms)
    arrays = RaggedArrays.from_atoms(images)
    arrays.energy = rng.normal(size=n) - 100.0
    arrays.forces = rng.normal(size=(len(arrays.positions), 3))
    return PESDataset.from_arrays(arrays, level_of_theory="GFN2-xTB").store()


def finished(process_type: str, exit_status: int = 0, **outputs: orm.Data) -> orm.CalcJobNode:
    """A sealed, finished CalcJobNode with ``outputs`` attached (a stand-in for a child that really ran)."""
    node = orm.CalcJobNode(process_type=process_type)
    node.store()
    for label, data in outputs.items():
        data.base.links.add_incoming(node, LinkType.CREATE, label)
        data.store()
    node.set_process_state(ProcessState.FINISHED)
    node.set_exit_status(exit_status)
    node.seal()
    return node


@pytest.fixture
def workchain(aiida_code_installed):
    def factory(**inputs):
        runner = aiida_code_installed(filepath_executable="/bin/true", default_calc_job_plugin="mlpes.train")
        xtb = aiida_code_installed(filepath_executable="/bin/true", default_calc_job_plugin="mlpes.xtb")
        builder = {
            "structure": orm.StructureData(ase=molecule("NH3")),
            "initial_dataset": labelled(),
            "settings": orm.Dict({"max_iterations": 3}),
            "reference": {"code": xtb, "parameters": orm.Dict({"method": "GFN2-xTB"})},
            "train": {"code": runner, "settings": orm.Dict({"training": {"max_epochs": 5}})},
            "characterize": {"code": runner, "tasks": orm.Dict({"dmc": {"nwalkers": 10}})},
            **inputs,
        }
        process = instantiate_process(get_manager().get_runner(), ConstructPESWorkChain, **builder)
        process.setup()
        return process

    return factory


def a_model() -> PESModel:
    return PESModel.from_model(
        build_model(ModelConfig(elements=[1, 7], n_features=8, n_rbf=8, n_blocks=1))
    ).store()


def outputs(process) -> set[str]:
    return set(process.outputs)


def test_sampling_failure_keeps_the_initial_dataset(workchain):
    process = workchain()
    process.ctx.sample = finished("aiida.calculations:mlpes.sample", 300)
    exit_code = process.inspect_sampling()
    assert exit_code.status == 401
    assert outputs(process) == {"dataset", "history", "convergence_plot"}
    assert process.outputs["history"]["iterations"] == []


def test_a_failed_transition_state_sampling_is_reported_and_the_loop_goes_on(workchain):
    process = workchain()
    samples = labelled(4)
    process.ctx.sample = finished("aiida.calculations:mlpes.sample", 0, dataset=samples)
    process.ctx.sample_ts = finished("aiida.calculations:mlpes.sample", 300)
    assert process.inspect_sampling() is None
    assert list(process.ctx.samples) == ["sample"] and process.ctx.samples["sample"].uuid == samples.uuid


def test_training_failure_in_a_later_iteration_emits_the_last_model_and_the_history(workchain):
    process = workchain()
    model = a_model()
    process.ctx.model = model
    process.ctx.iteration = 2
    process.ctx.records = {"iteration_1": _record(1)}
    process.ctx.training = finished("aiida.calculations:mlpes.train", 310)
    exit_code = process.inspect_training()
    assert exit_code.status == 403
    assert outputs(process) == {"model", "dataset", "history", "convergence_plot"}
    assert process.outputs["model"].uuid == model.uuid


def test_a_training_stopped_by_walltime_still_gives_its_model(workchain):
    process = workchain()
    model = a_model()
    process.ctx.training = finished("aiida.calculations:mlpes.train", 400, model=model)
    assert process.inspect_training() is None
    assert process.ctx.model.uuid == model.uuid


def test_characterization_failure_emits_what_exists(workchain):
    process = workchain()
    process.ctx.model = a_model()
    process.ctx.characterization = finished("aiida.calculations:mlpes.characterize", 310)
    exit_code = process.inspect_characterization()
    assert exit_code.status == 404
    assert {"model", "dataset"} <= outputs(process)


def test_labelling_failures_of_one_kind_do_not_stop_the_loop(workchain):
    process = workchain()
    ok = labelled(5, seed=3)
    process.ctx.labels_validation = finished("aiida.workflows:mlpes.reference", 0, dataset=ok)
    process.ctx.labels_holes = finished("aiida.workflows:mlpes.reference", 401)
    assert process.inspect_labelling() is None
    assert set(process.ctx.new_labels) == {"validation"}


def test_a_worse_fine_tuned_committee_is_retrained_from_scratch(workchain):
    process = workchain()
    process.ctx.fine_tuned = True
    process.ctx.parent_test = {"energy": {"mae": 0.01}, "forces": {"mae": 0.1}}

    def worse():  # 2x the parent and above the 0.01 eV tolerance
        return orm.Dict({"energy": {"mae": 0.02}, "forces": {"mae": 0.1}})

    process.ctx.fixed_test = finished("aiida.calculations:mlpes.test", 0, metrics=worse())
    process.inspect_fixed_test()
    assert process.should_retrain_from_scratch()
    # worse, but still within the tolerance: kept
    process.ctx.parent_test = {"energy": {"mae": 0.001}, "forces": {"mae": 0.1}}
    process.ctx.fixed_test = finished(
        "aiida.calculations:mlpes.test", 0, metrics=orm.Dict({"energy": {"mae": 0.005}})
    )
    process.inspect_fixed_test()
    assert not process.should_retrain_from_scratch()
    process.ctx.parent_test = {"energy": {"mae": 0.01}, "forces": {"mae": 0.1}}
    process.ctx.fixed_test = finished("aiida.calculations:mlpes.test", 0, metrics=worse())
    process.inspect_fixed_test()
    assert process.should_retrain_from_scratch()
    # the retraining is done once: its result is kept even if it is no better
    process.ctx.fine_tuned = False
    process.inspect_fixed_test()
    assert not process.should_retrain_from_scratch()


def test_fine_tuning_lowers_the_learning_rate_and_epochs(workchain):
    process = workchain(
        settings=orm.Dict({"fine_tune_learning_rate_factor": 0.25, "fine_tune_epoch_factor": 0.5})
    )
    scratch = process._train_settings(fine_tune=False)
    tuned = process._train_settings(fine_tune=True)
    assert scratch["committee_size"] == tuned["committee_size"] == 4
    assert tuned["training"]["max_epochs"] == 3  # ceil(5 * 0.5)
    assert tuned["training"]["learning_rate"] == pytest.approx(0.25e-3)


def test_not_converged_emits_everything(workchain):
    process = workchain()
    process.ctx.model = a_model()
    process.ctx.iteration = 3
    process.ctx.records = {"iteration_1": _record(1), "iteration_2": _record(2)}
    process.ctx.failing = ["dmc"]
    exit_code = process.results()
    assert exit_code.status == 410
    assert "dmc" in exit_code.message
    assert outputs(process) == {"model", "dataset", "history", "convergence_plot"}
    history = process.outputs["history"]
    assert [r["iteration"] for r in history["iterations"]] == [1, 2]


def test_scores_of_new_labels_confirm_holes_and_find_lower_minima(tmp_path):
    path = tmp_path / "predictions.npz"
    np.savez(
        path,
        energy_ref=np.array([-10.0, -10.5, -9.0]),
        energy_pred=np.array([-10.001, -11.0, -9.5]),
        forces_ref=np.zeros((9, 3)),
        forces_pred=np.full((9, 3), 0.1),
    )
    score = functions.score_new_labels(
        orm.SinglefileData(path), orm.Str("holes"), orm.Float(0.02), orm.Float(-10.2)
    ).get_dict()
    assert score["n"] == 3
    assert score["confirmed"] == 2  # the model is 0.5 eV too low at structures 1 and 2
    assert score["discovered_minima"] == [1]  # structure 1 is also below the reference minimum
    assert score["forces_mae"] == pytest.approx(0.1)


def _record(k: int) -> orm.Dict:
    return orm.Dict(
        {
            "iteration": k,
            "criteria": {"dmc": {"passed": False}},
            "converged": False,
            "dmc": {"n_holes": 3, "zpe": 0.9, "zpe_error": 0.01},
        }
    ).store()


def test_initial_labelling_failure_keeps_the_initial_dataset(workchain):
    process = workchain()
    process.ctx.samples = {"sample": labelled(4), "sample_ts": labelled(4, seed=1)}
    process.ctx.initial_sample = finished("aiida.workflows:mlpes.reference", 402)
    process.ctx.initial_sample_ts = finished(
        "aiida.workflows:mlpes.reference", 0, dataset=labelled(4, seed=2)
    )
    assert process.add_initial().status == 402
    assert outputs(process) == {"dataset", "history", "convergence_plot"}
