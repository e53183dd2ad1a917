"""A ConstructPESWorkChain whose training job SLURM kills at its walltime: the loop resumes that training from
its checkpoint (``restart_folder``) instead of failing or starting again at epoch 0, then goes on."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import submit

from aiida_mlpes.calculations.train import TrainCalculation, checkpoint_epoch
from tests.integration.conftest import calcjobs_of, sacct_jobs, wait_for
from tests.integration.test_construct_pes_kill import _builder

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def hanging_first_training(directory: Path) -> Path:
    """``aiida-mlpes-run``, except that a training started without a checkpoint (a first attempt) hangs after
    it ends, without its result.json, until the scheduler kills it at the walltime: a deterministic walltime
    kill that leaves a checkpoint, whatever the machine's speed."""
    runner = Path(sys.executable).with_name("aiida-mlpes-run")
    path = directory / "aiida-mlpes-run-hangs"
    path.write_text(
        "#!/bin/sh\n"
        'first=0; if [ "$1" = train ] && [ ! -e checkpoint.pt ]; then first=1; fi\n'
        f'"{runner}" "$@"\n'
        'if [ "$first" = 1 ]; then rm -f result.json; sleep 900; fi\n'
    )
    path.chmod(0o755)
    return path


def test_training_killed_by_walltime_is_resumed_by_the_loop_from_its_checkpoint(
    slurm_codes, slurm_computer, fresh_daemon, tmp_path_factory
):
    runner = orm.InstalledCode(
        label="aiida-mlpes-run-hangs",
        computer=slurm_computer,
        filepath_executable=str(hanging_first_training(tmp_path_factory.mktemp("bin"))),
    ).store()
    builder = _builder({**slurm_codes, "aiida-mlpes-run": runner})
    builder.train.metadata.options.max_wallclock_seconds = 60  # SLURM's smallest limit: one minute
    node = wait_for(submit(builder), 1200, fresh_daemon)

    assert node.exit_status in (0, 410, 411), (node.exit_status, node.exit_message)
    trainings = [j for j in calcjobs_of(node) if j.process_label == "TrainCalculation"]
    assert len(trainings) == 2, [(j.pk, j.exit_status) for j in trainings]
    killed, resumed = trainings
    assert killed.exit_status == TrainCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME.status
    assert sacct_jobs([killed.get_job_id()]) == {killed.get_job_id(): "TIMEOUT"}
    epoch = checkpoint_epoch(killed)
    assert epoch is not None and epoch >= 1
    # the same training, continued from the killed job's folder: its curve's rows up to the checkpoint are kept
    assert resumed.is_finished_ok, (resumed.exit_status, resumed.exit_message)
    assert resumed.inputs.restart_folder.uuid == killed.outputs.remote_folder.uuid
    assert resumed.inputs.settings.get_dict() == killed.inputs.settings.get_dict()
    assert resumed.base.links.get_incoming(link_type=LinkType.CALL_CALC).one().link_label == "train_1_resume1"
    curve = (Path(killed.outputs.remote_folder.get_remote_path()) / "learning_curve.csv").read_text()
    rows = resumed.outputs.learning_curve.get_content().splitlines()
    assert rows[: 1 + epoch] == curve.splitlines()[: 1 + epoch]
    report = " ".join(log.message for log in orm.Log.collection.get_logs_for(node))
    assert f"resuming it from its checkpoint of epoch {epoch}" in report, report
    # the loop's model is the resumed training's
    assert node.outputs.model.uuid == resumed.outputs.model.uuid
