"""Each process handler of ReferenceBaseWorkChain alone: a finished child CalcJobNode with a chosen exit
status and ``failures`` output is put in the context and the handler's decisions are checked."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ProcessState
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from ase.build import molecule

from aiida_mlpes.core.ragged import RaggedArrays
from aiida_mlpes.core.reference import common
from aiida_mlpes.data.dataset import PESDataset
from aiida_mlpes.workflows.reference_base import ReferenceBaseWorkChain, collect_exclusions


@pytest.fixture
def workchain(aiida_code_installed):
    def factory(n: int = 4, retries: int = 2):
        code = aiida_code_installed(filepath_executable="/bin/true", default_calc_job_plugin="mlpes.xtb")
        rng = np.random.default_rng(0)
        images = []
        for _ in range(n):
            atoms = molecule("NH3")
            atoms.positions += rng.normal(scale=0.02, size=(4, 3))
            images.append(atoms)
        inputs = {
            "code": code,
            "structures": PESDataset.from_arrays(RaggedArrays.from_atoms(images)),
            "max_structure_retries": orm.Int(retries),
        }
        process = instantiate_process(get_manager().get_runner(), ReferenceBaseWorkChain, **inputs)
        process.setup()
        process.ctx.iteration = 1
        return process

    return factory


def child(exit_status: int, failures: dict | None, indices: list[int]) -> orm.CalcJobNode:
    node = orm.CalcJobNode(process_type="aiida.calculations:mlpes.xtb")
    node.base.links.add_incoming(orm.List(indices).store(), LinkType.INPUT_CALC, "indices")
    node.store()
    if failures is not None:
        out = orm.Dict(failures)
        out.base.links.add_incoming(node, LinkType.CREATE, "failures")
        out.store()
    node.set_process_state(ProcessState.FINISHED)
    node.set_exit_status(exit_status)
    node.seal()
    return node


def test_walltime_resubmits_only_unfinished(workchain):
    process = workchain()
    node = child(
        400,
        {
            "2": {"category": common.WALLTIME, "message": "killed"},
            "3": {"category": common.NOT_RUN, "message": "never started"},
        },
        [0, 1, 2, 3],
    )
    process.ctx.children = [node]
    process.record_results(node)
    report = process.handle_out_of_walltime(node)
    assert report.do_break and not process.ctx.is_finished
    assert process.ctx.pending == [2, 3]
    assert process.ctx.attempts["2"] == 1 and process.ctx.attempts["3"] == 0  # not-run is no attempt
    process.prepare_process()
    assert process.ctx.inputs.indices.get_list() == [2, 3]
    assert "scf_fix_level" not in process.ctx.inputs.parameters.get_dict()


def test_scf_failure_raises_fix_level_then_excludes(workchain):
    process = workchain(n=2, retries=1)
    for attempt in (1, 2):
        node = child(
            410,
            {str(i): {"category": common.SCF_NOT_CONVERGED, "message": "no SCC"} for i in (0, 1)},
            process.ctx.pending,
        )
        process.ctx.children = [node]
        process.record_results(node)
        report = process.handle_scf_not_converged(node)
        assert report.do_break
        if attempt == 1:
            process.prepare_process()
            assert process.ctx.inputs.parameters["scf_fix_level"] == 1
            assert process.ctx.pending == [0, 1]
    assert process.ctx.pending == [] and process.ctx.is_finished
    assert set(process.ctx.excluded) == {"0", "1"} and process.ctx.excluded["0"]["attempts"] == 2


def test_partial_failures_and_success(workchain):
    process = workchain(n=3)
    node = child(0, {"1": {"category": common.ERROR, "message": "crash"}}, [0, 1, 2])
    process.record_results(node)
    assert process.handle_partial_failures(node).do_break and process.ctx.pending == [1]
    ok = child(0, {}, [1])
    process.record_results(ok)
    assert process.handle_partial_failures(ok) is None and process.ctx.pending == []


def test_job_without_outputs_counts_as_failed_attempt(workchain):
    process = workchain(n=2)
    node = child(302, None, [0, 1])
    process.record_results(node)
    assert process.handle_failed_batch(node).do_break
    assert process.ctx.pending == [0, 1] and process.ctx.attempts == {"0": 1, "1": 1}


def test_iteration_budget_excludes_instead_of_failing(workchain):
    process = workchain(n=1)
    process.ctx.iteration = process.inputs.max_iterations.value
    node = child(310, {"0": {"category": common.ERROR, "message": "crash"}}, [0])
    process.record_results(node)
    process.handle_failed_batch(node)
    assert process.ctx.is_finished and "max_iterations" in process.ctx.excluded["0"]["message"]


def test_collect_exclusions_from_job_history():
    """The excluded output is computed from the jobs' indices and failures by a calcfunction."""
    jobs = {
        "indices_0000": orm.List([0, 1, 2]),
        "failures_0000": orm.Dict(
            {
                "1": {"category": "scf_not_converged", "message": "a"},
                "2": {"category": "not_run", "message": "b"},
            }
        ),
        "indices_0001": orm.List([1, 2]),
        "failures_0001": orm.Dict({"1": {"category": "scf_not_converged", "message": "c"}}),
    }
    result = collect_exclusions(**jobs).get_dict()
    assert result == {"1": {"category": "scf_not_converged", "message": "c", "attempts": 2}}


def test_a_program_that_could_not_start_is_not_retried(workchain):
    """A missing executable fails every job the same way: the structures are excluded at once, naming the path,
    instead of spending max_structure_retries more jobs (and queue waits); other program errors are retried."""
    process = workchain(n=2, retries=2)
    message = "xtb could not be started: job.sh: line 9: /opt/xtb/bin/xtb: No such file or directory"
    node = child(
        310,
        {
            "0": {"category": common.ERROR, "message": message},
            "1": {"category": common.ERROR, "message": "crash"},
        },
        [0, 1],
    )
    process.record_results(node)
    assert process.handle_failed_batch(node).do_break
    assert process.ctx.pending == [1]
    assert process.ctx.excluded["0"]["message"] == message and process.ctx.excluded["0"]["attempts"] == 3
