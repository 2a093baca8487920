"""Running a helper command (git, a hook) bounded in time and output, without a shell.

The command runs in its own session; at its deadline its process group gets SIGTERM, then
SIGKILL after a grace period. While it runs, ``tick`` is called every ``tick_every``
seconds (the wrapper heartbeats its lease there); a tick returning False stops it.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Most output kept in memory per command; the rest is counted, not kept.
MAX_OUTPUT_BYTES = 4 * 1024 * 1024
#: How much of the output's end is kept for error messages.
TAIL_BYTES = 2048

Tick = Callable[[], bool]


@dataclass(frozen=True)
class Finished:
    """How a bounded command ended."""

    returncode: int | None  #: None when it could not start
    output: bytes  #: stdout and stderr together, at most MAX_OUTPUT_BYTES
    timed_out: bool = False
    stopped: bool = False  #: a tick asked to stop it
    error: str = ""  #: why it could not start

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.stopped

    def tail(self, lines: int = 10) -> str:
        text = self.output[-TAIL_BYTES:].decode(errors="replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    def describe(self, timeout: float) -> str:
        """``exited 3`` / ``timed out after 5 s (killed)`` / ``killed by signal 9`` ..."""
        if self.error:
            return f"could not start: {self.error}"
        if self.timed_out:
            return f"timed out after {timeout:g} s (killed)"
        if self.stopped:
            return "stopped: the lease was lost"
        if self.returncode is not None and self.returncode < 0:
            return f"killed by signal {-self.returncode}"
        return f"exited {self.returncode}"


def run_bounded(argv: Sequence[str], *, cwd: Path | str, env: Mapping[str, str],
                timeout: float, grace: float = 5.0,
                sink: Callable[[bytes], None] | None = None,
                tick: Tick | None = None, tick_every: float = 15.0,
                die_with_parent: bool = False) -> Finished:
    """Run ``argv``; hand its output to ``sink`` (if given) and keep it; never raises
    for the command's own failure. ``die_with_parent``: the command gets SIGKILL if this
    process dies first (nobody would enforce its time bound any more)."""
    try:
        proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                preexec_fn=_die_with(os.getpid()) if die_with_parent else None)
    except OSError as exc:
        return Finished(None, b"", error=f"{argv[0]}: {exc.strerror or exc}")
    assert proc.stdout is not None
    kept = bytearray()
    try:
        timed_out, stopped = _pump(proc, kept, timeout, sink, tick, tick_every)
        if timed_out or stopped:
            _stop_group(proc, grace)
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            _stop_group(proc, 0)
    return Finished(proc.returncode, bytes(kept), timed_out=timed_out, stopped=stopped)


def _pump(proc: subprocess.Popen, kept: bytearray, timeout: float,
          sink: Callable[[bytes], None] | None,
          tick: Tick | None, tick_every: float) -> tuple[bool, bool]:
    """Copy output until the command ends; (timed out, stopped by a tick)."""
    assert proc.stdout is not None
    pipe = proc.stdout.fileno()
    os.set_blocking(pipe, False)
    start = time.monotonic()
    deadline = start + timeout
    next_tick = start + tick_every if tick is not None else float("inf")
    open_pipe = True
    while True:
        now = time.monotonic()
        if now >= deadline:
            return True, False
        if tick is not None and now >= next_tick:
            next_tick = now + tick_every
            if not tick():
                return False, True
        wait = max(0.0, min(deadline, next_tick) - now)
        if not open_pipe:
            try:
                proc.wait(timeout=min(wait, 0.5))
                return False, False
            except subprocess.TimeoutExpired:
                continue
        if not select.select([pipe], [], [], wait)[0]:
            continue
        chunk = _read(pipe)
        if chunk is None:
            continue
        if not chunk:
            open_pipe = False
            continue
        if sink is not None:
            sink(chunk)
        if len(kept) < MAX_OUTPUT_BYTES:
            kept += chunk[:MAX_OUTPUT_BYTES - len(kept)]


def _die_with(parent: int):
    """In the child, before exec: SIGKILL when ``parent`` dies (Linux prctl
    PR_SET_PDEATHSIG); if it is already gone, exit at once."""
    def arm() -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return arm


def _read(fd: int) -> bytes | None:
    """A chunk; b"" at end of file; None when nothing is there yet."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def _stop_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the command's process group, SIGKILL after ``grace`` seconds; reap it."""
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        if grace <= 0 and signum == signal.SIGTERM:
            continue
        try:
            os.killpg(proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=wait)
            if signum == signal.SIGTERM:
                # the leader is gone; whatever it left in its group goes too
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            return
        except subprocess.TimeoutExpired:
            continue
