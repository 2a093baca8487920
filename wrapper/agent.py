"""Starting the agent process and waiting for it, without a shell.

The agent is forked, starts its own session (its own process group), and then waits on a
gate pipe: the wrapper records the agent's pid in the lease first and only then opens
the gate, so an agent never works unrecorded. A close-on-exec error pipe tells the
wrapper whether the exec succeeded. The agent inherits one duplicate of the lease's
liveness-lock descriptor (same open file description, same flock), so a wrapper killed
with SIGKILL leaves the lock held for as long as its agent lives. Resource limits
(setrlimit) are applied in the child just before the exec, so they bind the agent alone.
"""

from __future__ import annotations

import os
import resource
import select
import shutil
import signal
import time

from scheduler.workspace.limits import apply as apply_rlimits

_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                    signal.SIGXFSZ, signal.SIGCHLD)


class AgentProcess:
    """A forked, gated agent. ``start`` -> ``release`` -> ``wait``/``poll``."""

    def __init__(self, argv: list[str], *, env: dict, cwd, output_fd: int,
                 lock_fd: int | None,
                 rlimits: list[tuple[int, int, int]] | None = None) -> None:
        self.argv = argv
        self.returncode: int | None = None
        self.rusage: resource.struct_rusage | None = None
        program = _find_program(argv[0], env) if argv else None
        gate_r, self._gate_w = os.pipe()
        self._error_r, error_w = os.pipe()  # both ends close-on-exec
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self._gate_w)
            os.close(self._error_r)
            _child(program, argv, env, cwd, output_fd, lock_fd, gate_r, error_w,
                   list(rlimits or ()))
        os.close(gate_r)
        os.close(error_w)
        self._pidfd = _pidfd(self.pid)

    def release(self) -> str | None:
        """Open the gate; None once the agent has exec'd, else why it could not start."""
        try:
            os.write(self._gate_w, b"g")
        except BrokenPipeError:  # the child is gone already; its error pipe says why
            pass
        os.close(self._gate_w)
        self._gate_w = -1
        with os.fdopen(self._error_r, "rb") as pipe:
            error = pipe.read()
        if error:
            self.wait()
            return error.decode(errors="replace")
        return None

    def abort(self) -> None:
        """Never open the gate: the child exits without running anything."""
        if self._gate_w >= 0:
            os.close(self._gate_w)
            self._gate_w = -1
        os.close(self._error_r)
        self.wait()

    def fileno(self) -> int | None:
        """A descriptor that becomes readable when the agent exits (pidfd), if available."""
        return self._pidfd

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid:
                self._reaped(status, usage)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds (None = forever); the return code or None."""
        if timeout is None:
            if self.returncode is None:
                _, status, usage = os.wait4(self.pid, 0)
                self._reaped(status, usage)
            return self.returncode
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self._pidfd is not None:
                select.select([self._pidfd], [], [], remaining)
            else:
                time.sleep(min(remaining, 0.02))
        return self.returncode

    def _reaped(self, status: int, usage: resource.struct_rusage) -> None:
        self.returncode = os.waitstatus_to_exitcode(status)
        self.rusage = usage
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the agent and the children it waited for used."""
        if self.rusage is None:
            return None
        return self.rusage.ru_utime + self.rusage.ru_stime

    def signal_group(self, signum: int) -> bool:
        """Signal the agent's whole process group (it leads its own session).
        True when some process of the group was there to receive it."""
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            return False
        return True


def _find_program(name: str, env: dict) -> str | None:
    """The executable the agent's PATH gives for ``name``, searched before the fork
    instead of the child trying an exec in each directory. None leaves the search to the
    child's ``execvpe`` (whose error then names what is wrong), as does a relative PATH
    entry: it means the agent's working directory, which only the child has."""
    if os.sep in name:
        return name
    found = shutil.which(name, path=env.get("PATH", os.defpath))
    return found if found and os.path.isabs(found) else None


def _child(program, argv, env, cwd, output_fd, lock_fd, gate_r, error_w, rlimits) -> None:
    """In the forked child: detach, wait for the gate, exec. Never returns.

    A failure before the gate opens is reported only once the wrapper has decided (gate
    opened or closed): the child never exits while the wrapper may still write the gate.
    """
    past_gate = False
    try:
        os.setsid()
        for signum in _DEFAULT_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(output_fd, 1)
        os.dup2(output_fd, 2)
        keep = {gate_r, error_w}
        if lock_fd is not None:
            os.set_inheritable(lock_fd, True)
            keep.add(lock_fd)
        for fd in _open_fds():
            if fd > 2 and fd not in keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
        os.chdir(cwd)
        past_gate = True
        if not os.read(gate_r, 1):  # the wrapper died before recording us
            os._exit(127)
        os.close(gate_r)
        apply_rlimits(rlimits)
        if program is not None:
            try:
                os.execve(program, argv, env)
            except OSError:  # e.g. not a format the kernel runs: execvpe tries further
                pass
        os.execvpe(argv[0], argv, env)
    except BaseException as exc:  # report why, then leave
        try:
            os.write(error_w, f"cannot start {argv[0]!r}: {exc}".encode()[:500])
            if not past_gate:
                os.read(gate_r, 1)
        except BaseException:
            pass
    os._exit(127)


def _open_fds() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return list(range(3, 256))


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
