"""A test hook, not a setting: ``_TINYSCHEDULER_TEST_HOOK_CRASH_AT=<point>`` makes the
scheduler SIGKILL itself at that point of the spawn protocol or of a merge (the crash
tests use it).

The name is outside the ``TINYSCHEDULER_*`` settings on purpose, so that no env file,
``config --show`` or copied settings block carries it; it is read from the process
environment only. ``validate-config`` and ``run`` warn whenever it is set.
"""

from __future__ import annotations

import os
import signal

#: The variable; its leading underscore marks it as internal.
CRASH_AT_VARIABLE = "_TINYSCHEDULER_TEST_HOOK_CRASH_AT"

#: The points of the spawn protocol where a crash can be injected.
POINTS = ("after-lease", "after-claim", "after-spawn", "after-reclaim-report")

#: The points of the merge executor (scheduler/merge/git_merge.py).
MERGE_POINTS = ("merge-before-check", "merge-before-cas", "merge-after-cas")


def armed() -> str | None:
    """A warning when the hook is set (in any form), else None."""
    value = os.environ.get(CRASH_AT_VARIABLE)
    if value is None:
        return None
    if value in POINTS or value in MERGE_POINTS:
        return (f"test hook {CRASH_AT_VARIABLE}={value} is set: the scheduler SIGKILLs "
                "itself at that point every time it passes it; unset it outside the tests")
    return (f"test hook {CRASH_AT_VARIABLE}={value!r} is set but names no crash point "
            f"(points: {', '.join(POINTS + MERGE_POINTS)}); it does nothing; unset it")


def crash_point(point: str) -> None:
    if os.environ.get(CRASH_AT_VARIABLE) == point:
        os.kill(os.getpid(), signal.SIGKILL)
