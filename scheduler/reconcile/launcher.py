"""Starting wrapper processes, detached from the scheduler.

``ForkLauncher`` (the default, ``SPAWN_MODE=fork``) forks the wrapper from the scheduler's
already initialised interpreter, the way a pre-forking worker does: about 1 ms instead of
the ~150 ms an exec'd Python pays for start-up and imports, which is what lets short
tasks run at tens per second on two cores. It double-forks (the wrapper is re-parented
to init, the scheduler reaps only the short-lived middle process), and the wrapper side
starts a new session, resets signal handlers, points stdin/stdout/stderr at /dev/null,
closes every inherited descriptor (above all the scheduler lock: a flock is shared by
every copy of its descriptor), never touches the parent's SQLite connection or HTTP
client, freezes the garbage collector so no parent object is finalised in the child, and
ends with ``os._exit``. The caller must not have other threads when it forks.

``ExecLauncher`` (``SPAWN_MODE=exec``) runs the ``tinyscheduler-wrapper`` console script
as a fresh process instead.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
from typing import Protocol

from scheduler.logs import LOGGER_NAME
from wrapper import main as wrapper_main

#: Handlers the daemon may have set; SIGPIPE stays ignored, as Python sets it up.
_RESET_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD,
                  signal.SIGUSR1, signal.SIGUSR2)


class Launcher(Protocol):
    def launch(self, task_id: str, token: str, lease_path: str) -> int:
        """Start the wrapper for this lease; return its pid. Raises OSError on failure."""

    def reap(self) -> None:
        """Collect exited children, if the launcher keeps any."""


class ForkLauncher:
    def __init__(self, settings) -> None:
        self.settings = settings

    def launch(self, task_id: str, token: str, lease_path: str) -> int:
        wrapper_main.preload()  # once: every forked wrapper starts with its modules loaded
        read_end, write_end = os.pipe()
        middle = os.fork()
        if middle == 0:
            _be_the_middle(self.settings, task_id, token, read_end, write_end)
        os.close(write_end)
        try:
            data = os.read(read_end, 32)
        finally:
            os.close(read_end)
            os.waitpid(middle, 0)
        if not data:
            raise OSError("the wrapper could not be forked")
        return int(data)

    def reap(self) -> None:
        return None


def _be_the_middle(settings, task_id: str, token: str, read_end: int, write_end: int) -> None:
    """The middle process: start the wrapper in a new session, tell its pid, leave.
    Never returns. (A function of its own, so coverage measures it in the child.)"""
    code = 0
    try:
        os.close(read_end)
        os.setsid()
        wrapper_pid = os.fork()
        if wrapper_pid == 0:
            os.close(write_end)
            _become_wrapper(settings, task_id, token)
        os.write(write_end, str(wrapper_pid).encode())
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _become_wrapper(settings, task_id: str, token: str) -> None:
    """Turn this forked child into the task's wrapper; never returns."""
    code = 70
    try:
        gc.freeze()
        signal.set_wakeup_fd(-1)
        for signum in _RESET_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        logging.getLogger(LOGGER_NAME).handlers.clear()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, _max_fd())
        code = wrapper_main.supervise(settings, task_id, token)
    except BaseException:
        code = 70
    finally:
        os._exit(code)


def _max_fd() -> int:
    """One past the highest open descriptor (cheaper than closing up to SC_OPEN_MAX)."""
    try:
        return max(map(int, os.listdir("/proc/self/fd"))) + 1
    except (OSError, ValueError):
        return os.sysconf("SC_OPEN_MAX")


class ExecLauncher:
    """Runs ``python -m wrapper.main`` as a new process in its own session."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self._children: list[subprocess.Popen] = []

    def launch(self, task_id: str, token: str, lease_path: str) -> int:
        argv = [sys.executable, "-m", "wrapper.main", "--lease", lease_path, "--token", token]
        if self.settings.env_file is not None:
            argv += ["--env-file", str(self.settings.env_file.resolve())]
        if self.settings.origins.get("BASE_PATH") == "flag":
            argv += ["--base-path", str(self.settings.base_path)]
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True,
                                 close_fds=True, cwd=self.settings.base_path)
        self._children.append(child)
        return child.pid

    def reap(self) -> None:
        self._children = [child for child in self._children if child.poll() is None]


def make_launcher(settings) -> Launcher:
    if settings.spawn_mode == "exec":
        return ExecLauncher(settings)
    return ForkLauncher(settings)
