"""Resource limits of an agent, applied with setrlimit in the agent's own process just
before it execs (so nothing outside the agent is limited), and the naming of the limit
that stopped an agent: ``killed: CPU limit 60 s`` rather than a bare signal number.

Values: the agent's own (agent-control entry) else the global AGENT_* setting; 0 = none.
"""

from __future__ import annotations

import resource
import signal
from dataclasses import dataclass
from typing import Any

#: RLIMIT_CPU: SIGXCPU at the limit, SIGKILL this many seconds later.
CPU_KILL_AFTER_SEC = 5
_MB = 1024 * 1024
#: What an agent's output says when an allocation failed (Python, C/C++, node, JVM, libc).
MEMORY_MARKERS = ("MemoryError", "out of memory", "Cannot allocate memory", "bad_alloc",
                  "OutOfMemoryError", "heap out of memory", "could not reserve")


@dataclass(frozen=True)
class Limits:
    memory_mb: int = 0
    cpu_sec: int = 0
    file_mb: int = 0
    open_files: int = 0

    def __bool__(self) -> bool:
        return any((self.memory_mb, self.cpu_sec, self.file_mb, self.open_files))

    def describe(self) -> str:
        parts = [f"memory {self.memory_mb} MB" if self.memory_mb else "",
                 f"CPU {self.cpu_sec} s" if self.cpu_sec else "",
                 f"file size {self.file_mb} MB" if self.file_mb else "",
                 f"open files {self.open_files}" if self.open_files else ""]
        return ", ".join(p for p in parts if p) or "none"


#: No limit at all.
NONE = Limits()


def effective(settings: Any, resources: Any = None) -> Limits:
    """The agent's limits: its agent-control values where set, else the global settings."""
    def pick(own: int | None, default: int) -> int:
        return default if own is None else own

    return Limits(
        memory_mb=pick(getattr(resources, "memory_mb", None), settings.agent_memory_max_mb),
        cpu_sec=pick(getattr(resources, "cpu_sec", None), settings.agent_cpu_max_sec),
        file_mb=pick(getattr(resources, "file_mb", None), settings.agent_file_max_mb),
        open_files=pick(getattr(resources, "open_files", None),
                        settings.agent_open_files_max),
    )


def rlimits(limits: Limits) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) triples for :func:`apply`."""
    wanted = []
    if limits.memory_mb:
        wanted.append((resource.RLIMIT_AS, limits.memory_mb * _MB, limits.memory_mb * _MB))
    if limits.cpu_sec:
        wanted.append((resource.RLIMIT_CPU, limits.cpu_sec, limits.cpu_sec + CPU_KILL_AFTER_SEC))
    if limits.file_mb:
        wanted.append((resource.RLIMIT_FSIZE, limits.file_mb * _MB, limits.file_mb * _MB))
    if limits.open_files:
        wanted.append((resource.RLIMIT_NOFILE, limits.open_files, limits.open_files))
    return wanted


def apply(triples: list[tuple[int, int, int]]) -> None:
    """setrlimit each (in the agent's child, before exec); never above the current hard
    limit (only root may raise it)."""
    for which, soft, hard in triples:
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:
            hard = min(hard, current_hard)
            soft = min(soft, hard)
        resource.setrlimit(which, (soft, hard))


def name_the_limit(limits: Limits, *, exit_code: int | None, signum: int | None,
                   cpu_sec: float | None, tail: str, sandboxed: bool = False) -> str | None:
    """Which limit stopped the agent, if one can be told from how it ended: its signal,
    the CPU time it used, or what its last output says. None when it was none of them."""
    if not limits:
        return None
    if signum is None and sandboxed and exit_code is not None and exit_code > 128:
        signum = exit_code - 128  # bubblewrap reports a signal death as 128 + signal
    if limits.cpu_sec and (signum == signal.SIGXCPU or (
            signum == signal.SIGKILL and cpu_sec is not None and cpu_sec >= limits.cpu_sec)):
        return f"CPU limit {limits.cpu_sec} s"
    if limits.file_mb and (signum == signal.SIGXFSZ or "File too large" in tail):
        return f"file size limit {limits.file_mb} MB"
    if limits.memory_mb and (
            signum in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGKILL)
            or any(marker in tail for marker in MEMORY_MARKERS)):
        return f"memory limit {limits.memory_mb} MB"
    if limits.open_files and "Too many open files" in tail:
        return f"open files limit {limits.open_files}"
    return None
