"""Turning a freshly forked child of the scheduler into a task's wrapper.

Both fork launchers end here (``launcher.ForkLauncher`` for one pass, ``forkserver`` for
the daemon). The child starts its own session (its own process group, no terminal),
resets the signal handlers the scheduler may have set, points stdin/stdout/stderr at
/dev/null, closes every inherited descriptor (above all the scheduler lock: a flock is
shared by every copy of its descriptor), never touches the parent's database connection
or HTTP client, freezes the garbage collector so no parent object is finalised here, and
ends with ``os._exit``.
"""

from __future__ import annotations

import gc
import logging
import os
import signal

from scheduler.logs import LOGGER_NAME
from wrapper import main as wrapper_main

#: Handlers the daemon may have set; SIGPIPE stays ignored, as Python sets it up.
RESET_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD,
                 signal.SIGUSR1, signal.SIGUSR2)


def become_wrapper(settings, task_id: str, token: str) -> None:
    """Turn this forked child into the task's wrapper; never returns."""
    code = 70
    try:
        forget_parent(keep=())
        code = wrapper_main.supervise(settings, task_id, token)
    except BaseException:
        code = 70
    finally:
        os._exit(code)


def forget_parent(keep: tuple[int, ...]) -> None:
    """Leave the parent's session, signal handlers, log handlers and descriptors behind
    (all but ``keep``); stdin/stdout/stderr become /dev/null."""
    gc.freeze()
    os.setsid()
    signal.set_wakeup_fd(-1)
    for signum in RESET_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    logging.getLogger(LOGGER_NAME).handlers.clear()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, max_fd())


def max_fd() -> int:
    """One past the highest open descriptor (cheaper than closing up to SC_OPEN_MAX)."""
    try:
        return max(map(int, os.listdir("/proc/self/fd"))) + 1
    except (OSError, ValueError):
        return os.sysconf("SC_OPEN_MAX")
