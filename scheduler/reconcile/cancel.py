"""Stopping a running task's wrapper through its lease (``task cancel``, reconciliation)."""

from __future__ import annotations

import os
import signal


def signal_wrapper(lease) -> bool:
    """SIGTERM the lease's wrapper if it is still the same process (pid and start time);
    True if signalled. The wrapper forwards it to its agent's group and reports
    ``cancelled``."""
    from scheduler.state import liveness

    if lease.pid is None or lease.pid_started_at is None:
        return False
    started = liveness.process_start_time(lease.pid)
    if started is None or abs(started - lease.pid_started_at) > liveness.START_TIME_TOLERANCE:
        return False
    try:
        os.kill(lease.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def request_cancel(settings, task_id: str) -> bool:
    """Ask the live wrapper of ``task_id`` on this host to stop.

    Returns True when a live wrapper was signalled: it will report ``cancelled`` itself.
    False means no live wrapper holds the task; the caller marks it cancelled directly.
    """
    from scheduler.state.leases import LeaseStore

    lease = LeaseStore(settings.running_dir).read(task_id)
    if lease is None or lease.host != settings.hostname:
        return False
    return signal_wrapper(lease)
