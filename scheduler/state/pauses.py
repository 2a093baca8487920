"""Persisted dispatch pauses (``tinyscheduler pause`` / ``resume``), in ``state/paused.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from scheduler.errors import ConfigError
from scheduler.fsutil import atomic_write_json, ensure_private_dir, read_private


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


def load(path: Path) -> Pauses:
    try:
        data = json.loads(read_private(path).decode("utf-8"))
    except FileNotFoundError:
        return Pauses()
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"pause file {path} is unreadable ({exc}); fix or delete it "
            '(accepted: {"everything": bool, "agents": [...], "queues": [...]})'
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"pause file {path} is not a JSON object; fix or delete it")
    return Pauses(bool(data.get("everything")), frozenset(map(str, data.get("agents", []))),
                  frozenset(map(str, data.get("queues", []))))


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
