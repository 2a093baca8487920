"""Reading the per-attempt logs the wrapper writes (``LOG_DIR/tasks/<id>/attempt-<n>.log``):
which attempts exist, a chunk from an offset, the last output line, the outcome line.

Task ids are validated before they touch a path, and log files are opened without
following symlinks.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from scheduler.names import check_name

ATTEMPT_NAME = re.compile(r"attempt-([1-9][0-9]{0,8})\.log")
#: The wrapper's own lines start with this; everything else is the agent's output.
WRAPPER_PREFIX = "[tinyscheduler "
OUTCOME_LINE = re.compile(r"^\[tinyscheduler [^\]]*\] (outcome .*)$", re.MULTILINE)
#: How much of a log's end is read to find its last line.
TAIL_BYTES = 4096


def attempt_path(task_log_dir: Path, task_id: str, attempt: int) -> Path:
    """The log of one attempt; ``task_id`` is validated (it becomes a path component)."""
    return task_log_dir / check_name(task_id) / f"attempt-{int(attempt)}.log"


def attempts(task_log_dir: Path, task_id: str) -> list[int]:
    """The attempt numbers that have a log, in order."""
    try:
        names = os.listdir(task_log_dir / check_name(task_id))
    except OSError:
        return []
    found = (ATTEMPT_NAME.fullmatch(name) for name in names)
    return sorted(int(m.group(1)) for m in found if m)


def read_chunk(path: Path, offset: int, limit: int = 1 << 20) -> tuple[bytes, int] | None:
    """Up to ``limit`` bytes from ``offset`` and the offset after them; None when the file
    does not exist (or is a symlink). A file shorter than ``offset`` is read from 0."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if offset > size:
            offset = 0
        data = os.pread(fd, min(limit, max(size - offset, 0)), offset)
    finally:
        os.close(fd)
    return data, offset + len(data)


def tail(path: Path, limit: int = TAIL_BYTES) -> str:
    """The last ``limit`` bytes of a log as text ("" when missing)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, limit, max(0, size - limit))
    finally:
        os.close(fd)
    return data.decode("utf-8", errors="replace")


def last_output_line(path: Path) -> str | None:
    """The agent's last non-empty output line (the wrapper's own lines skipped), or the
    wrapper's last line when the agent printed nothing yet; None when there is none."""
    lines = [line.strip() for line in tail(path).splitlines() if line.strip()]
    agent_lines = [line for line in lines if not line.startswith(WRAPPER_PREFIX)]
    if agent_lines:
        return agent_lines[-1]
    return lines[-1] if lines else None


def outcome(text: str) -> str | None:
    """The wrapper's ``outcome ...`` line in a log's text, e.g. ``outcome succeeded, exit
    code 0, 0.52 s``; None while the attempt has not ended (or was reclaimed)."""
    found = OUTCOME_LINE.findall(text)
    return found[-1] if found else None


def running_attempt(running_dir: Path, task_id: str) -> int | None:
    """The attempt number of the task's lease, or None when it has none (read-only: a
    lease that cannot be read counts as none and is left where it is)."""
    import json

    path = running_dir / f"task_{check_name(task_id)}.json"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            data = json.loads(handle.read(1 << 16))
        attempt = data.get("attempt") if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None
    return attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None


def follow(task_log_dir: Path, running_dir: Path, task_id: str, attempt: int, *,
           poll_sec: float = 0.1, sleep=None):
    """Yield the attempt's log as it grows, from the start, until the attempt has ended
    (its lease is gone or belongs to a later attempt) and everything written is yielded."""
    import time

    sleep = sleep or time.sleep
    path = attempt_path(task_log_dir, task_id, attempt)
    offset = 0
    while True:
        running = running_attempt(running_dir, task_id) == attempt
        chunk = read_chunk(path, offset)
        if chunk is not None and chunk[0]:
            data, offset = chunk
            yield data
            continue  # more may be waiting: read again before sleeping
        if not running:
            return
        sleep(poll_sec)
