"""get_builder_from_protocol of the sample, train and characterize stages (one protocol file for all)."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from ase.build import molecule

from aiida_mlpes.calculations.characterize import CharacterizeCalculation
from aiida_mlpes.calculations.sample import SampleCalculation
from aiida_mlpes.calculations.train import TrainCalculation
from aiida_mlpes.core.models import ModelConfig, build_model
from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.data.model import PESModel
from aiida_mlpes.workflows.construct_pes import ConstructPESWorkChain


@pytest.fixture
def code(aiida_code_installed):
    return aiida_code_installed(filepath_executable="/bin/true", default_calc_job_plugin="mlpes.train")


def dataset():
    arrays = RaggedArrays.from_atoms([molecule("H2CO")] * 4)
    arrays.energy = np.zeros(4)
    arrays.forces = np.zeros((len(arrays.positions), 3))
    return PESDataset.from_arrays(arrays, level_of_theory="GFN2-xTB")


def validates(builder) -> bool:
    return builder.process_class.spec().inputs.validate(dict(builder._inputs(prune=True))) is None


@pytest.mark.parametrize("protocol", ["fast", "moderate", "precise"])
def test_each_stage_builds_from_each_protocol(code, protocol):
    structure = orm.StructureData(ase=molecule("H2CO"))
    sample = SampleCalculation.get_builder_from_protocol(code, structure, protocol)
    train = TrainCalculation.get_builder_from_protocol(code, dataset(), protocol, committee_size=3)
    model = PESModel.from_model(
        build_model(ModelConfig(elements=[1, 6, 8], n_features=8, n_rbf=8, n_blocks=1))
    )
    characterize = CharacterizeCalculation.get_builder_from_protocol(code, model, structure, protocol)
    for builder in (sample, train, characterize):
        assert validates(builder), builder.process_class
    # the stages read the same values the refinement loop uses
    loop = ConstructPESWorkChain.get_protocol_inputs(protocol)
    assert sample.settings["parameters"] == loop["sample"]["parameters"]
    assert train.settings["training"] == loop["train"]["training"]
    assert train.settings["committee_size"] == 3
    assert characterize.tasks["dmc"] == loop["characterize"]["tasks"]["dmc"]


def test_stage_overrides_are_merged_and_unknown_keys_named(code):
    train = TrainCalculation.get_builder_from_protocol(
        code, dataset(), "fast", overrides={"training": {"max_epochs": 7}}
    )
    assert train.settings["training"]["max_epochs"] == 7
    assert (
        train.settings["training"]["batch_size"]
        == ConstructPESWorkChain.get_protocol_inputs("fast")["train"]["training"]["batch_size"]
    )
    with pytest.raises(ValueError, match=r"overrides.train: unknown keys \['epochs'\]"):
        TrainCalculation.get_builder_from_protocol(code, dataset(), overrides={"epochs": 7})
    with pytest.raises(ValueError, match="protocol 'slow' unknown"):
        SampleCalculation.get_builder_from_protocol(code, orm.StructureData(ase=molecule("H2O")), "slow")
    with pytest.raises(ValueError, match=r"characterize: unknown task\(s\) \['hessian'\]"):
        CharacterizeCalculation.get_builder_from_protocol(
            code, None, orm.StructureData(ase=molecule("H2O")), overrides={"tasks": {"hessian": {}}}
        )


def test_a_ts_adds_its_tasks(code):
    model = PESModel.from_model(build_model(ModelConfig(elements=[1, 7], n_features=8, n_rbf=8, n_blocks=1)))
    nh3 = orm.StructureData(ase=molecule("NH3"))
    builder = CharacterizeCalculation.get_builder_from_protocol(code, model, nh3, "fast", ts_structure=nh3)
    assert {"optimize_ts", "mep"} <= set(builder.tasks.get_dict())
