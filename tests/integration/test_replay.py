"""After a daemon crash the engine replays a work chain's step from its last checkpoint. A replayed launch step of
the reference work chains adopts the job (or batch) its first try launched instead of submitting it again, unless
that child never started (the crash came before its task reached the broker): then it is superseded (killed,
marked) and launched again, instead of being waited for forever."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ProcessState
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager

from aiida_mlpes.workflows.reference import ReferenceBaseWorkChain, ReferenceWorkChain
from aiida_mlpes.workflows.replay import SUPERSEDED, launched_child
from tests.integration.conftest import molecules


def _xtb(aiida_code_installed, require_xtb):
    return aiida_code_installed(
        filepath_executable=str(Path(require_xtb).resolve()), default_calc_job_plugin="mlpes.xtb"
    )


def _launched_before_crash(
    parent: orm.ProcessNode,
    node: orm.ProcessNode,
    link_type: LinkType,
    label: str,
    state: ProcessState | None = ProcessState.WAITING,
):
    """What the engine stores when a running step launches a child: the child node with its CALL link, in
    ``state`` (WAITING: a worker runs it; CREATED: the crash came before its task reached the broker)."""
    node.base.links.add_incoming(parent, link_type=link_type, link_label=label)
    node.store()
    if state is not None:
        node.set_process_state(state)
    return node


def _reference_base(code) -> ReferenceBaseWorkChain:
    process = instantiate_process(
        get_manager().get_runner(), ReferenceBaseWorkChain, code=code, structures=molecules(3)
    )
    process.setup()
    process.prepare_process()
    return process


def test_replayed_run_process_adopts_the_launched_job(aiida_code_installed, require_xtb):
    code = _xtb(aiida_code_installed, require_xtb)
    process = _reference_base(code)
    job = orm.CalcJobNode(computer=code.computer, process_type="aiida.calculations:mlpes.xtb")
    launched = _launched_before_crash(process.node, job, LinkType.CALL_CALC, "iteration_01")
    replayed = process.run_process()
    assert replayed["children"].pk == launched.pk and process.ctx.iteration == 1
    called = process.node.base.links.get_outgoing(link_type=LinkType.CALL_CALC).all_nodes()
    assert [n.pk for n in called] == [launched.pk]  # nothing new was submitted


@pytest.mark.parametrize("state", [None, ProcessState.CREATED])
def test_replayed_run_process_supersedes_a_job_that_never_started(aiida_code_installed, require_xtb, state):
    code = _xtb(aiida_code_installed, require_xtb)
    process = _reference_base(code)
    job = orm.CalcJobNode(computer=code.computer, process_type="aiida.calculations:mlpes.xtb")
    orphan = _launched_before_crash(process.node, job, LinkType.CALL_CALC, "iteration_01", state)
    replayed = process.run_process()
    new = replayed["children"]
    assert new.pk != orphan.pk and process.ctx.iteration == 1
    assert orphan.is_killed and orphan.is_sealed and orphan.base.extras.get(SUPERSEDED)
    assert "never started" in orphan.process_status


def test_a_second_replay_adopts_the_replacement_not_the_superseded_child(aiida_code_installed, require_xtb):
    code = _xtb(aiida_code_installed, require_xtb)
    process = _reference_base(code)
    jobs = [
        orm.CalcJobNode(computer=code.computer, process_type="aiida.calculations:mlpes.xtb") for _ in range(2)
    ]
    orphan = _launched_before_crash(
        process.node, jobs[0], LinkType.CALL_CALC, "iteration_01", ProcessState.CREATED
    )
    assert launched_child(process, LinkType.CALL_CALC, "iteration_01") is None and orphan.is_killed
    replacement = _launched_before_crash(process.node, jobs[1], LinkType.CALL_CALC, "iteration_01")
    assert launched_child(process, LinkType.CALL_CALC, "iteration_01").pk == replacement.pk


def test_replayed_run_batches_adopts_the_launched_batches(aiida_code_installed, require_xtb):
    code = _xtb(aiida_code_installed, require_xtb)
    process = instantiate_process(
        get_manager().get_runner(),
        ReferenceWorkChain,
        code=code,
        structures=molecules(6),
        batch_size=orm.Int(2),
    )
    process.setup()
    batch = orm.WorkChainNode(process_type="aiida.workflows:mlpes.reference_base")
    launched = _launched_before_crash(process.node, batch, LinkType.CALL_WORK, "batch_0000")
    orphan = orm.WorkChainNode(process_type="aiida.workflows:mlpes.reference_base")
    orphan = _launched_before_crash(
        process.node, orphan, LinkType.CALL_WORK, "batch_0001", ProcessState.CREATED
    )
    replayed = process.run_batches()
    assert replayed["batch_0000"].pk == launched.pk  # adopted
    assert replayed["batch_0001"].pk not in (launched.pk, orphan.pk)  # the batch that never started: anew
    assert orphan.is_killed
    assert replayed["batch_0002"].pk not in (
        launched.pk,
        orphan.pk,
    )  # the batch never launched: submitted now
