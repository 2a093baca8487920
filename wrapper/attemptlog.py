"""The attempt log: the wrapper's notes and the agent's output, in one private file,
capped at ``ATTEMPT_LOG_MAX_MB``.

Uncapped (0), the agent writes straight into the file. Capped, the agent writes into a
pipe and the wrapper copies it over: the first quarter of the cap is kept as it came, then
a marker line, then a rolling tail of the latest output. When the tail region reaches
twice its size, its newest half is moved back to just after the marker and the file is
truncated, so the file never exceeds the cap, the newest output is always kept, and each
byte is written at most twice. The marker says how many bytes were left out.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from scheduler.fsutil import open_private

#: The pipe's buffer, so a fast writer seldom waits for the wrapper.
PIPE_BYTES = 1 << 20
#: How much the wrapper reads from the agent's pipe at a time (a full pipe at once).
CHUNK = PIPE_BYTES
_MARKER = ("\n[tinyscheduler] ... {:>15} bytes of output left out here "
           "(ATTEMPT_LOG_MAX_MB) ...\n")


class AttemptLog:
    """One attempt's log file, opened without following a link, created 0600."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        capped = max_bytes > 0
        self.fd = open_private(path, os.O_RDWR | (0 if capped else os.O_APPEND))
        self.size = os.lseek(self.fd, 0, os.SEEK_END)
        self.received = 0  #: bytes written through this object (notes and agent output)
        self.omitted = 0
        self._marker_at: int | None = None
        marker_len = len(_MARKER.format(0).encode())
        self._head = max_bytes // 4
        self._tail = max(1, (max_bytes - self._head - marker_len) // 2)
        if capped and self.size >= self._head:  # a log reused by a rerun: start capped
            self._start_tail()
        self._pipe_r: int | None = None

    # --- the agent's side ----------------------------------------------------------------

    def agent_output(self) -> int:
        """The descriptor to give the agent as stdout and stderr. Capped, the write end of
        a pipe the caller must close once the agent has it; uncapped, the file itself."""
        if self.max_bytes <= 0:
            return self.fd
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        os.set_blocking(read_end, False)
        self._pipe_r = read_end
        return write_end

    def fileno(self) -> int | None:
        """The pipe to watch for the agent's output (None when the agent writes directly)."""
        return self._pipe_r

    def pump(self, limit: int = 8 * CHUNK) -> int:
        """Copy what the agent has written so far, up to ``limit`` bytes; the number of
        bytes copied. Never blocks; stops at end of file (the pipe is then closed), when
        nothing is left, or at ``limit`` (a writer that never stops cannot hold it)."""
        copied = 0
        while self._pipe_r is not None and copied < limit:
            try:
                chunk = os.read(self._pipe_r, CHUNK)
            except BlockingIOError:
                break
            if not chunk:
                os.close(self._pipe_r)
                self._pipe_r = None
                break
            try:
                self.write(chunk)
            except OSError:  # e.g. a full disk: the output is lost, the agent goes on
                self.omitted += len(chunk)
            copied += len(chunk)
        return copied

    def progress(self) -> int:
        """A number that grows whenever the agent writes (for the idle timeout)."""
        if self.max_bytes > 0:
            return self.received
        try:
            return os.fstat(self.fd).st_size
        except OSError:
            return 0

    # --- writing --------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self.received += len(data)
        if self.max_bytes <= 0:
            _write_all(self.fd, data)
            return
        if self._marker_at is None:
            room = self._head - self.size
            if len(data) <= room:
                self._append(data)
                return
            self._append(data[:max(room, 0)])
            data = data[max(room, 0):]
            self._start_tail()
        if len(data) > self._tail:
            self.omitted += len(data) - self._tail
            data = data[-self._tail:]
        region_start = self._marker_end()
        region = self.size - region_start
        if region + len(data) > 2 * self._tail:
            keep = self._tail - len(data)
            if keep > 0:
                _copy_within(self.fd, self.size - keep, region_start, keep)
            self.omitted += region - max(keep, 0)
            self.size = region_start + max(keep, 0)
            os.ftruncate(self.fd, self.size)
            os.lseek(self.fd, self.size, os.SEEK_SET)
            self._update_marker()
        self._append(data)

    def _start_tail(self) -> None:
        self._marker_at = self.size
        self._append(_MARKER.format(self.omitted).encode())

    def _marker_end(self) -> int:
        assert self._marker_at is not None
        return self._marker_at + len(_MARKER.format(0).encode())

    def _update_marker(self) -> None:
        if self._marker_at is not None:
            os.pwrite(self.fd, _MARKER.format(self.omitted).encode(), self._marker_at)

    def _append(self, data: bytes) -> None:
        if data:
            _write_all(self.fd, data)
            self.size += len(data)

    # --- reading back ---------------------------------------------------------------------

    def tail(self, limit: int) -> bytes:
        """The last ``limit`` bytes of the file, read through the open descriptor."""
        try:
            size = os.fstat(self.fd).st_size
            return os.pread(self.fd, limit, max(0, size - limit))
        except OSError:
            return b""

    def close(self) -> None:
        if self._pipe_r is not None:
            self.pump()
        if self._pipe_r is not None:
            os.close(self._pipe_r)
            self._pipe_r = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _copy_within(fd: int, source: int, target: int, length: int) -> None:
    """Copy ``length`` bytes at ``source`` to ``target`` (an earlier, non-overlapping
    range) in the kernel when it can, else through memory."""
    done = 0
    try:
        while done < length:
            copied = os.copy_file_range(fd, fd, length - done, source + done, target + done)
            if copied == 0:
                break
            done += copied
    except (AttributeError, OSError):
        pass
    while done < length:
        chunk = os.pread(fd, min(length - done, 1 << 24), source + done)
        if not chunk:
            raise OSError(f"attempt log shrank while being compacted at {source + done}")
        os.pwrite(fd, chunk, target + done)
        done += len(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
