"""After a daemon crash the engine replays a work chain's step from its last checkpoint. A replayed launch step of
the reference work chains adopts the job (or batch) its first try launched instead of submitting it again."""

from __future__ import annotations

from pathlib import Path

from aiida import orm
from aiida.common.links import LinkType
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager

from aiida_mlpes.workflows.reference import ReferenceBaseWorkChain, ReferenceWorkChain
from tests.integration.conftest import molecules


def _xtb(aiida_code_installed, require_xtb):
    return aiida_code_installed(
        filepath_executable=str(Path(require_xtb).resolve()), default_calc_job_plugin="mlpes.xtb"
    )


def _launched_before_crash(parent: orm.ProcessNode, node: orm.ProcessNode, link_type: LinkType, label: str):
    """What the engine stores when a running step launches a child: the child node with its CALL link."""
    node.base.links.add_incoming(parent, link_type=link_type, link_label=label)
    return node.store()


def test_replayed_run_process_adopts_the_launched_job(aiida_code_installed, require_xtb):
    code = _xtb(aiida_code_installed, require_xtb)
    process = instantiate_process(
        get_manager().get_runner(), ReferenceBaseWorkChain, code=code, structures=molecules(3)
    )
    process.setup()
    process.prepare_process()
    job = orm.CalcJobNode(computer=code.computer, process_type="aiida.calculations:mlpes.xtb")
    launched = _launched_before_crash(process.node, job, LinkType.CALL_CALC, "iteration_01")
    replayed = process.run_process()
    assert replayed["children"].pk == launched.pk and process.ctx.iteration == 1
    called = process.node.base.links.get_outgoing(link_type=LinkType.CALL_CALC).all_nodes()
    assert [n.pk for n in called] == [launched.pk]  # nothing new was submitted


def test_replayed_run_batches_adopts_the_launched_batches(aiida_code_installed, require_xtb):
    code = _xtb(aiida_code_installed, require_xtb)
    process = instantiate_process(
        get_manager().get_runner(),
        ReferenceWorkChain,
        code=code,
        structures=molecules(4),
        batch_size=orm.Int(2),
    )
    process.setup()
    batch = orm.WorkChainNode(process_type="aiida.workflows:mlpes.reference_base")
    launched = _launched_before_crash(process.node, batch, LinkType.CALL_WORK, "batch_0000")
    replayed = process.run_batches()
    assert replayed["batch_0000"].pk == launched.pk  # adopted
    assert replayed["batch_0001"].pk != launched.pk  # the batch never launched is submitted now
