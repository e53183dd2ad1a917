"""ConstructPESWorkChain: input validation before anything runs, and the whole loop on NH3 (slow)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.build import molecule

from aiida_mlpes.workflows.construct_pes import ConstructPESWorkChain


@pytest.fixture
def codes(aiida_code_installed):
    runner = str(Path(shutil.which("aiida-mlpes-run")).resolve())
    xtb = shutil.which("xtb")
    assert xtb, "xtb is not installed (apt-get install xtb)"
    return {
        "runner": aiida_code_installed(filepath_executable=runner, default_calc_job_plugin="mlpes.train"),
        "xtb": aiida_code_installed(filepath_executable=xtb, default_calc_job_plugin="mlpes.xtb"),
    }


def make_builder(codes, n_samples=40, dmc=None, **train):
    builder = ConstructPESWorkChain.get_builder()
    builder.structure = orm.StructureData(ase=molecule("NH3"))
    builder.max_iterations = 2
    builder.sample.code = codes["runner"]
    builder.sample.driver = orm.Dict({"name": "tblite", "parameters": {"method": "GFN2-xTB"}})
    builder.sample.settings = orm.Dict(
        {
            "sampler": "normal_mode_sampling",
            "parameters": {"n_samples": n_samples, "temperature": 800.0},
            "seed": 0,
        }
    )
    builder.reference.code = codes["xtb"]
    builder.reference.parameters = orm.Dict({"method": "GFN2-xTB"})
    builder.reference.batch_size = orm.Int(50)
    builder.train.code = codes["runner"]
    builder.train.settings = orm.Dict(
        {
            "model": {"n_features": 16, "n_rbf": 16, "n_blocks": 1, "cutoff": 5.0},
            "training": {"max_epochs": 30, "batch_size": 8, "progress_bar": False, "threads": 1, **train},
        }
    )
    builder.characterize.code = codes["runner"]
    builder.characterize.tasks = orm.Dict(
        {"frequencies": {}, "dmc": dmc or {"nwalkers": 200, "nsteps": 150, "eqsteps": 50, "seed": 0}}
    )
    return builder


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: setattr(b.characterize, "tasks", orm.Dict({"frequencies": {}})), "must include 'dmc'"),
        (
            lambda b: setattr(b.characterize, "tasks", orm.Dict({"dmc": {"walkers": 3}})),
            r"unknown option\(s\) \['walkers'\]",
        ),
        (lambda b: setattr(b, "max_iterations", orm.Int(0)), "max_iterations must be at least 1"),
        (
            lambda b: setattr(b.sample, "settings", orm.Dict({"sampler": "teleport", "parameters": {}})),
            "sample: ",
        ),
        (
            lambda b: setattr(b.train, "settings", orm.Dict({"training": {"batch_size": -3}})),
            "train.settings",
        ),
    ],
)
def test_bad_inputs_are_rejected_before_anything_runs(codes, change, message):
    builder = make_builder(codes)
    change(builder)
    with pytest.raises(ValueError, match=message):
        run_get_node(builder)
    assert not orm.QueryBuilder().append(ConstructPESWorkChain).count()


def test_needs_samples_or_a_dataset(codes):
    builder = make_builder(codes)
    builder.sample = {}
    with pytest.raises(ValueError, match="give `sample` inputs, an `initial_dataset`, or both"):
        run_get_node(builder)


@pytest.mark.slow
def test_loop_on_nh3_with_xtb(codes, tmp_path):
    # A deliberately tiny, short-trained model: DMC finds holes in iteration 1 that get labelled and merged.
    builder = make_builder(
        codes, n_samples=30, dmc={"nwalkers": 300, "nsteps": 200, "eqsteps": 50, "seed": 1}
    )
    results, node = run_get_node(builder)
    assert node.exit_status in (0, 410, 411), node.exit_message
    history = results["history"]["iterations"]
    assert [h["iteration"] for h in history] == list(range(1, len(history) + 1))
    assert history[0]["n_conformations"] == 30
    if history[0]["n_holes"] and node.exit_status != 411:
        assert len(history) == 2 and history[1]["n_conformations"] > 30
    dataset = results["dataset"]
    sources = set(dataset.get_arrays().source)
    jobs = {
        n.uuid
        for n in orm.QueryBuilder()
        .append(orm.CalcJobNode, filters={"attributes.process_label": "XtbCalculation"})
        .all(flat=True)
    }
    assert sources <= jobs, "every conformation must point at the xtb job that labelled it"
    # the whole provenance exports as an archive for publication
    labels = _export_and_check(node, tmp_path / "construct_pes.aiida")
    assert {"ConstructPESWorkChain", "SampleCalculation", "XtbCalculation", "TrainCalculation"} <= labels
    assert results["model"].creator.process_label == "TrainCalculation"


def _export_and_check(node, path):
    from aiida.tools.archive import create_archive
    from aiida.tools.archive.abstract import get_format

    create_archive([node], filename=path)
    with get_format().open(path, "r") as archive:
        querybuilder = archive.querybuilder()
        labels = set(querybuilder.append(orm.ProcessNode, project="attributes.process_label").all(flat=True))
    return labels
