"""Turning a freshly forked child of the scheduler into a task's wrapper.

Both fork launchers end here: ``launcher.ForkLauncher`` (one pass) with
:func:`become_wrapper`, the daemon's ``forkserver`` with :func:`serve_tasks` (a wrapper
that may go on to supervise further tasks, one after another). The child starts its own
session (its own process group, no terminal), resets the signal handlers the scheduler
may have set, points stdin/stdout/stderr at /dev/null, closes every inherited descriptor
(above all the scheduler lock: a flock is shared by every copy of its descriptor), never
touches the parent's database connection or HTTP client, freezes the garbage collector
so no parent object is finalised here, and ends with ``os._exit``.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import threading

from scheduler.logs import LOGGER_NAME
from scheduler.state.leases import LeaseStore
from wrapper import main as wrapper_main
from wrapper import title

#: A warm wrapper exits after this many tasks (whatever a long life accumulates goes).
MAX_TASKS_PER_WRAPPER = 100
#: What a wrapper that finished its task says to the fork server.
READY = b"ready"
#: The longest message between the daemon, its fork server and its wrappers.
MAX_MESSAGE = 512

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


def serve_tasks(settings, channel: socket.socket, task_id: str, token: str) -> None:
    """Be the wrapper of this task, then of each next one the fork server sends over
    ``channel``; never returns.

    After a task, the process offers itself again (``ready``) only when that task left
    nothing in it (see :func:`_left_nothing`) and it has served fewer than
    ``MAX_TASKS_PER_WRAPPER``; otherwise it exits, as every wrapper used to. It also
    exits when the server closes the channel (an idle wrapper retired, or the server
    gone) or a message cannot be sent.
    """
    code = 70
    try:
        keep = (channel.fileno(),)
        forget_parent(keep=keep)
        served = 0
        while True:
            code = wrapper_main.supervise(settings, task_id, token)
            served += 1
            if (not settings.warm_wrapper_sec or served >= MAX_TASKS_PER_WRAPPER
                    or not _left_nothing(settings, task_id, keep)):
                break
            title.set_title(title.IDLE_TITLE)
            try:
                channel.send(READY)
                request = channel.recv(MAX_MESSAGE)
            except OSError:  # the server is gone
                break
            if not request:
                break
            task_id, token = parse_request(request)
    except BaseException:
        code = 70
    finally:
        os._exit(code)


def parse_request(request: bytes) -> tuple[str, str]:
    """``<task id>\\0<token>`` -> (task id, token)."""
    task_id, _, token = request.decode(errors="replace").partition("\0")
    return task_id, token


def _left_nothing(settings, task_id: str, keep: tuple[int, ...]) -> bool:
    """True when nothing of the ended task lives on in this process: no thread runs, no
    descriptor is open but 0-2 and ``keep`` (above all no liveness lock: a flock lives
    as long as any copy of its descriptor), and the task's lease is gone or another
    process's (a lease left naming a living process would not be reclaimed)."""
    if threading.active_count() != 1 or _open_descriptors() != {0, 1, 2, *keep}:
        return False
    try:
        lease = LeaseStore(settings.running_dir).read(task_id, quarantine=False)
    except OSError:
        return False
    return lease is None or lease.pid != os.getpid()


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
    close_descriptors(keep)


def close_descriptors(keep: tuple[int, ...]) -> None:
    """Close every descriptor above 2 but ``keep``."""
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, max_fd())


def _open_descriptors() -> set[int]:
    """This process's open descriptors ({-1} when /proc cannot tell)."""
    try:
        listed = [int(name) for name in os.listdir("/proc/self/fd")]
    except (OSError, ValueError):
        return {-1}  # unknown: never equal to an expected set
    return {fd for fd in listed if _is_open(fd)}  # the listing's own is closed by now


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def max_fd() -> int:
    """One past the highest open descriptor (cheaper than closing up to SC_OPEN_MAX)."""
    try:
        return max(map(int, os.listdir("/proc/self/fd"))) + 1
    except (OSError, ValueError):
        return os.sysconf("SC_OPEN_MAX")
