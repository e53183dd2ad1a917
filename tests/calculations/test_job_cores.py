"""``aiida-mlpes-run`` jobs use exactly the cores their resources give them: the CalcJob writes them into the
task input as ``threads``, the runner turns that into torch threads and ``OMP_NUM_THREADS`` for the programs
it starts; SLURM gets the same count as ``--cpus-per-task``."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from aiida import orm
from aiida.common.folders import SandboxFolder
from aiida.schedulers.datastructures import JobTemplate
from aiida.schedulers.plugins.slurm import SlurmScheduler

from aiida_mlpes.calculations.base import resources_cores
from aiida_mlpes.calculations.train import TrainCalculation
from aiida_mlpes.core.runner import run_task
from aiida_mlpes.data.dataset import PESDataset
from tests.core.test_training import morse_molecules


@pytest.mark.parametrize(
    ("resources", "cores"),
    [
        ({"num_machines": 1, "num_mpiprocs_per_machine": 1}, 1),
        ({"num_machines": 1, "num_mpiprocs_per_machine": 1, "num_cores_per_mpiproc": 8}, 8),
        ({"num_machines": 2, "num_mpiprocs_per_machine": 4, "num_cores_per_mpiproc": 2}, 8),  # per machine
        ({"num_machines": 1, "num_mpiprocs_per_machine": 2, "num_cores_per_machine": 6}, 6),
        ({"num_machines": 2, "tot_num_mpiprocs": 6}, 3),
        ({"tot_num_mpiprocs": 12, "parallel_env": "mpi"}, 12),  # SGE
    ],
)
def test_cores_of_resources(resources, cores):
    assert resources_cores(resources) == cores


def test_cores_fall_back_to_the_computers_default_mpiprocs(aiida_localhost):
    aiida_localhost.set_default_mpiprocs_per_machine(4)
    try:
        assert resources_cores({"num_machines": 1}, aiida_localhost) == 4
        assert resources_cores({"num_machines": 1, "num_cores_per_mpiproc": 2}, aiida_localhost) == 8
    finally:
        aiida_localhost.set_default_mpiprocs_per_machine(None)


@pytest.fixture
def train_inputs(aiida_code_installed):
    runner = shutil.which("aiida-mlpes-run") or str(Path(sys.executable).with_name("aiida-mlpes-run"))
    code = aiida_code_installed(filepath_executable=runner, default_calc_job_plugin="mlpes.train")
    dataset = PESDataset.from_arrays(morse_molecules([[6, 1, 1, 1, 1]], 4), level_of_theory="morse").store()
    return {"code": code, "dataset": dataset}


def _task_threads(inputs, resources, threads=None) -> int:
    builder = TrainCalculation.get_builder()
    builder.code, builder.dataset = inputs["code"], inputs["dataset"]
    builder.metadata.options.resources = resources
    if threads is not None:
        builder.threads = orm.Int(threads)
    process = TrainCalculation(inputs=dict(builder._inputs(prune=True)))
    with SandboxFolder() as folder:
        process.prepare_for_submission(folder)
        return json.loads(Path(folder.get_abs_path("input.json")).read_text())["threads"]


def test_the_task_input_carries_the_cores_of_the_resources(train_inputs):
    resources = {"num_machines": 1, "num_mpiprocs_per_machine": 1, "num_cores_per_mpiproc": 3}
    assert _task_threads(train_inputs, resources) == 3
    assert _task_threads(train_inputs, {"num_machines": 1, "num_mpiprocs_per_machine": 1}) == 1
    assert _task_threads(train_inputs, resources, threads=2) == 2  # an explicit `threads` wins
    # what SLURM is asked for by the same resources: SLURM_CPUS_PER_TASK=3 in the job
    template = JobTemplate()
    template.job_resource = SlurmScheduler.create_job_resource(**resources)
    template.codes_info, template.codes_run_mode = [], None
    script = SlurmScheduler()._get_submit_script_header(template)
    assert "#SBATCH --cpus-per-task=3" in script


def test_the_runner_gives_programs_it_starts_the_tasks_threads(tmp_path, monkeypatch):
    """threads: 3 in the task input -> OMP_NUM_THREADS=3 (and torch's 3 threads) for the task and the
    programs it runs, whatever the job's environment said."""
    import torch

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(name, "7")  # restored after the test (the runner sets them in this process)
    previous = torch.get_num_threads()
    env = shutil.which("env") or "/usr/bin/env"
    settings = {"threads": 3, "commands": [{"args": [env], "stdout": "env.out", "stderr": "env.err"}]}
    (tmp_path / "input.json").write_text(json.dumps(settings))
    try:
        result = run_task("run_commands", tmp_path / "input.json", tmp_path)
        assert result["status"] == "ok", result
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(previous)
    assert "OMP_NUM_THREADS=3" in (tmp_path / "env.out").read_text().splitlines()
    assert os.environ["OMP_NUM_THREADS"] == "3"


def test_ase_labelling_stays_single_threaded_unless_asked(aiida_code_installed):
    """mlpes.ase: reproducible labels need one thread, so its resources do not set threads; `threads` does."""
    from aiida_mlpes.calculations.ase import AseCalculation
    from tests.conftest import make_arrays

    code = aiida_code_installed(filepath_executable="/bin/true", default_calc_job_plugin="mlpes.ase")
    structures = PESDataset.from_arrays(make_arrays(2, labelled=False)).store()
    for threads, expected in ((None, None), (2, 2)):
        builder = AseCalculation.get_builder()
        builder.code, builder.structures = code, structures
        builder.parameters = orm.Dict({"calculator": "tblite", "method": "GFN2-xTB"})
        builder.metadata.options.resources = {"num_machines": 1, "num_mpiprocs_per_machine": 4}
        if threads is not None:
            builder.threads = orm.Int(threads)
        process = AseCalculation(inputs=dict(builder._inputs(prune=True)))
        with SandboxFolder() as folder:
            process.prepare_for_submission(folder)
            settings = json.loads(Path(folder.get_abs_path("input.json")).read_text())
        assert settings.get("threads") == expected
