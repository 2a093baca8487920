"""Numeric bounds shared by the settings loader and the decoders of state and source data.

One table, so a value the settings accept is never rejected later by the lease decoder
(and the other way round): ``HEARTBEAT_SEC`` x ``STALE_MULTIPLIER`` must stay a valid
time span, and a task id must fit both sources (SQLite's and TinyTask's 64-bit integers).
"""

from __future__ import annotations

#: HEARTBEAT_SEC: seconds between wrapper heartbeats (settings and leases).
HEARTBEAT_SEC_MIN, HEARTBEAT_SEC_MAX = 1, 10**6
#: STALE_MULTIPLIER: a heartbeat older than interval x this is stale. Settings require at
#: least 2; a lease written by hand may carry 1.
STALE_MULTIPLIER_MIN, STALE_MULTIPLIER_MAX = 2, 1000
LEASE_STALE_MULTIPLIER_MIN = 1
#: Task ids: positive integers of at most 18 digits (they fit a signed 64-bit integer).
TASK_ID_MAX_DIGITS = 18
TASK_ID_MAX = 10**TASK_ID_MAX_DIGITS - 1
#: The longest retry delay a backoff may grow to (30 days): keeps times representable.
BACKOFF_MAX_SEC = 30 * 24 * 3600


def is_task_number(value: object) -> bool:
    """True for an int that is a task id both sources accept (1 ..= TASK_ID_MAX)."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= TASK_ID_MAX
