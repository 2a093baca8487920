"""The agent registry: which agents exist, which queue each serves, and its slot limit.

``agent-control.json`` is a JSON array of ``{"agentName": ..., "agentType": ...}``; the
type is the queue the agent takes unassigned work from. No file means legacy mode:
agents are the keys of AGENT_LIMITS and only tasks already assigned to them run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from scheduler.errors import ConfigError
from scheduler.names import NAME_RULE, is_valid_name

#: Largest agent control file accepted.
MAX_CONTROL_FILE_BYTES = 1_000_000

#: Written by ``validate-config --fix`` when the file is missing.
DEFAULT_AGENTS = (("dispatcher", "orchestrator"), ("architect", "architect"))


@dataclass(frozen=True)
class Agent:
    name: str
    queue: str | None  #: None in legacy mode
    limit: int


@dataclass(frozen=True)
class Registry:
    agents: tuple[Agent, ...]
    legacy: bool  #: True when there is no agent control file

    def by_name(self) -> dict[str, Agent]:
        return {agent.name: agent for agent in self.agents}

    def queues(self) -> dict[str, list[Agent]]:
        """Queue -> its pool of agents, in name order."""
        pools: dict[str, list[Agent]] = {}
        for agent in sorted(self.agents, key=lambda a: a.name):
            if agent.queue is not None:
                pools.setdefault(agent.queue, []).append(agent)
        return pools


def parse_control_file(path: Path) -> list[tuple[str, str]]:
    """The (agentName, agentType) pairs of a control file, or ConfigError saying what is wrong."""
    try:
        size = path.stat().st_size
        if size > MAX_CONTROL_FILE_BYTES:
            raise ConfigError(
                f"agent control file {path} is {size} bytes; accepted: at most "
                f"{MAX_CONTROL_FILE_BYTES} bytes"
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"agent control file {path} cannot be read: {exc}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"agent control file {path}: invalid JSON at line {exc.lineno} column {exc.colno}: "
            f"{exc.msg}"
        ) from None
    accepted = 'accepted: a JSON array of {"agentName": "...", "agentType": "..."}'
    if not isinstance(raw, list):
        raise ConfigError(f"agent control file {path}: top level is {type(raw).__name__}; "
                          f"{accepted}")
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        where = f"agent control file {path}: item {index}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} is {type(item).__name__}; {accepted}")
        for key in ("agentName", "agentType"):
            value = item.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where}: {key} is {value!r}; accepted: a non-empty string")
            if not is_valid_name(value):
                raise ConfigError(f"{where}: {key} {value!r} is invalid; accepted: {NAME_RULE}")
        name = item["agentName"]
        if name in seen:
            raise ConfigError(f"{where}: duplicate agentName {name!r}; "
                              "accepted: each agentName at most once")
        seen.add(name)
        pairs.append((name, item["agentType"]))
    return pairs


def load_registry(
    control_file: Path, limits: Mapping[str, int], default_limit: int
) -> Registry:
    """The effective registry: agents from the control file (or legacy: from the limits)."""
    if not control_file.exists():
        agents = tuple(Agent(name, None, limit) for name, limit in sorted(limits.items()))
        return Registry(agents, legacy=True)
    agents = tuple(
        Agent(name, queue, limits.get(name, default_limit))
        for name, queue in parse_control_file(control_file)
    )
    return Registry(agents, legacy=False)
