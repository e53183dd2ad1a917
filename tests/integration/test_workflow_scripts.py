"""workflows/orca_slurm.py labels a dataset through the daemon on the SLURM computer, as a user runs it
(`verdi run workflows/orca_slurm.py --label PK ...`), with a stand-in ``orca`` that replays real ORCA outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from aiida import orm

from aiida_mlpes.calculations.orca import OrcaCalculation
from aiida_mlpes.data.dataset import PESDataset
from tests.calculations.test_reference_orca import H2, H2O2, arrays_of
from tests.data.stand_ins import install_stand_in
from tests.integration.conftest import calcjobs_of, sacct_jobs, wait_for
from tests.workflows.test_slurm_scripts import load_script

pytestmark = pytest.mark.cluster


def test_orca_script_labels_a_dataset_through_slurm(slurm_computer, fresh_daemon, realdata, tmp_path_factory):
    folder = tmp_path_factory.mktemp("orca-replay")
    config = folder / "config.json"
    outputs = {0: "autode_orca4/h2_grad_orca.out", 1: "schnetpack_orca4.0/test_orca.log"}
    config.write_text(
        json.dumps({"outputs": {str(k): str(realdata / "orca" / v) for k, v in outputs.items()}})
    )
    code = orm.InstalledCode(
        label="orca-replay",
        computer=slurm_computer,
        filepath_executable=str(install_stand_in("replay.py", folder)),
        default_calc_job_plugin="mlpes.orca",
        prepend_text=f"export MLPES_STANDIN_CONFIG={config}",
    ).store()
    dataset = PESDataset.from_arrays(arrays_of(H2, H2O2)).store()

    args = ["--label", str(dataset.pk), "--orca", code.full_label, "--queue", "debug", "--cores", "1"]
    args += ["--memory-mb", "500", "--walltime", "0.25", "--batch-size", "1"]
    node = load_script("orca_slurm").main(args)
    wait_for(node, 300, fresh_daemon)

    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    labelled = node.outputs.dataset.get_arrays()
    assert len(labelled) == 2 and np.all(np.isfinite(labelled.energy))
    jobs = [j for j in calcjobs_of(node) if j.process_class is OrcaCalculation]
    assert len(jobs) == 2  # batch size 1
    for job in jobs:  # the script's per-job options reached SLURM
        assert job.get_option("queue_name") == "debug"
        assert job.get_option("max_wallclock_seconds") == 900
        assert job.get_option("max_memory_kb") == int(1.25 * 500 * 1024)
    ids = [j.get_job_id() for j in jobs]
    assert set(sacct_jobs(ids).values()) == {"COMPLETED"}
