"""Persisted dispatch pauses (``tinyscheduler pause`` / ``resume``), in ``state/paused.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from scheduler.errors import ConfigError
from scheduler.fsutil import atomic_write_json, ensure_private_dir, read_private
from scheduler.names import NAME_RULE, is_valid_name


@dataclass(frozen=True)
class Pauses:
    """Dispatch pauses set by ``tinyscheduler pause``: everything, some agents, some queues."""

    everything: bool = False
    agents: frozenset[str] = frozenset()
    queues: frozenset[str] = frozenset()

    @property
    def any(self) -> bool:
        return self.everything or bool(self.agents) or bool(self.queues)

    def describe(self) -> str:
        if self.everything:
            return "all dispatch paused"
        parts = [f"agent {a}" for a in sorted(self.agents)] + [f"queue {q}" for q in
                                                               sorted(self.queues)]
        return "paused: " + ", ".join(parts) if parts else "not paused"


NO_PAUSES = Pauses()


#: What a pause file may hold, for error messages.
ACCEPTED = ('accepted: {"everything": true|false, "agents": ["name", ...], '
            '"queues": ["name", ...]}')
#: A pause file larger than this is not one.
MAX_BYTES = 1_000_000


def load(path: Path) -> Pauses:
    """The pauses in ``path`` (none when it is missing); ConfigError naming the file and
    what is wrong when it is unreadable, not a regular file, or of the wrong shape."""
    try:
        raw = read_private(path, MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise ValueError(f"larger than {MAX_BYTES} bytes")
        data = json.loads(raw)
    except FileNotFoundError:
        return Pauses()
    except (OSError, ValueError, RecursionError) as exc:
        reason = exc if not isinstance(exc, RecursionError) else "nested too deeply"
        raise ConfigError(f"pause file {path} is unreadable ({reason}); fix or delete it "
                          f"({ACCEPTED})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"pause file {path} is not a JSON object; fix or delete it "
                          f"({ACCEPTED})")
    everything = data.get("everything", False)
    if not isinstance(everything, bool):
        raise ConfigError(f"pause file {path}: 'everything' is {_clip(everything)}; "
                          f"fix or delete it ({ACCEPTED})")
    return Pauses(everything, _names(path, data, "agents"), _names(path, data, "queues"))


def _names(path: Path, data: dict, key: str) -> frozenset[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(is_valid_name(item) for item in value):
        raise ConfigError(f"pause file {path}: {key!r} is {_clip(value)}; fix or delete it "
                          f"({ACCEPTED}; names: {NAME_RULE})")
    return frozenset(value)


def _clip(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def save(path: Path, pauses: Pauses) -> None:
    ensure_private_dir(path.parent)
    atomic_write_json(path, {"everything": pauses.everything, "agents": sorted(pauses.agents),
                             "queues": sorted(pauses.queues)})


def change(pauses: Pauses, *, pause: bool, agent: str | None, queue: str | None) -> Pauses:
    """Pause or resume everything (no agent/queue), one agent, or one queue."""
    if agent:
        agents = pauses.agents | {agent} if pause else pauses.agents - {agent}
        return Pauses(pauses.everything, agents, pauses.queues)
    if queue:
        queues = pauses.queues | {queue} if pause else pauses.queues - {queue}
        return Pauses(pauses.everything, pauses.agents, queues)
    if pause:
        return Pauses(True, pauses.agents, pauses.queues)
    return Pauses()
