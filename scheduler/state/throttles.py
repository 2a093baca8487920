"""Per-agent holds that survive restarts: rate-limit backoff and the day's spending.

One small JSON file per agent in ``state/agents/`` (``<agent>.json``), changed only under
a flock on ``<agent>.lock`` by the wrappers that report the agent's attempts, and read by
each pass to hold the agent back. Agent names are validated before they become paths.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

from scheduler import clock
from scheduler.fsutil import atomic_write_json, ensure_private_dir, open_private
from scheduler.names import check_name, is_valid_name

MAX_FILE_BYTES = 4096


@dataclass(frozen=True)
class AgentRecord:
    """What is known about one agent's recent attempts."""

    agent: str
    rate_limited_until: str | None = None  #: ISO time; None when not held
    streak: int = 0  #: rate limits in a row
    reason: str = ""  #: why it was last rate-limited
    cost_day: str = ""  #: the UTC day ``cost_usd`` adds up (YYYY-MM-DD)
    cost_usd: float = 0.0

    def held_until(self) -> datetime | None:
        try:
            return clock.from_iso(self.rate_limited_until) if self.rate_limited_until else None
        except ValueError:
            return None

    def cost_on(self, day: str) -> float:
        return self.cost_usd if self.cost_day == day else 0.0


def load_all(directory: Path) -> dict[str, AgentRecord]:
    """Every agent's record; unreadable or foreign files are left out (never followed)."""
    records: dict[str, AgentRecord] = {}
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return records
    for entry in entries:
        name, dot, suffix = entry.name.rpartition(".")
        if suffix != "json" or not dot or not is_valid_name(name):
            continue
        record = _read(Path(entry.path), name)
        if record is not None:
            records[name] = record
    return records


def record_rate_limit(directory: Path, agent: str, now: datetime, delay_of: Callable[[int], int],
                      reason: str) -> AgentRecord:
    """Note one more rate limit in a row; ``delay_of(streak)`` gives the hold in seconds."""
    from datetime import timedelta

    def change(record: AgentRecord) -> AgentRecord:
        streak = record.streak + 1
        until = now + timedelta(seconds=delay_of(streak))
        return replace(record, streak=streak, reason=reason,
                       rate_limited_until=clock.to_iso(until))

    return _update(directory, agent, change)


def record_success(directory: Path, agent: str) -> None:
    """A success ends a run of rate limits."""
    if (directory / f"{check_name(agent, 'agent')}.json").exists():
        _update(directory, agent, lambda r: replace(r, streak=0, rate_limited_until=None,
                                                    reason=""))


def add_cost(directory: Path, agent: str, now: datetime, cost_usd: float) -> AgentRecord:
    """Add an attempt's cost to the agent's spending of the (UTC) day."""
    day = now.date().isoformat()
    return _update(directory, agent, lambda r: replace(
        r, cost_day=day, cost_usd=round(r.cost_on(day) + cost_usd, 6)))


def _update(directory: Path, agent: str,
            change: Callable[[AgentRecord], AgentRecord]) -> AgentRecord:
    check_name(agent, "agent")
    ensure_private_dir(directory)
    path = directory / f"{agent}.json"
    with _locked(directory / f"{agent}.lock"):
        record = _read(path, agent) or AgentRecord(agent)
        record = change(record)
        atomic_write_json(path, asdict(record))
    return record


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = open_private(path, os.O_RDWR)  # a link or FIFO there is refused, never followed
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read(path: Path, agent: str) -> AgentRecord | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE_BYTES:
            return None
        data = json.loads(os.read(fd, MAX_FILE_BYTES))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if not isinstance(data, dict):
        return None
    try:
        return AgentRecord(
            agent=agent,
            rate_limited_until=_opt_str(data.get("rate_limited_until")),
            streak=_whole(data.get("streak", 0)),
            reason=str(data.get("reason", ""))[:500],
            cost_day=str(data.get("cost_day", ""))[:10],
            cost_usd=_amount(data.get("cost_usd", 0.0)),
        )
    except ValueError:
        return None


def _opt_str(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError("not a string")


def _whole(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10**6:
        raise ValueError("not a count")
    return value


def _amount(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 <= value <= 10**9:
        raise ValueError("not an amount")
    return float(value)
