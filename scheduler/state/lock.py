"""The scheduler lock: at most one scheduler pass (or daemon) per state directory.

A flock on LOCK_FILE, taken without waiting. The holder's pid, host and start time are
written next to it (``<lock file>.holder``) so a second scheduler can say who holds it.
The lock file itself is never deleted: unlinking a flocked file would let a second
process lock a fresh file of the same name while the first still holds the old one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from scheduler import clock
from scheduler.errors import EXIT_OK, TinySchedulerError
from scheduler.fsutil import (
    atomic_write,
    ensure_private_dir,
    kernel_flock,
    read_private,
)


class SchedulerLockHeld(TinySchedulerError):
    """Another scheduler holds the lock; not a failure (exit code 0)."""

    exit_code = EXIT_OK


class SchedulerLock:
    """A lock on ``path`` taken without waiting, with a note about its holder."""

    def __init__(self, path: Path, host: str) -> None:
        self.path = Path(path)
        self.host = host
        self.holder_path = self.path.with_name(self.path.name + ".holder")
        self._fd: int | None = None
        self._lock = kernel_flock(self.path, self._remember_fd)

    def _remember_fd(self, fd: int) -> None:
        self._fd = fd

    def try_acquire(self) -> bool:
        """Take the lock if free (no waiting) and record the holder. True when taken."""
        if self._lock.is_locked:
            return True
        ensure_private_dir(self.path.parent)
        if not self._lock.acquire(timeout=0):
            return False
        try:
            info = {"pid": os.getpid(), "host": self.host, "since": clock.to_iso(clock.now())}
            atomic_write(self.holder_path, (json.dumps(info) + "\n").encode(), durable=False)
        except BaseException:
            self.release()
            raise
        return True

    def release(self) -> None:
        """Release the lock (the lock file stays). The holder note goes first, while we
        still hold the lock, so it never describes the next holder wrongly."""
        if not self._lock.is_locked:
            return
        try:
            os.unlink(self.holder_path)
        except OSError:  # gone, or something planted there: the note is only advisory
            pass
        finally:
            self._lock.release()
            self._fd = None

    @property
    def is_locked(self) -> bool:
        return self._lock.is_locked

    def fileno(self) -> int | None:
        """The locked descriptor (a forked child must close it), or None when not held."""
        return self._fd if self._lock.is_locked else None

    def holder(self) -> dict[str, Any] | None:
        """What the current holder wrote about itself, or None (missing or garbage)."""
        try:
            data = json.loads(read_private(self.holder_path))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        pid, host, since = data.get("pid"), data.get("host"), data.get("since")
        if (isinstance(pid, bool) or not isinstance(pid, int) or not isinstance(host, str)
                or not isinstance(since, str)):
            return None
        return {"pid": pid, "host": host, "since": since}

    def describe_holder(self) -> str:
        """E.g. ``held by pid 42 on worker-01 since 2025-01-31T12:00:00.000Z``."""
        info = self.holder()
        if info is None:
            return f"held by an unknown process (no holder information in {self.holder_path})"
        return f"held by pid {info['pid']} on {info['host']} since {info['since']}"

    def __enter__(self) -> SchedulerLock:
        if not self.try_acquire():
            raise SchedulerLockHeld(f"scheduler lock {self.path} is {self.describe_holder()}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
