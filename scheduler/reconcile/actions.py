"""What an operator can do to tasks and dispatch, shared by the command line and the
dashboard's buttons: cancel, retry, pause, resume. Each returns the sentence to show."""

from __future__ import annotations

from scheduler.names import check_name
from scheduler.reconcile import cancel as stopping
from scheduler.sources.base import WORKING
from scheduler.state import pauses
from scheduler.state.wake import nudge


def cancel(settings, store, task_id: str) -> str:
    """Cancel an idle task, or ask the live wrapper of a working one to stop (it reports
    ``cancelled`` itself); a working task with no live wrapper is cancelled directly."""
    found = store.get(task_id)
    if found.status == WORKING:
        if stopping.request_cancel(settings, found.id):
            return (f"asked the wrapper of task {found.id} to stop; it will be marked "
                    "cancelled when it reports")
        store.cancel(found.id, detail="no live wrapper")
    else:
        store.cancel(found.id)
    nudge(settings.wake_socket)
    return f"task {found.id} cancelled"


def retry(settings, store, task_id: str) -> str:
    """Put a failed or cancelled task back to idle, attempts reset."""
    retried = store.retry(task_id)
    nudge(settings.wake_socket)
    return f"task {retried.id} is idle again (attempts reset)"


def set_paused(settings, *, pause: bool, agent: str | None = None,
               queue: str | None = None) -> str:
    """Pause or resume dispatch: everything, one agent or one queue; persists."""
    for value, what in ((agent, "agent name"), (queue, "queue name")):
        if value:
            check_name(value, what)
    current = pauses.load(settings.pause_file)
    _check_known(settings, current, agent, queue, "pause" if pause else "resume")
    updated = pauses.change(current, pause=pause, agent=agent, queue=queue)
    pauses.save(settings.pause_file, updated)
    nudge(settings.wake_socket)
    return f"{updated.describe()} (running tasks continue; reclaims still happen)"


def _check_known(settings, current, agent: str | None, queue: str | None, verb: str) -> None:
    """A name that is neither a known agent/queue nor already paused is a typo: refuse."""
    if agent is None and queue is None:
        return
    from scheduler.config.registry import load_registry
    from scheduler.errors import InputError

    registry = load_registry(settings.agent_control_file, settings.agent_limits,
                             settings.default_agent_limit)
    if agent is not None and agent not in registry.by_name() and agent not in current.agents:
        raise InputError(f"agent {agent!r} is not a known agent ({registry.describe_known()});"
                         f" nothing to {verb}")
    if queue is not None and queue not in registry.queues() and queue not in current.queues:
        raise InputError(f"queue {queue!r} is not a known queue ({registry.describe_known()});"
                         f" nothing to {verb}")
