"""Aggregates of the append-only records, read incrementally: ``outcomes.jsonl`` (one line
per ended attempt) and ``metrics.jsonl`` (one line per pass).

Each request reads only the lines appended since the last one; a file that shrank or was
replaced is read again from its start. Lines that do not parse are counted and skipped.
"""

from __future__ import annotations

import json
import os
from collections import Counter, deque
from datetime import datetime
from pathlib import Path

from scheduler import clock

#: Outcomes that count as "completed" and "failed" in the chart.
COMPLETED = ("succeeded",)
FAILED = ("failed", "killed", "timed_out", "stalled", "launch_failed", "reclaimed")
#: Pass duration histogram buckets, seconds.
PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Per-minute series are kept for this many minutes.
WINDOW_MINUTES = 180
RECENT = 50
#: At most this much of a record file is read per request (the rest on the next one).
READ_LIMIT = 16 << 20
HEAD_BYTES = 64


class JsonlFollower:
    """Reads the lines appended to one file since the last call. A file replaced (new
    inode, shorter, or other first bytes) is read again from its start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.inode: tuple[int, int] | None = None
        self.head = b""  #: the file's first bytes: another file (same inode) if they differ
        self.bad_lines = 0

    def new_entries(self) -> tuple[bool, list[dict]]:
        """(was the file reset, the new entries). Reset means: start the aggregates over."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            reset = self.inode is not None
            self.offset, self.inode = 0, None
            return reset, []
        try:
            st = os.fstat(fd)
            reset = False
            head = os.pread(fd, HEAD_BYTES, 0)
            if self.inode != (st.st_dev, st.st_ino) or st.st_size < self.offset \
                    or head[:len(self.head)] != self.head:
                reset = self.inode is not None
                self.offset, self.inode = 0, (st.st_dev, st.st_ino)
            self.head = head
            data = os.pread(fd, min(READ_LIMIT, st.st_size - self.offset), self.offset)
        finally:
            os.close(fd)
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
        self.offset += end
        entries = []
        for line in data[:end].splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if isinstance(entry, dict):
                entries.append(entry)
            elif line.strip():
                self.bad_lines += 1
        return reset, entries


def _minute(text: object) -> int | None:
    try:
        return int(clock.from_iso(text).timestamp() // 60)  # type: ignore[arg-type]
    except (ValueError, TypeError, OverflowError):
        return None


class OutcomeHistory:
    """Counters per (agent, outcome), the latest outcomes, and completed/failed per minute."""

    def __init__(self, path: Path) -> None:
        self.follower = JsonlFollower(path)
        self._clear()

    def _clear(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.recent: deque[dict] = deque(maxlen=RECENT)
        self.per_minute: dict[int, list[int]] = {}

    def refresh(self) -> None:
        reset, entries = self.follower.new_entries()
        if reset:
            self._clear()
        for entry in entries:
            agent, outcome = str(entry.get("agent", "")), str(entry.get("outcome", ""))
            self.counts[(agent, outcome)] += 1
            self.recent.append(entry)
            minute = _minute(entry.get("time"))
            if minute is not None and outcome in COMPLETED + FAILED:
                bucket = self.per_minute.setdefault(minute, [0, 0])
                bucket[0 if outcome in COMPLETED else 1] += 1
        _prune(self.per_minute)


class PassHistory:
    """Reclaims per reason, the pass duration histogram and slot use per minute."""

    def __init__(self, path: Path) -> None:
        self.follower = JsonlFollower(path)
        self._clear()

    def _clear(self) -> None:
        self.reclaims: Counter[str] = Counter()
        self.buckets = [0] * len(PASS_BUCKETS)
        self.duration_sum = 0.0
        self.passes = 0
        self.slots: dict[int, tuple[int, int]] = {}  #: minute -> (most used, limit)

    def refresh(self) -> None:
        reset, entries = self.follower.new_entries()
        if reset:
            self._clear()
        for entry in entries:
            reclaimed = entry.get("reclaimed")
            if isinstance(reclaimed, dict):
                for reason, number in reclaimed.items():
                    if isinstance(number, int):
                        self.reclaims[str(reason)] += number
            duration = entry.get("duration_sec")
            if isinstance(duration, (int, float)) and duration >= 0:
                self.passes += 1
                self.duration_sum += duration
                for index, bound in enumerate(PASS_BUCKETS):
                    if duration <= bound:
                        self.buckets[index] += 1
            agents = entry.get("agents")
            minute = _minute(entry.get("time"))
            if isinstance(agents, dict) and minute is not None:
                pairs = [v for v in agents.values() if isinstance(v, list) and len(v) == 2
                         and all(isinstance(n, int) for n in v)]
                used, limit = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
                old = self.slots.get(minute, (0, 0))
                self.slots[minute] = (max(old[0], used), max(old[1], limit))
        _prune(self.slots)


def _prune(per_minute: dict) -> None:
    if len(per_minute) > WINDOW_MINUTES * 2:
        newest = max(per_minute)
        for minute in [m for m in per_minute if m <= newest - WINDOW_MINUTES]:
            del per_minute[minute]


#: The chart shows at least this many minutes (a young state directory is zoomed in).
MIN_WINDOW_MINUTES = 30


def chart_series(outcomes: OutcomeHistory, passes: PassHistory, now: datetime,
                 minutes: int | None = None) -> dict:
    """Completed and failed attempts per minute and slot use (0-1) per minute, oldest
    first, for the last ``minutes`` minutes up to ``now``: by default the last 3 hours,
    or less when the records start later (never less than 30 minutes)."""
    last = int(now.timestamp() // 60)
    if minutes is None:
        known = [m for m in (*outcomes.per_minute, *passes.slots) if m <= last]
        oldest = min(known) if known else last
        minutes = max(MIN_WINDOW_MINUTES, min(WINDOW_MINUTES, last - oldest + 1))
    first = last - minutes + 1
    completed, failed, use = [], [], []
    for minute in range(first, last + 1):
        ok, bad = outcomes.per_minute.get(minute, (0, 0))
        completed.append(ok)
        failed.append(bad)
        used, limit = passes.slots.get(minute, (0, 0))
        use.append(round(used / limit, 3) if limit else None)
    return {"start_minute": first, "minutes": minutes, "completed": completed,
            "failed": failed, "slot_use": use}
