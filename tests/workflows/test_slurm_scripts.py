"""workflows/orca_slurm.py and workflows/gaussian_slurm.py: the builders they make are valid inputs of the work
chains, with the scheduler options of each stage where they belong (the scripts' SLURM run is in
tests/integration/test_workflow_scripts.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from aiida import orm
from ase.build import molecule

from aiida_mlpes.data.dataset import PESDataset
from tests.conftest import make_arrays

SCRIPTS = Path(__file__).resolve().parents[2] / "workflows"


def load_script(name: str) -> ModuleType:
    """The script as a module (its `main` only runs under `verdi run`)."""
    spec = importlib.util.spec_from_file_location(f"mlpes_script_{name}", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_valid(builder) -> None:
    """The work chain's own input validation (defaults filled in as at launch)."""
    ports = builder.process_class.spec().inputs
    error = ports.validate(ports.pre_process(dict(builder._inputs(prune=True))))
    assert error is None, error


@pytest.fixture
def codes(aiida_code_installed):
    return {
        plugin: aiida_code_installed(
            label=plugin.split(".")[1], filepath_executable="/bin/true", default_calc_job_plugin=plugin
        )
        for plugin in ("mlpes.orca", "mlpes.gaussian", "mlpes.train")
    }


@pytest.mark.parametrize(
    ("script", "plugin", "flag"),
    [("orca_slurm", "mlpes.orca", "--orca"), ("gaussian_slurm", "mlpes.gaussian", "--gaussian")],
)
def test_construct_pes_builder_is_valid_with_options_per_stage(codes, script, plugin, flag):
    module = load_script(script)
    args = module.parse_arguments(
        [flag, codes[plugin].full_label, "--queue", "short", "--account", "proj", "--cores", "4"]
    )
    structure = orm.StructureData(ase=molecule("CH4"))
    builder = module.construct_pes_builder(codes[plugin], codes["mlpes.train"], structure, args)
    assert_valid(builder)
    reference = builder.reference.options.get_dict()
    parameters = builder.reference.parameters.get_dict()
    assert parameters["nprocs"] == 4 and builder.reference.batch_size.value == 20
    assert reference["queue_name"] == "short" and reference["account"] == "proj"
    assert reference["max_wallclock_seconds"] == 24 * 3600
    assert reference["max_memory_kb"] == int(1.25 * 4 * 2000 * 1024)
    if plugin == "mlpes.orca":  # ORCA starts its own MPI ranks: SLURM tasks
        assert reference["resources"] == {"num_machines": 1, "num_mpiprocs_per_machine": 4}
        assert parameters["maxcore"] == 2000
    else:  # Gaussian: one process with 4 threads
        assert reference["resources"]["num_cores_per_mpiproc"] == 4
        assert parameters["memory"] == "8000MB"
    train = builder.train.metadata.options
    assert train["resources"]["num_cores_per_mpiproc"] == 4 and train["max_wallclock_seconds"] == 12 * 3600
    assert builder.sample.metadata.options["resources"] == {
        "num_machines": 1,
        "num_mpiprocs_per_machine": 1,
        "num_cores_per_mpiproc": 1,
    }
    assert builder.characterize.metadata.options["max_wallclock_seconds"] == 2 * 3600
    assert "custom_scheduler_commands" not in train

    gpu = module.construct_pes_builder(
        codes[plugin], codes["mlpes.train"], structure, module.parse_arguments([flag, "x", "--gpu", "gpu"])
    )
    assert_valid(gpu)
    assert gpu.train.metadata.options["custom_scheduler_commands"] == "#SBATCH --gres=gpu:1"
    assert gpu.train.metadata.options["queue_name"] == "gpu"
    assert gpu.train.settings.get_dict()["training"]["device"] == "cuda"


@pytest.mark.parametrize(
    ("script", "plugin"), [("orca_slurm", "mlpes.orca"), ("gaussian_slurm", "mlpes.gaussian")]
)
def test_labelling_builder_is_valid(codes, script, plugin):
    module = load_script(script)
    dataset = PESDataset.from_arrays(make_arrays(3, labelled=False)).store()
    args = module.parse_arguments(["--batch-size", "2", "--walltime", "0.5", "--queue", ""])
    builder = module.labelling_builder(codes[plugin], dataset, args)
    assert_valid(builder)
    assert builder.batch_size.value == 2
    options = builder.options.get_dict()
    assert options["max_wallclock_seconds"] == 1800 and "queue_name" not in options


def test_bad_option_values_are_rejected_before_submission(codes):
    """A malformed value from the command line is caught when the builder is made, not on the cluster."""
    module = load_script("orca_slurm")
    dataset = PESDataset.from_arrays(make_arrays(2, labelled=False)).store()
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        module.labelling_builder(codes["mlpes.orca"], dataset, module.parse_arguments(["--batch-size", "0"]))
