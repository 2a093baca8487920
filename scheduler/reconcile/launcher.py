"""Starting wrapper processes, detached from the scheduler.

``ForkLauncher`` (the default for ``run --once``, ``SPAWN_MODE=fork``) forks the wrapper
from the scheduler's already initialised interpreter, the way a pre-forking worker does:
about 1 ms instead of the ~150 ms an exec'd Python pays for start-up and imports. It
double-forks (the wrapper is re-parented to init, the scheduler reaps only the
short-lived middle process); ``detach.become_wrapper`` turns the child into the wrapper.
The caller must not have other threads when it forks, and must have released what a
child must not inherit (``prepare``).

``run --daemon`` uses ``forkserver.ForkServer`` instead: the same wrapper, forked by a
helper process so the daemon itself never forks per task.

``ExecLauncher`` (``SPAWN_MODE=exec``) runs the ``tinyscheduler-wrapper`` console script
as a fresh process instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Protocol

from scheduler.reconcile.detach import become_wrapper
from wrapper import main as wrapper_main


class Launcher(Protocol):
    def launch(self, task_id: str, token: str, lease_path: str) -> int | None:
        """Start the wrapper for this lease; its pid, or None when the launch goes on
        without the caller (failures are then reported by ``failures()``, when the
        launcher has it). Raises OSError on failure."""

    def prepare(self, source) -> None:
        """Before the launches of a pass: let ``source`` release what a forked child must
        not inherit, if this launcher forks."""

    def reap(self) -> None:
        """Collect exited children, if the launcher keeps any."""

    def close(self) -> None:
        """Stop whatever helper process the launcher keeps."""


class ForkLauncher:
    def __init__(self, settings) -> None:
        self.settings = settings

    def prepare(self, source) -> None:
        source.before_fork()

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

    def close(self) -> None:
        return None


def _be_the_middle(settings, task_id: str, token: str, read_end: int, write_end: int) -> None:
    """The middle process: fork the wrapper (it starts its own session), tell its pid, leave.
    Never returns. (A function of its own, so coverage measures it in the child.)"""
    code = 0
    try:
        os.close(read_end)
        wrapper_pid = os.fork()
        if wrapper_pid == 0:
            os.close(write_end)
            become_wrapper(settings, task_id, token)
        os.write(write_end, str(wrapper_pid).encode())
    except BaseException:
        code = 1
    finally:
        os._exit(code)


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

    def prepare(self, source) -> None:
        return None

    def reap(self) -> None:
        self._children = [child for child in self._children if child.poll() is None]

    def close(self) -> None:
        return None


def make_launcher(settings, mode: str = "once") -> Launcher:
    """The launcher for ``SPAWN_MODE`` and the run mode (``once`` or ``daemon``)."""
    if settings.spawn_mode == "exec":
        return ExecLauncher(settings)
    if mode == "daemon":
        from scheduler.reconcile.forkserver import ForkServer

        return ForkServer(settings)
    return ForkLauncher(settings)
