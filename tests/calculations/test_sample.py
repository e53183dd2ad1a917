"""SampleCalculation (mlpes.sample): inputs, validation before submission, and NH3 normal-mode sampling with
tblite through the engine and the real ``aiida-mlpes-run`` executable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from aiida.common.folders import SandboxFolder
from aiida.engine import run_get_node
from ase.build import molecule
from ase.io import read

from aiida_mlpes.calculations.sample import SampleCalculation


@pytest.fixture
def runner_code(aiida_code_installed):
    executable = shutil.which("aiida-mlpes-run")
    assert executable, "aiida-mlpes-run is not on PATH: install the package (pip install -e .)"
    return aiida_code_installed(
        filepath_executable=str(Path(executable).resolve()),
        default_calc_job_plugin="mlpes.sample",
        prepend_text="export OMP_NUM_THREADS=1",
    )


def _inputs(code, **changes):
    inputs = {
        "code": code,
        "structures": {"nh3": orm.StructureData(ase=molecule("NH3"))},
        "settings": orm.Dict(
            {
                "sampler": "normal_mode_sampling",
                "parameters": {"n_samples": 20, "temperature": 500.0, "frequency_range": [100, None]},
                "seed": 7,
                "label": True,
            }
        ),
        "driver": orm.Dict({"name": "tblite", "parameters": {"method": "GFN2-xTB"}}),
    }
    inputs.update(changes)
    return inputs


def test_prepare_for_submission_writes_settings_and_structures(runner_code):
    inputs = _inputs(
        runner_code,
        structures={"b": orm.StructureData(ase=molecule("H2O")), "a": orm.StructureData(ase=molecule("NH3"))},
    )
    process = SampleCalculation(inputs=inputs)
    with SandboxFolder() as folder:
        calcinfo = process.prepare_for_submission(folder)
        settings = json.loads(Path(folder.get_abs_path("input.json")).read_text())
        images = read(folder.get_abs_path("structures.xyz"), index=":")
    assert calcinfo.codes_info[0].cmdline_params == ["sample", "input.json"]
    assert sorted(calcinfo.retrieve_temporary_list) == ["samples.h5", "trajectory.npz"]
    assert (
        settings["sampler"] == "normal_mode_sampling" and settings["seed"] == 7 and settings["label"] is True
    )
    assert settings["driver"] == {"name": "tblite", "parameters": {"method": "GFN2-xTB"}}
    assert settings["source"] == process.node.uuid
    assert [a.get_chemical_formula() for a in images] == ["H3N", "H2O"]  # keys in sorted order


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"settings": {"sampler": "md", "parameters": {"temperature": -5.0}}}, "temperature must be >= 0"),
        ({"settings": {"sampler": "nms", "parameters": {}}}, "unknown sampler 'nms'"),
        ({"settings": {"sampler": "md", "parameters": {"temperature": 300}, "steps": 5}}, "unknown keys"),
        (
            {
                "settings": {
                    "sampler": "metadynamics",
                    "parameters": {"temperature": 300, "collective_variables": [[0, 4]]},
                }
            },
            "names atom 4, but system 0 has only 4 atoms",
        ),
        ({"driver": {"name": "mlpes"}}, "needs the `model` input"),
        ({"driver": {"name": "gauss"}}, "unknown driver 'gauss'"),
        ({"structures": {}}, "at least one structure"),
    ],
)
def test_bad_inputs_are_refused_before_submission(runner_code, changes, match):
    changes = {key: orm.Dict(value) if key != "structures" else value for key, value in changes.items()}
    with pytest.raises(ValueError, match=match):
        run_get_node(SampleCalculation, **_inputs(runner_code, **changes))


def test_nh3_normal_mode_sampling_with_tblite_through_the_engine(runner_code):
    results, node = run_get_node(SampleCalculation, **_inputs(runner_code))
    retrieved = node.outputs.retrieved.base.repository
    assert node.is_finished_ok, (
        node.exit_status,
        node.exit_message,
        retrieved.get_object_content("aiida.out"),
    )
    dataset = results["dataset"]
    assert dataset.n_conformations == 20 and dataset.level_of_theory == "GFN2-xTB"
    arrays = dataset.get_arrays()
    assert arrays.energy is not None and arrays.forces is not None
    assert set(arrays.source) == {node.uuid}
    trajectory = results["trajectory"]
    assert np.allclose(trajectory.get_array("energy"), arrays.energy)
    frequencies = trajectory.get_array("system0_frequencies")
    assert frequencies.shape == (6,) and frequencies.min() > 900  # NH3 umbrella ~1000-1100 cm^-1 with GFN2
    summary = results["summary"].get_dict()
    assert summary["n_samples"] == 20 and summary["info"]["seed"] == 7 and summary["labelled"]
    # 500 K: harmonic energy per displaced mode is 1.5 c kT; the sampled energies sit a few tenths of an eV up
    reference = summary["systems"][0]["reference_energy"]
    assert 0.0 < np.mean(arrays.energy - reference) < 0.6
    assert "samples.h5" not in retrieved.list_object_names()


def test_driver_failure_outputs_the_samples_collected_so_far(runner_code):
    """GFN2-xTB with at most 10 SCF cycles fails on a strongly displaced NH3 after a few samples."""
    settings = orm.Dict(
        {"sampler": "normal_mode_sampling", "parameters": {"n_samples": 30, "energy": 3.0}, "seed": 2}
    )
    driver = orm.Dict({"name": "tblite", "parameters": {"max_iterations": 10}})
    results, node = run_get_node(SampleCalculation, **_inputs(runner_code, settings=settings, driver=driver))
    assert node.exit_status == 410, node.exit_message
    assert "SCF not converged" in node.exit_message and "samples kept" in node.exit_message
    dataset = results["dataset"]
    assert 0 < dataset.n_conformations < 30
    assert dataset.get_arrays().energy is None  # label defaults to false: unlabelled
    assert len(results["trajectory"].get_array("energy")) == dataset.n_conformations


@pytest.fixture
def perturbed_model():
    """A tiny PhysNet for N and H with random (non-flat) weights, stored as a PESModel."""
    import torch

    from aiida_mlpes.core.models import ModelConfig, build_model
    from aiida_mlpes.data.model import PESModel

    torch.manual_seed(0)
    model = build_model(ModelConfig(elements=[1, 7], n_features=16, n_rbf=8, n_blocks=1, cutoff=4.0))
    model.set_reference([-13.6, -1480.0], 0.5)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return PESModel.from_model(model).store()


def test_ml_model_drives_the_sampler(runner_code, perturbed_model):
    settings = orm.Dict(
        {"sampler": "md", "parameters": {"temperature": 300.0, "steps": 20, "save_interval": 10}}
    )
    inputs = _inputs(
        runner_code, settings=settings, driver=orm.Dict({"name": "mlpes"}), model=perturbed_model
    )
    results, node = run_get_node(SampleCalculation, **inputs)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert results["dataset"].n_conformations == 2
    assert results["summary"]["level_of_theory"].startswith("mlpes:")
    water = {"h2o": orm.StructureData(ase=molecule("H2O"))}
    with pytest.raises(ValueError, match=r"elements \['O'\] that the model was not trained on"):
        run_get_node(SampleCalculation, **{**inputs, "structures": water})
