"""Per-agent settings of the real-agent rules, from agent-control entries over the globals.

An entry may carry ``rateLimitPatterns`` (array of regexes), ``rateLimitExitCodes`` (array
of exit codes) and ``dailyCostMaxUsd`` (number); each replaces the global setting for that
agent. Anything else in an entry is the registry's business.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler.agents.ratelimit import DEFAULT_PATTERNS, compile_patterns
from scheduler.config.registry import AGENT_RULE_KEYS
from scheduler.errors import ConfigError

KEYS = AGENT_RULE_KEYS


@dataclass(frozen=True)
class AgentOptions:
    rate_limit_patterns: re.Pattern[str]
    rate_limit_exit_codes: tuple[int, ...]
    daily_cost_max_usd: float


def defaults(settings: Any) -> AgentOptions:
    """The global settings, for an agent without overrides."""
    patterns = settings.rate_limit_patterns
    return AgentOptions(
        compile_patterns(DEFAULT_PATTERNS if patterns == "" else patterns),
        tuple(settings.rate_limit_exit_codes),
        float(settings.agent_daily_cost_max_usd),
    )


def load(settings: Any) -> dict[str, AgentOptions]:
    """Options of every agent with an entry in the control file that overrides something."""
    path: Path = settings.agent_control_file
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # no file (legacy mode) or a bad one, which the registry reports
    if not isinstance(entries, list):
        return {}
    base = defaults(settings)
    found: dict[str, AgentOptions] = {}
    for entry in entries:
        if isinstance(entry, dict) and any(key in entry for key in KEYS) \
                and isinstance(entry.get("agentName"), str):
            found[entry["agentName"]] = _entry(path, entry, base)
    return found


def for_agent(settings: Any, agent: str) -> AgentOptions:
    return load(settings).get(agent) or defaults(settings)


def _entry(path: Path, entry: dict[str, Any], base: AgentOptions) -> AgentOptions:
    where = f"agent control file {path}: agent {entry['agentName']!r}"
    patterns = base.rate_limit_patterns
    if "rateLimitPatterns" in entry:
        value = entry["rateLimitPatterns"]
        if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
            raise ConfigError(f"{where}: rateLimitPatterns is {value!r}; accepted: an array "
                              "of regular expressions")
        try:
            patterns = compile_patterns(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    codes = base.rate_limit_exit_codes
    if "rateLimitExitCodes" in entry:
        value = entry["rateLimitExitCodes"]
        if not isinstance(value, list) or not all(
                isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 255 for c in value):
            raise ConfigError(f"{where}: rateLimitExitCodes is {value!r}; accepted: an array "
                              "of exit codes from 1 to 255")
        codes = tuple(value)
    budget = base.daily_cost_max_usd
    if "dailyCostMaxUsd" in entry:
        value = entry["dailyCostMaxUsd"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 <= value <= 1_000_000:
            raise ConfigError(f"{where}: dailyCostMaxUsd is {value!r}; accepted: an amount "
                              "in US dollars from 0 to 1000000 (0 = no budget)")
        budget = float(value)
    return AgentOptions(patterns, codes, budget)
