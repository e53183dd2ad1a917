"""Runner task ``sample``: settings validation, dataset and trajectory files, partial output on failure."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.io import write

from aiida_mlpes.core.dataset import Dataset, read_arrays
from aiida_mlpes.core.runner import TaskError
from aiida_mlpes.core.sampling import task
from aiida_mlpes.core.sampling.task import check_sample_settings, check_sampler_parameters, run_sample_task
from tests.core.test_sampling_models import Failing


def _settings(**overrides):
    settings = {
        "sampler": "normal_mode_sampling",
        "parameters": {"n_samples": 12, "temperature": 500.0, "frequency_range": [100, None]},
        "driver": {"name": "tblite", "parameters": {"method": "GFN2-xTB"}},
        "structures": "structures.xyz",
        "seed": 4,
    }
    settings.update(overrides)
    return settings


def test_nh3_normal_mode_sampling_writes_a_labelled_dataset(tmp_path, capsys):
    write(tmp_path / "structures.xyz", [molecule("NH3"), molecule("H2O")])
    settings = json.loads(json.dumps(_settings(label=True, source="uuid-of-node")))
    result = run_sample_task(settings, tmp_path)
    assert result["n_samples"] == 24 and not result["failed"] and result["labelled"]
    assert result["level_of_theory"] == "GFN2-xTB" and result["info"]["seed"] == 4
    assert (
        "normal_mode_sampling system 1: 12/12 samples" in capsys.readouterr().out
    )  # progress in the job output
    json.dumps(result)
    arrays = read_arrays(tmp_path / "samples.h5")
    assert len(arrays) == 24 and arrays.energy is not None and arrays.forces is not None
    assert set(arrays.source) == {"uuid-of-node"}
    with Dataset(tmp_path / "samples.h5") as ds:
        assert ds.level_of_theory == "GFN2-xTB"
    trajectory = np.load(tmp_path / "trajectory.npz")
    assert np.allclose(trajectory["energy"], arrays.energy)
    assert list(trajectory["sample_system"]) == [0] * 12 + [1] * 12
    assert trajectory["system0_frequencies"].shape == (6,) and trajectory["system1_frequencies"].shape == (3,)
    # same seed, same samples; unlabelled by default
    again = run_sample_task({**settings, "label": False, "samples_file": "unlabelled.h5"}, tmp_path)
    plain = read_arrays(tmp_path / "unlabelled.h5")
    assert again["labelled"] is False and plain.energy is None and plain.forces is None
    assert np.array_equal(plain.positions, arrays.positions)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"sampler": "langevin"}, "unknown sampler 'langevin'"),
        ({"parameters": {"n_samples": 5}}, "temperature"),
        (
            {"parameters": {"n_samples": 5, "temperature": 300, "nmax": 2}},
            r"unknown parameter\(s\) \['nmax'\]",
        ),
        ({"parameters": {"temperature": 300}}, r"missing required parameter\(s\) \['n_samples'\]"),
        ({"parameters": {"n_samples": 5, "temperature": -1}}, "temperature must be > 0"),
        ({"driver": {"name": "orca6"}}, "unknown driver 'orca6'"),
        ({"driver": "tblite"}, "driver must be a dict"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"verbose": True}, r"unknown setting\(s\) \['verbose'\]"),
    ],
)
def test_bad_settings_are_refused(change, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        check_sample_settings(_settings(**change))
    write(tmp_path / "structures.xyz", molecule("NH3"))
    with pytest.raises(TaskError, match=match):
        run_sample_task(_settings(**change), tmp_path)


def test_metadynamics_cv_atoms_are_checked_against_the_structures(tmp_path):
    params = {"temperature": 300, "collective_variables": [[0, 1], [0, 4]], "steps": 10}
    check_sampler_parameters("metadynamics", params)  # no structures: indices unchecked
    with pytest.raises(ValueError, match="names atom 4, but system 1 has only 3 atoms"):
        check_sampler_parameters("metadynamics", params, n_atoms=[5, 3])
    write(tmp_path / "structures.xyz", [molecule("CH4"), molecule("H2O")])
    with pytest.raises(TaskError, match="names atom 4, but system 1 has only 3 atoms"):
        run_sample_task(_settings(sampler="metadynamics", parameters=params), tmp_path)
    with pytest.raises(TaskError, match=r"structures file missing\.xyz not found"):
        run_sample_task(_settings(structures="missing.xyz"), tmp_path)


def test_driver_failure_writes_the_samples_collected_so_far(tmp_path, monkeypatch):
    write(tmp_path / "structures.xyz", molecule("NH3"))
    monkeypatch.setattr(task, "make_driver", lambda name, **p: Failing(EMT(), fail_at=36))
    settings = _settings(
        sampler="md",
        parameters={"temperature": 300.0, "steps": 100, "save_interval": 5},
        driver={"name": "emt"},
        label=True,
    )
    with pytest.raises(TaskError, match=r"at step 35: .*6 samples kept \(written to samples.h5\)"):
        run_sample_task(settings, tmp_path)
    partial = read_arrays(tmp_path / "samples.h5")
    assert len(partial) == 6 and partial.energy is not None
    assert len(np.load(tmp_path / "trajectory.npz")["energy"]) == 34
