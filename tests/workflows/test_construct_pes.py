"""ConstructPESWorkChain: protocols, input validation before anything runs, and the whole loop on NH3 (slow)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase import Atoms
from ase.build import molecule

from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.data.model import PESModel
from aiida_mlpes.workflows.construct_pes import ConstructPESWorkChain


@pytest.fixture
def codes(aiida_code_installed):
    runner = str(Path(shutil.which("aiida-mlpes-run")).resolve())
    xtb = shutil.which("xtb")
    assert xtb, "xtb is not installed (apt-get install xtb)"
    return {
        "runner": aiida_code_installed(filepath_executable=runner, default_calc_job_plugin="mlpes.train"),
        "reference": aiida_code_installed(filepath_executable=xtb, default_calc_job_plugin="mlpes.xtb"),
    }


def dataset(level="GFN2-xTB", forces=True, name="NH3"):
    arrays = RaggedArrays.from_atoms([molecule(name)] * 3)
    arrays.energy = np.zeros(3)
    if forces:
        arrays.forces = np.zeros((len(arrays.positions), 3))
    return PESDataset.from_arrays(arrays, level_of_theory=level)


@pytest.mark.parametrize("protocol", ["fast", "moderate", "precise"])
def test_every_protocol_builds_a_valid_builder(codes, protocol):
    builder = ConstructPESWorkChain.get_builder_from_protocol(
        codes, orm.StructureData(ase=molecule("H2O")), protocol=protocol
    )
    assert builder.settings["committee_size"] >= 2
    assert "dmc" in builder.characterize.tasks.get_dict()
    # validation before submission passes: the ports are complete and consistent
    assert ConstructPESWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True))) is None
    assert set(ConstructPESWorkChain.get_available_protocols()) == {"fast", "moderate", "precise"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"setings": {}}, r"overrides: unknown keys \['setings'\]"),
        (
            {"settings": {"committee_size": 1}},
            "settings.committee_size: Input should be greater than or equal to 2",
        ),
        ({"settings": {"tolerances": {"frequency_rmse": 0}}}, "settings.tolerances.frequency_rmse"),
        ({"train": {"training": {"max_epoch": 5}}}, r"unknown training settings \['max_epoch'\]"),
        ({"characterize": {"task": {}}}, r"overrides.characterize: unknown keys \['task'\]"),
    ],
)
def test_protocol_overrides_with_unknown_keys_or_bad_values_are_named(codes, overrides, message):
    with pytest.raises(ValueError, match=message):
        ConstructPESWorkChain.get_builder_from_protocol(
            codes, orm.StructureData(ase=molecule("NH3")), overrides=overrides
        )


def builder_for(codes, **changes):
    builder = ConstructPESWorkChain.get_builder_from_protocol(
        codes, orm.StructureData(ase=molecule("NH3")), protocol="fast"
    )
    for key, value in changes.items():
        builder[key] = value
    return builder


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"initial_dataset": lambda: dataset(level="PBE/def2-SVP")},
            "initial_dataset is at level of theory 'PBE/def2-SVP'",
        ),
        ({"initial_dataset": lambda: dataset(forces=False)}, r"initial_dataset lacks \['forces'\]"),
        ({"initial_dataset": lambda: dataset(name="H2O")}, r"initial_dataset holds no \['N'\] atoms"),
        ({"settings": lambda: orm.Dict({"committee_size": 1})}, "committee_size"),
        (
            {"settings": lambda: orm.Dict({"tolerances": {"energy_mae": -1.0}})},
            "settings.tolerances.energy_mae",
        ),
        ({"settings": lambda: orm.Dict({"hole_min_distance": 5.0})}, "settings.hole_min_distance"),
        (
            {
                "ts_structure": lambda: orm.StructureData(
                    ase=Atoms("NH2", positions=[(0, 0, 0), (1, 0, 0), (0, 1, 0)])
                )
            },
            "same atoms in the same order",
        ),
        ({"characterize": {"tasks": lambda: orm.Dict({"frequencies": {}})}}, "must include 'dmc'"),
        (
            {"characterize": {"tasks": lambda: orm.Dict({"dmc": {"walkers": 3}})}},
            r"unknown option\(s\) \['walkers'\]",
        ),
        ({"sample": {"settings": lambda: orm.Dict({"sampler": "teleport", "parameters": {}})}}, "sample: "),
        ({"train": {"settings": lambda: orm.Dict({"training": {"batch_size": -3}})}}, "train.settings"),
        (
            {"train": {"settings": lambda: orm.Dict({"committee_size": 2})}},
            "committee_size is set by the loop",
        ),
    ],
)
def test_bad_inputs_are_rejected_before_anything_runs(codes, change, message):
    builder = builder_for(codes)
    for key, value in change.items():
        if isinstance(value, dict):
            for sub, make in value.items():
                builder[key][sub] = make()
        else:
            builder[key] = value()
    before = orm.QueryBuilder().append(ConstructPESWorkChain).count()  # other tests of the session make some
    with pytest.raises(ValueError, match=message):
        run_get_node(builder)
    assert orm.QueryBuilder().append(ConstructPESWorkChain).count() == before


def test_needs_samples_or_a_dataset(codes):
    builder = builder_for(codes)
    builder.sample = {}
    with pytest.raises(ValueError, match="give `sample` inputs, an `initial_dataset`, or both"):
        run_get_node(builder)


#: A Morse H2 (eV, Angstrom; ASE's MorsePotential): a reference that labels in microseconds and that a small
#: network can learn exactly, so the test is about the loop, not about the quality of a fit.
MORSE_H2 = {"calculator": "morse", "epsilon": 4.7, "r0": 0.74, "rho0": 1.44}


def planted_hole_builder(runner, ase_code):
    """H2 whose first committee saw only a sliver of bond lengths (normal-mode samples at 20 K): where DMC walkers
    go it extrapolates, so the first DMC must flag holes; labelling them teaches the committee that region."""
    overrides = {
        "settings": {
            # iteration 1 finds the planted holes, iteration 2 none; a third is the margin (each takes ~80 s)
            "max_iterations": 3,
            "min_iterations": 1,
            "committee_size": 2,
            "n_candidates": 10,
            "max_holes_labelled": 30,
            "fine_tune_learning_rate_factor": 0.5,
            "fine_tune_epoch_factor": 1.0,
        },
        "sample": {
            "driver": {
                "name": "morse",
                "parameters": {k: v for k, v in MORSE_H2.items() if k != "calculator"},
            },
            "parameters": {
                "n_samples": 12,
                "temperature": 20.0,
                "optimize": True,
                "low_temperature_samples": 0,
            },
            "seed": 3,
        },
        "train": {
            "model": {"n_features": 16, "n_rbf": 16, "n_blocks": 1, "cutoff": 4.0, "predict_charges": False},
            "training": {"max_epochs": 300, "batch_size": 8, "threads": 1, "early_stopping_patience": None},
        },
        "characterize": {
            "tasks": {
                "optimize": {"fmax": 0.001},
                "frequencies": {},
                "dmc": {
                    "nwalkers": 300,
                    "nsteps": 400,
                    "eqsteps": 100,
                    "seed": 0,
                    "uncertainty_threshold": 0.05,
                },
                "explore": {"md_steps": 100},
            }
        },
    }
    builder = ConstructPESWorkChain.get_builder_from_protocol(
        {"reference": ase_code, "runner": runner},
        orm.StructureData(ase=Atoms("H2", positions=[(0, 0, 0), (0, 0, 0.74)])),
        protocol="fast",
        overrides=overrides,
    )
    builder.reference.parameters = orm.Dict(MORSE_H2)
    return builder


@pytest.mark.slow
def test_a_planted_hole_is_found_labelled_and_closed(codes, aiida_code_installed):
    runner = codes["runner"]
    ase_code = aiida_code_installed(
        filepath_executable=str(runner.filepath_executable), default_calc_job_plugin="mlpes.ase"
    )
    results, node = run_get_node(planted_hole_builder(runner, ase_code))
    assert node.exit_status in (0, 410), node.exit_message
    history = results["history"]["iterations"]
    assert history[0]["holes"]["found"] > 0 and history[0]["holes"]["labelled"] > 0
    assert any(record["holes"]["found"] == 0 for record in history[1:]), [r["holes"] for r in history]
    # the retraining fine-tuned the first committee, on data that hold the labelled holes
    trainings = [c for c in node.called if c.process_label == "TrainCalculation"]
    assert "parent_model" in trainings[1].inputs
    labelled_holes = (
        node.base.links.get_outgoing(link_label_filter="label_holes_1").one().node.outputs.dataset
    )
    hashes = set(trainings[1].inputs.dataset.get_arrays().hash)
    assert set(labelled_holes.get_arrays().hash) <= hashes
    # the final model's provenance reaches every reference calculation whose labels it trained on
    model = results["model"]
    ancestors = (
        orm.QueryBuilder()
        .append(PESModel, filters={"id": model.pk}, tag="model")
        .append(
            orm.CalcJobNode,
            with_descendants="model",
            filters={"attributes.process_label": "AseCalculation"},
            project="id",
        )
        .all(flat=True)
    )
    before = {
        n.pk
        for n in node.called_descendants
        if n.process_label == "AseCalculation" and n.ctime < trainings[-1].ctime
    }
    assert before and set(ancestors) == before
    assert history[-1]["model_uuid"] == model.uuid
