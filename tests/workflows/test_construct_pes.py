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
    with pytest.raises(ValueError, match=message):
        run_get_node(builder)
    assert not orm.QueryBuilder().append(ConstructPESWorkChain).count()


def test_needs_samples_or_a_dataset(codes):
    builder = builder_for(codes)
    builder.sample = {}
    with pytest.raises(ValueError, match="give `sample` inputs, an `initial_dataset`, or both"):
        run_get_node(builder)
