"""Fault injection for crash tests: ``TINYSCHEDULER_TEST_CRASH_AT=<point>`` makes the
scheduler SIGKILL itself at that point of the spawn protocol. Read from the process
environment only (never from an env file), and documented as a test hook."""

from __future__ import annotations

import os
import signal

#: The points of the spawn protocol where a crash can be injected.
POINTS = ("after-lease", "after-claim", "after-spawn", "after-reclaim-report")


def crash_point(point: str) -> None:
    if os.environ.get("TINYSCHEDULER_TEST_CRASH_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)
