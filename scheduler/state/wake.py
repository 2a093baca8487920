"""The daemon's wake-up channel: a unix datagram socket in the state directory.

Wrappers (as they free their slot) and task changes (``task add`` and friends) call
:func:`nudge`; a daemon waiting in :meth:`WakeSocket.wait` returns at once instead of
sleeping out its interval. A nudge with no daemon listening is a no-op.
"""

from __future__ import annotations

import os
import select
import socket
from pathlib import Path


def nudge(path: Path) -> bool:
    """Wake the daemon listening on ``path``, if any. Never raises; True if delivered."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(b"wake", str(path))
        return True
    except OSError:
        return False


class WakeSocket:
    """The daemon's end: bind, wait with a timeout, drain."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # Created 0600 by the umask itself: a chmod after bind would follow a link
        # swapped in meanwhile. (The daemon binds before it starts any thread.)
        previous = os.umask(0o177)
        try:
            self._sock.bind(str(path))
        finally:
            os.umask(previous)
        self._sock.setblocking(False)

    def fileno(self) -> int:
        return self._sock.fileno()

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True if woken by a nudge (all pending drained)."""
        ready, _, _ = select.select([self._sock], [], [], max(timeout, 0.0))
        if not ready:
            return False
        self.drain()
        return True

    def pending(self) -> bool:
        """Is a nudge waiting (without taking it)?"""
        ready, _, _ = select.select([self._sock], [], [], 0)
        return bool(ready)

    def drain(self) -> None:
        while True:
            try:
                self._sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return

    def close(self) -> None:
        self._sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
