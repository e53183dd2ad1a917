"""Replaying a launch step after a daemon crash: adopt the child its first try launched, or supersede it.

The engine checkpoints a work chain after each step and replays an unfinished step after a restart. A child the
first try launched is already stored and linked under its call-link label, so the replayed step must not submit a
second one next to it. But a child can also be stored and linked without ever being queued: ``submit`` stores the
node, then writes its checkpoint, then sends its task to the broker, and a crash between these leaves a process
that no worker will ever run, so a parent waiting for it would wait forever (AiiDA's remedy is a manual
``verdi process repair`` with the daemon stopped). A child still ``created`` when its parent replays the step has
not started anything, so it is superseded: marked killed (a task of it that arrives later finds it terminated and
is dropped) and the step launches a replacement under the same label."""

from __future__ import annotations

from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import Process, ProcessState

#: Extra set on a child that a replayed step superseded because it never started.
SUPERSEDED = "mlpes_superseded"


def launched_child(process: Process, link_type: LinkType, label: str) -> orm.ProcessNode | None:
    """The child process that ``process`` launched under ``label`` and that has started (or ended); None when
    there is none, and the caller launches it. A child that never started is superseded first (see the module)."""
    found = process.node.base.links.get_outgoing(link_type=link_type, link_label_filter=label).all_nodes()
    live = sorted((n for n in found if not n.base.extras.get(SUPERSEDED, False)), key=lambda n: n.pk)
    if not live:
        return None
    child = live[-1]
    if child.process_state not in (None, ProcessState.CREATED):
        return child
    message = (
        f"superseded by a replacement: it never started before its caller <{process.node.pk}> was replayed"
    )
    child.base.extras.set(SUPERSEDED, True)
    if not child.is_sealed:
        child.set_process_state(ProcessState.KILLED)
        child.set_process_status(message)
        child.seal()
    process.report(f"{child.process_label}<{child.pk}> ({label}) {message}; launching it again")
    return None
