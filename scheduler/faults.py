"""A test hook, not a setting: ``_TINYSCHEDULER_TEST_HOOK_CRASH_AT=<point>`` makes the
scheduler (spawn protocol), the wrapper (workspace creation) or a merge SIGKILL itself at
that point (the crash tests use it).

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
#: The points of workspace creation (in the wrapper): holding the repository's git lock,
#: between registering a worktree and checking it out, and once it is checked out but
#: not yet recorded as ready.
WORKSPACE_POINTS = ("workspace-after-lock", "workspace-mid-add", "workspace-after-add")
#: The points of the merge queue (in the wrapper, after the agent succeeded): marked as
#: merging, holding the target's merge lock, the merge computed but not checked, checked
#: but the target not moved, the target moved (compare-and-swap done), and the result
#: recorded but the branch and worktree not yet removed.
MERGE_POINTS = ("merge-after-mark", "merge-after-lock", "merge-before-check",
                "merge-before-cas", "merge-after-cas", "merge-before-cleanup")
ALL_POINTS = POINTS + WORKSPACE_POINTS + MERGE_POINTS


def armed() -> str | None:
    """A warning when the hook is set (in any form), else None."""
    value = os.environ.get(CRASH_AT_VARIABLE)
    if value is None:
        return None
    if value in ALL_POINTS:
        return (f"test hook {CRASH_AT_VARIABLE}={value} is set: the scheduler SIGKILLs "
                "itself at that point every time it passes it; unset it outside the tests")
    return (f"test hook {CRASH_AT_VARIABLE}={value!r} is set but names no crash point "
            f"(points: {', '.join(ALL_POINTS)}); it does nothing; unset it")


def crash_point(point: str) -> None:
    if os.environ.get(CRASH_AT_VARIABLE) == point:
        os.kill(os.getpid(), signal.SIGKILL)
