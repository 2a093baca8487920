"""Numeric bounds shared by the settings loader and the decoders of state and source data.

One table, so a value the settings accept is never rejected later by the lease decoder
(and the other way round): ``HEARTBEAT_SEC`` x ``STALE_MULTIPLIER`` must stay a valid
time span, and a task id must fit both sources (SQLite's and TinyTask's 64-bit integers).
The loader enforces each setting's range, the docs print it, and the lease decoder judges
a lease's recorded values with the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bounds:
    """The accepted range of a whole-number setting, both ends included."""

    low: int
    high: int

    def __contains__(self, value: object) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool)
                and self.low <= value <= self.high)

    def describe(self) -> str:
        return f"a whole number from {self.low} to {self.high}"


LIMIT_BOUNDS = Bounds(0, 10_000)  #: AGENT_LIMITS values and DEFAULT_AGENT_LIMIT
LOOP_INTERVAL_BOUNDS = Bounds(1, 86_400)
HEARTBEAT_SEC_BOUNDS = Bounds(1, 3_600)
STALE_MULTIPLIER_BOUNDS = Bounds(2, 100)
MAX_RUNTIME_BOUNDS = Bounds(1, 30 * 86_400)
IDLE_TIMEOUT_BOUNDS = Bounds(0, 30 * 86_400)
KILL_GRACE_BOUNDS = Bounds(0, 3_600)
SPAWN_TIMEOUT_BOUNDS = Bounds(1, 3_600)
WARM_WRAPPER_BOUNDS = Bounds(0, 3_600)
MAX_ATTEMPTS_BOUNDS = Bounds(1, 1_000)
RETRY_BACKOFF_BOUNDS = Bounds(0, 86_400)
ATTEMPT_LOG_MAX_MB_BOUNDS = Bounds(0, 1_000_000)
LOG_RETENTION_DAYS_BOUNDS = Bounds(0, 36_500)
METRICS_MAX_MB_BOUNDS = Bounds(1, 100_000)
RATE_LIMIT_BACKOFF_BOUNDS = Bounds(1, 86_400)
RATE_LIMIT_BACKOFF_MAX_BOUNDS = Bounds(1, 30 * 86_400)
MAX_TOTAL_RUNTIME_BOUNDS = Bounds(0, 365 * 86_400)
MIN_FREE_DISK_MB_BOUNDS = Bounds(0, 1_000_000_000_000)
HOOK_TIMEOUT_BOUNDS = Bounds(1, 86_400)
MERGE_CHECK_TIMEOUT_BOUNDS = Bounds(1, 7 * 86_400)
HOST_TIMEOUT_BOUNDS = Bounds(2, 86_400)
AGENT_MEMORY_MAX_MB_BOUNDS = Bounds(0, 1 << 30)  #: up to 1 PiB; 0 = none
AGENT_CPU_MAX_BOUNDS = Bounds(0, 365 * 86_400)
AGENT_FILE_MAX_MB_BOUNDS = Bounds(0, 1 << 30)
AGENT_OPEN_FILES_MAX_BOUNDS = Bounds(0, 1 << 20)

#: Task ids: positive integers of at most 18 digits (they fit a signed 64-bit integer).
TASK_ID_MAX_DIGITS = 18
TASK_ID_MAX = 10**TASK_ID_MAX_DIGITS - 1
#: The longest retry delay a backoff may grow to (30 days): keeps times representable.
BACKOFF_MAX_SEC = 30 * 24 * 3600


def is_task_number(value: object) -> bool:
    """True for an int that is a task id both sources accept (1 ..= TASK_ID_MAX)."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= TASK_ID_MAX
