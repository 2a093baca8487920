"""The wrapper's process title, so ``ps`` tells a wrapper from the scheduler it was forked
from: ``tinyscheduler-wrapper task 12 vaela``.

``setproctitle`` rewrites the command line that ``ps -ef``, ``top`` and ``pgrep -f`` show
(and the 15-character name of ``ps -o comm``); the kernel's prctl(PR_SET_NAME) alone
changes only that short name. Without the library the short name is still set, through
``/proc/self/comm``.
"""

from __future__ import annotations

PREFIX = "tinyscheduler-wrapper"
#: A wrapper of the daemon's fork server waiting for its next task.
IDLE_TITLE = f"{PREFIX} idle"


def wrapper_title(task_id: str, agent: str) -> str:
    return f"{PREFIX} task {task_id} {agent}"


def preload() -> None:
    """Import the library ahead (a wrapper forked from a process that did starts with it)."""
    try:
        import setproctitle  # noqa: F401
    except ImportError:
        pass


def set_title(title: str) -> None:
    """Best effort: a title that cannot be set changes nothing else."""
    try:
        from setproctitle import setproctitle
    except ImportError:
        try:
            with open("/proc/self/comm", "w", encoding="utf-8") as handle:
                handle.write(title[:15])
        except OSError:
            pass
        return
    setproctitle(title)
