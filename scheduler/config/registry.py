"""The agent registry: which agents exist, which queue each serves, and its slot limit.

``agent-control.json`` is a JSON array of ``{"agentName": ..., "agentType": ...}``; the
type is the queue the agent takes unassigned work from. An entry may also carry the
agent's resource limits (``memoryMaxMb``, ``cpuMaxSec``, ``fileMaxMb``, ``openFilesMax``,
whole numbers >= 0, 0 = none), which override the global AGENT_* settings. No file means
legacy mode: agents are the keys of AGENT_LIMITS and only tasks already assigned to them
run.
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

#: The keys of one agent entry, all required, no others.
CONTROL_KEYS = ("agentName", "agentType")

#: Written by ``validate-config --fix`` when the file is missing.
DEFAULT_AGENTS = (("dispatcher", "orchestrator"), ("architect", "architect"))


#: Resource-limit fields of an agent-control entry -> the attribute of :class:`Resources`.
RESOURCE_FIELDS = {"memoryMaxMb": "memory_mb", "cpuMaxSec": "cpu_sec", "fileMaxMb": "file_mb",
                   "openFilesMax": "open_files"}
#: Largest value accepted for a resource limit.
MAX_RESOURCE_VALUE = 2**40
#: Per-agent keys of the real-agent rules, checked in scheduler.agents.options.
AGENT_RULE_KEYS = ("rateLimitPatterns", "rateLimitExitCodes", "dailyCostMaxUsd")
#: Keys an entry may have besides the required ones.
OPTIONAL_KEYS = (*RESOURCE_FIELDS, *AGENT_RULE_KEYS)


@dataclass(frozen=True)
class Resources:
    """An agent's resource limits; None = the global setting, 0 = no limit."""

    memory_mb: int | None = None
    cpu_sec: int | None = None
    file_mb: int | None = None
    open_files: int | None = None


@dataclass(frozen=True)
class ControlEntry:
    name: str
    queue: str
    resources: Resources = Resources()


@dataclass(frozen=True)
class Agent:
    name: str
    queue: str | None  #: None in legacy mode
    limit: int
    resources: Resources = Resources()


@dataclass(frozen=True)
class Registry:
    agents: tuple[Agent, ...]
    legacy: bool  #: True when there is no agent control file
    #: AGENT_LIMITS names that are not agents of the control file (typos, most likely)
    unlisted_limits: tuple[str, ...] = ()

    def by_name(self) -> dict[str, Agent]:
        return {agent.name: agent for agent in self.agents}

    def warnings(self) -> list[str]:
        """Mistakes that are not errors but leave something that can never run."""
        found = []
        if not self.legacy and not self.agents:
            found.append("the agent control file lists no agents: no task can ever run; add "
                         '{"agentName": ..., "agentType": ...} entries, or remove the file '
                         "for legacy mode")
        found += [f"TINYSCHEDULER_AGENT_LIMITS names {name}, which is not an agent of the "
                  f"agent control file, so its limit is ignored ({self.describe_known()})"
                  for name in self.unlisted_limits]
        return found

    def cannot_run(self, queue: str | None, assignee: str | None) -> str | None:
        """Why no agent can ever run a task with this queue and assignee, or None."""
        if assignee:
            if assignee in self.by_name():
                return None
            return f"assigned to {assignee}, which is not a known agent"
        if self.legacy:
            return ("not assigned to an agent, and legacy mode (no agent control file) runs "
                    "assigned tasks only")
        if not queue:
            return "neither a queue nor an agent"
        if queue not in self.queues():
            return f"queue {queue} has no agents"
        return None

    def describe_known(self) -> str:
        """The known agents and queues, for messages about a name that is neither."""
        agents = ", ".join(sorted(a.name for a in self.agents)) or "none"
        if self.legacy:
            return f"known agents: {agents} (legacy mode: no queues)"
        queues = ", ".join(sorted(self.queues())) or "none"
        return f"known agents: {agents}; known queues: {queues}"

    def queues(self) -> dict[str, list[Agent]]:
        """Queue -> its pool of agents, in name order."""
        pools: dict[str, list[Agent]] = {}
        for agent in sorted(self.agents, key=lambda a: a.name):
            if agent.queue is not None:
                pools.setdefault(agent.queue, []).append(agent)
        return pools


def parse_control_file(path: Path) -> list[tuple[str, str]]:
    """The (agentName, agentType) pairs of a control file, or ConfigError saying what is wrong."""
    return [(entry.name, entry.queue) for entry in parse_control_entries(path)]


def parse_control_entries(path: Path) -> list[ControlEntry]:
    """The entries of a control file, or ConfigError saying what is wrong."""
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
    except RecursionError:
        raise ConfigError(f"agent control file {path}: JSON nested too deeply") from None
    accepted = 'accepted: a JSON array of {"agentName": "...", "agentType": "..."}'
    if not isinstance(raw, list):
        raise ConfigError(f"agent control file {path}: the file holds {_json_kind(raw)}; "
                          f"{accepted}")
    entries: list[ControlEntry] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        where = f"agent control file {path}: item {index}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} is {_json_kind(item)}; {accepted}")
        unknown = sorted(set(item) - set(CONTROL_KEYS) - set(OPTIONAL_KEYS))
        missing = [key for key in CONTROL_KEYS if key not in item]
        if unknown or missing:
            found = ", ".join(sorted(item)) or "none"
            raise ConfigError(f"{where} has the keys {found}; accepted: agentName and "
                              f"agentType, optionally {', '.join(OPTIONAL_KEYS)}")
        for key in CONTROL_KEYS:
            value = item[key]
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where}: {key} is {_json_kind(value)}; accepted: a "
                                  "non-empty string")
            if not is_valid_name(value):
                raise ConfigError(f"{where}: {key} {value!r} is invalid; accepted: {NAME_RULE}")
        name = item["agentName"]
        if name in seen:
            raise ConfigError(f"{where}: duplicate agentName {name!r}; "
                              "accepted: each agentName at most once")
        seen.add(name)
        entries.append(ControlEntry(name, item["agentType"], _resources(item, where)))
    return entries


def _resources(item: dict, where: str) -> Resources:
    values: dict[str, int] = {}
    for key, attr in RESOURCE_FIELDS.items():
        if key not in item:
            continue
        value = item[key]
        if isinstance(value, bool) or not isinstance(value, int) \
                or not 0 <= value <= MAX_RESOURCE_VALUE:
            raise ConfigError(f"{where}: {key} is {value!r}; accepted: a whole number from 0 "
                              f"(no limit) to {MAX_RESOURCE_VALUE}")
        values[attr] = value
    return Resources(**values)


def _json_kind(value: object) -> str:
    """How a parsed JSON value is called in JSON's own terms, with a short excerpt."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object" + (f" with the keys {', '.join(sorted(value))}" if value else " {}")
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return f"the string {json.dumps(value)}" if value else "an empty string"
    return f"the number {json.dumps(value)}"


def load_registry(
    control_file: Path, limits: Mapping[str, int], default_limit: int
) -> Registry:
    """The effective registry: agents from the control file (or legacy: from the limits)."""
    if not control_file.exists():
        agents = tuple(Agent(name, None, limit) for name, limit in sorted(limits.items()))
        return Registry(agents, legacy=True)
    agents = tuple(
        Agent(entry.name, entry.queue, limits.get(entry.name, default_limit), entry.resources)
        for entry in parse_control_entries(control_file)
    )
    names = {agent.name for agent in agents}
    return Registry(agents, legacy=False,
                    unlisted_limits=tuple(sorted(set(limits) - names)))
