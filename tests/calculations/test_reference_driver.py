"""Driver mode of the reference CalcJobs: one aiida-mlpes-run process runs every program call of a job."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from aiida.common.folders import SandboxFolder
from aiida.engine import run_get_node

from aiida_mlpes.calculations.xtb import XtbCalculation
from aiida_mlpes.core.commands import run_commands_task
from aiida_mlpes.core.runner import TaskError
from aiida_mlpes.data.dataset import PESDataset
from tests.calculations.test_reference_xtb import OPTIONS, XTB, nh3_arrays


@pytest.fixture
def codes(aiida_code_installed):
    runner = str(Path(shutil.which("aiida-mlpes-run")).resolve())
    return {
        "xtb": aiida_code_installed(
            filepath_executable=str(Path(XTB).resolve()), default_calc_job_plugin="mlpes.xtb"
        ),
        "driver": aiida_code_installed(filepath_executable=runner, default_calc_job_plugin="mlpes.sample"),
    }


def test_one_codeinfo_runs_the_calls_from_an_argument_list(codes):
    builder = XtbCalculation.get_builder()
    builder.code = codes["xtb"]
    builder.driver_code = codes["driver"]
    builder.structures = PESDataset.from_arrays(nh3_arrays(3)).store()
    process = XtbCalculation(inputs=dict(builder._inputs(prune=True)))
    with SandboxFolder() as folder:
        calcinfo = process.prepare_for_submission(folder)
        settings = json.loads(Path(folder.get_abs_path("commands.json")).read_text())
    assert len(calcinfo.codes_info) == 1
    assert calcinfo.codes_info[0].code_uuid == codes["driver"].uuid
    assert calcinfo.codes_info[0].cmdline_params == ["run_commands", "commands.json"]
    commands = settings["commands"]
    assert [c["stdout"] for c in commands] == ["s00000.out", "s00001.out", "s00002.out"]
    assert all(c["args"][0] == str(Path(XTB).resolve()) for c in commands)
    assert commands[0]["args"][1] == "s00000.xyz" and "--grad" in commands[0]["args"]
    assert settings["environment"]["OMP_NUM_THREADS"] == "1"
    # each call's input travels in the settings file (written on the computer), not as a file to upload
    assert list(commands[1]["files"]) == ["s00001.xyz"]
    assert commands[1]["files"]["s00001.xyz"].startswith("4\n")
    assert not Path(folder.abspath, "s00000.xyz").exists()
    assert settings["processes"] == 1
    # the driver parses each xtb output itself: the job sends back one results file
    assert commands[2]["parse"] == {"program": "xtb", "namespace": "s00002"}
    assert calcinfo.retrieve_temporary_list == ["results.jsonl"]


def test_driver_runs_as_many_calls_at_once_as_the_job_has_processes(codes):
    """Two MPI processes given to the job: two single-threaded xtb calls at a time, same labels."""
    dataset = PESDataset.from_arrays(nh3_arrays(6, seed=5)).store()
    options = {**OPTIONS, "resources": {"num_machines": 1, "num_mpiprocs_per_machine": 2}}
    results = {}
    for name, opts in (("serial", OPTIONS), ("two", options)):
        out, node = run_get_node(
            XtbCalculation,
            code=codes["xtb"],
            driver_code=codes["driver"],
            structures=dataset,
            metadata={"options": opts},
        )
        assert node.is_finished_ok, node.exit_message
        results[name] = out["dataset"].get_arrays()
    np.testing.assert_array_equal(results["serial"].energy, results["two"].energy)
    np.testing.assert_array_equal(results["serial"].forces, results["two"].forces)


def test_driver_mode_gives_the_same_labels(codes):
    dataset = PESDataset.from_arrays(nh3_arrays(5, seed=3)).store()
    plain, node_plain = run_get_node(
        XtbCalculation, code=codes["xtb"], structures=dataset, metadata={"options": OPTIONS}
    )
    driven, node_driven = run_get_node(
        XtbCalculation,
        code=codes["xtb"],
        driver_code=codes["driver"],
        structures=dataset,
        metadata={"options": OPTIONS},
    )
    assert node_plain.is_finished_ok and node_driven.is_finished_ok, node_driven.exit_message
    a, b = plain["dataset"].get_arrays(), driven["dataset"].get_arrays()
    np.testing.assert_array_equal(a.energy, b.energy)
    np.testing.assert_array_equal(a.forces, b.forces)
    assert set(b.source) == {node_driven.uuid}


def test_driver_on_another_computer_is_refused(codes, aiida_computer):
    other = aiida_computer(label="elsewhere")
    driver = orm.InstalledCode(computer=other, filepath_executable="/bin/true", label="runner").store()
    with pytest.raises(ValueError, match="same computer"):
        run_get_node(
            XtbCalculation,
            code=codes["xtb"],
            driver_code=driver,
            structures=PESDataset.from_arrays(nh3_arrays(1)),
        )


def test_run_commands_task_records_each_status(tmp_path):
    settings = {
        "commands": [
            {"args": ["/bin/sh", "-c", "echo one"], "stdout": "a.out", "stderr": "a.err"},
            {"args": ["/bin/false"], "stdout": "b.out", "stderr": "b.err"},
        ],
        "environment": {"X": 1},
    }
    result = run_commands_task(settings, tmp_path)
    assert result["statuses"] == [0, 1] and result["n_nonzero"] == 1
    assert (tmp_path / "a.out").read_text() == "one\n"
    assert (tmp_path / "commands.progress").read_text().splitlines() == ["a.out 0", "b.out 1"]


def test_run_commands_task_writes_input_files_and_runs_calls_side_by_side(tmp_path):
    commands = [
        {
            "args": ["/bin/cat", f"in{k}.txt"],
            "stdout": f"{k}.out",
            "stderr": f"{k}.err",
            "files": {f"in{k}.txt": str(k)},
        }
        for k in range(5)
    ]
    result = run_commands_task({"commands": commands, "processes": 2}, tmp_path)
    assert result["statuses"] == [0] * 5
    assert [(tmp_path / f"{k}.out").read_text() for k in range(5)] == ["0", "1", "2", "3", "4"]
    assert sorted((tmp_path / "commands.progress").read_text().split()[::2]) == [f"{k}.out" for k in range(5)]
    with pytest.raises(TaskError, match="plain file name"):
        run_commands_task({"commands": [{**commands[0], "files": {"../x": ""}}]}, tmp_path)
    with pytest.raises(TaskError, match="processes"):
        run_commands_task({"commands": commands, "processes": 0}, tmp_path)
    # a missing executable is reported as a shell would: message in the call's stderr, status 127
    program = tmp_path / "not-installed" / "prog"  # a path that exists on no machine's test folder
    missing = {"args": [str(program)], "stdout": "c", "stderr": "d"}
    result = run_commands_task({"commands": [missing, {**missing, "stdout": "e", "stderr": "f"}]}, tmp_path)
    assert result["statuses"] == [127, 127]
    assert (tmp_path / "d").read_text() == f"{program}: No such file or directory\n"


def test_driver_parses_outputs_and_a_killed_job_leaves_the_rest_not_run(tmp_path):
    """Records of the driver (one JSON line per finished call) are what the parser reads; a garbled output
    fails its structure only; calls that never ran have no record."""
    from aiida_mlpes.core.reference import common
    from aiida_mlpes.core.reference.xtb import write_xyz, xtb_arguments
    from aiida_mlpes.parsers.reference import read_driver_results

    arrays = nh3_arrays(2)
    commands = []
    for k in range(2):
        sl = arrays.atom_slice(k)
        commands.append(
            {
                "args": [XTB, *xtb_arguments(f"s{k}.xyz", 0, 1, namespace=f"s{k}")],
                "stdout": f"s{k}.out",
                "stderr": f"s{k}.err",
                "files": {f"s{k}.xyz": write_xyz(arrays.atomic_numbers[sl], arrays.positions[sl])},
                "parse": {"program": "xtb", "namespace": f"s{k}"},
            }
        )
    commands.append(
        {
            "args": ["/bin/true"],
            "stdout": "s2.out",
            "stderr": "s2.err",
            "parse": {"program": "xtb", "namespace": "s2"},
        }
    )
    run_commands_task({"commands": commands, "environment": {"OMP_NUM_THREADS": 1}, "processes": 2}, tmp_path)
    with (tmp_path / "results.jsonl").open("a") as f:
        f.write('{"index": 3, "status": "walltime"}\n{"index": 3, "status": "o')  # started, killed mid-write
    records = read_driver_results(tmp_path / "results.jsonl")
    assert sorted(records) == [0, 1, 2, 3] and records[3]["status"] == common.WALLTIME
    first = common.result_from_record("xtb", records[0])
    assert first.ok and first.forces.shape == (4, 3) and first.numbers.tolist() == [7, 1, 1, 1]
    assert records[2]["status"] == common.MISSING_OUTPUT
    assert read_driver_results(tmp_path / "absent.jsonl") is None


@pytest.mark.parametrize("driver_mode", [False, True])
def test_missing_executable_fails_the_job_as_a_program_error_naming_the_path(
    codes, aiida_code_installed, tmp_path, driver_mode
):
    """xtb's path does not exist on the computer: exit 310 (program failed) with the path, in both modes,
    not 400 (a killed job the work chain would resubmit); once installed, the restart succeeds."""
    executable = tmp_path / "bin" / "xtb"
    missing = aiida_code_installed(filepath_executable=str(executable), default_calc_job_plugin="mlpes.xtb")
    inputs = {"code": missing, "structures": PESDataset.from_arrays(nh3_arrays(2)).store()}
    if driver_mode:
        inputs["driver_code"] = codes["driver"]
    _, node = run_get_node(XtbCalculation, **inputs, metadata={"options": OPTIONS})
    assert node.exit_status == XtbCalculation.exit_codes.ERROR_PROGRAM_FAILED.status, node.exit_message
    assert f"{executable}: No such file or directory" in node.exit_message
    executable.parent.mkdir()
    executable.symlink_to(Path(XTB).resolve())
    _, again = run_get_node(node.get_builder_restart())  # resources were not given: defaults apply
    assert again.is_finished_ok, again.exit_message
