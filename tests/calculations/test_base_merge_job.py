"""The aiida-mlpes-run CalcJob machinery, exercised by ``mlpes.merge`` with the real runner executable."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from aiida import orm
from aiida.common.folders import SandboxFolder
from aiida.engine import run_get_node
from aiida.plugins import CalculationFactory

from aiida_mlpes.data.dataset import PESDataset
from tests.conftest import make_arrays

MergeCalculation = CalculationFactory("mlpes.merge")


@pytest.fixture
def runner_code(aiida_code_installed):
    executable = shutil.which("aiida-mlpes-run")
    executable = executable and str(Path(executable).resolve())
    assert executable, "aiida-mlpes-run is not on PATH: install the package (pip install -e .)"
    return aiida_code_installed(filepath_executable=executable, default_calc_job_plugin="mlpes.merge")


def test_prepare_for_submission_writes_input_and_copies_files(runner_code):
    a = PESDataset.from_arrays(make_arrays(2, seed=1), "xtb").store()
    builder = MergeCalculation.get_builder()
    builder.code = runner_code
    builder.datasets = {"a": a}
    builder.threads = orm.Int(1)
    process = MergeCalculation(inputs=dict(builder._inputs(prune=True)))
    with SandboxFolder() as folder:
        calcinfo = process.prepare_for_submission(folder)
        settings = Path(folder.get_abs_path("input.json")).read_text()
    assert '"threads": 1' in settings and '"input_a.h5"' in settings
    assert calcinfo.codes_info[0].cmdline_params == ["merge", "input.json"]
    assert calcinfo.local_copy_list == [(a.uuid, a.filename, "input_a.h5")]
    assert calcinfo.retrieve_temporary_list == ["merged.h5"]


def test_merge_job_runs_end_to_end(runner_code):
    a = PESDataset.from_arrays(make_arrays(3, seed=1), "xtb").store()
    b = PESDataset.from_arrays(make_arrays(3, seed=1), "xtb").store()
    results, node = run_get_node(MergeCalculation, code=runner_code, datasets={"a": a, "b": b})
    retrieved = node.outputs.retrieved.base.repository
    assert node.is_finished_ok, (node.exit_message, retrieved.get_object_content("_scheduler-stderr.txt"))
    assert results["dataset"].n_conformations == 3
    assert results["statistics"]["duplicates"] == 3
    assert "merged.h5" not in node.outputs.retrieved.base.repository.list_object_names()


def test_task_error_is_reported_with_its_message(runner_code):
    a = PESDataset.from_arrays(make_arrays(2, seed=1), "xtb").store()
    b = PESDataset.from_arrays(make_arrays(2, seed=2, with_optional=False), "xtb").store()
    _, node = run_get_node(MergeCalculation, code=runner_code, datasets={"a": a, "b": b})
    assert node.exit_status == 301
    assert "differ from the common fields" in node.exit_message


def test_mixed_levels_are_rejected_before_submission(runner_code):
    a = PESDataset.from_arrays(make_arrays(2, seed=1), "xtb").store()
    b = PESDataset.from_arrays(make_arrays(2, seed=2), "dft").store()
    with pytest.raises(ValueError, match="different levels of theory"):
        run_get_node(MergeCalculation, code=runner_code, datasets={"a": a, "b": b})
