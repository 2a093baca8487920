"""Cancelling a running task through its lease (used by ``task cancel``)."""

from __future__ import annotations


def request_cancel(settings, task_id: str) -> bool:
    """Ask the live wrapper of ``task_id`` to stop (SIGTERM, identity-checked).

    Returns True when a live wrapper was signalled: it will report ``cancelled`` itself.
    False means no live wrapper holds the task; the caller marks it cancelled directly.
    """
    return False
