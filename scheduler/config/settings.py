"""Layered, validated, immutable settings.

Layers, lowest first: built-in defaults < env file < process environment < command-line
flags. Every setting is read from ``TINYSCHEDULER_<NAME>``; the names of the original
TinyScheduler keep their meaning. :data:`OPTIONS` is the single definition that the
loader, ``config --show``, ``.env.example`` and ``docs/configuration.md`` all follow.

This module imports only the standard library (plus python-dotenv when an env file is
read), so ``--help`` and ``config --show`` stay fast.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.bounds import (
    AGENT_CPU_MAX_BOUNDS,
    AGENT_FILE_MAX_MB_BOUNDS,
    AGENT_MEMORY_MAX_MB_BOUNDS,
    AGENT_OPEN_FILES_MAX_BOUNDS,
    ATTEMPT_LOG_MAX_MB_BOUNDS,
    HEARTBEAT_SEC_BOUNDS,
    HOOK_TIMEOUT_BOUNDS,
    HOST_TIMEOUT_BOUNDS,
    IDLE_TIMEOUT_BOUNDS,
    KILL_GRACE_BOUNDS,
    LIMIT_BOUNDS,
    LOG_RETENTION_DAYS_BOUNDS,
    LOOP_INTERVAL_BOUNDS,
    MAX_ATTEMPTS_BOUNDS,
    MAX_RUNTIME_BOUNDS,
    MAX_TOTAL_RUNTIME_BOUNDS,
    MERGE_CHECK_TIMEOUT_BOUNDS,
    METRICS_MAX_MB_BOUNDS,
    MIN_FREE_DISK_MB_BOUNDS,
    RATE_LIMIT_BACKOFF_BOUNDS,
    RATE_LIMIT_BACKOFF_MAX_BOUNDS,
    RETRY_BACKOFF_BOUNDS,
    SPAWN_TIMEOUT_BOUNDS,
    STALE_MULTIPLIER_BOUNDS,
    WARM_WRAPPER_BOUNDS,
    Bounds,
)
from scheduler.errors import ConfigError
from scheduler.names import NAME_RULE, TEXT_RULE, is_valid_name, text_problem
from scheduler.redact import mask_url

#: Every variable starts with this prefix.
PREFIX = "TINYSCHEDULER_"

#: Names the env file when ``--env-file`` is not given (read from the process environment).
ENV_FILE_VARIABLE = PREFIX + "ENV_FILE"

#: Looked for in the current directory, in this order, when no env file is named.
DISCOVERED_ENV_FILES = ("tinyscheduler.env", ".env")

#: The default agent command: goose headless on the task's recipe, the task id as a parameter.
DEFAULT_AGENT_COMMAND = (
    "{goose_bin} run --no-session --recipe {recipe_path} --params task_id={task_id}"
)

_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")


# --- parsers: text -> value, raising ValueError with what is accepted -------------------


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("accepted: 1/true/yes or 0/false/no (any case)")


#: Ranges of the numeric settings that are not whole numbers, as the docs print them.
DOLLARS_RANGE = "0-1000000"
EXIT_CODES_RANGE = "1-255 each"

#: At most this many characters in any setting's value (AGENT_LIMITS is the longest).
MAX_VALUE_CHARS = 65_536

_WHOLE_NUMBER = re.compile(r"\+?[0-9]{1,18}")


def _int_parser(bounds: Bounds) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = text.strip()
        if _WHOLE_NUMBER.fullmatch(value) is None or int(value) not in bounds:
            raise ValueError(f"accepted: {bounds.describe()}")
        return int(value)

    return parse


def _choice_parser(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError("accepted: " + " | ".join(choices))
        return value

    return parse


def _parse_text(text: str) -> str:
    return text.strip()


def _parse_token(text: str) -> str:
    value = text.strip()
    if any(not 0x21 <= ord(char) <= 0x7E for char in value):
        raise ValueError("accepted: printable ASCII characters without spaces "
                         "(it is sent in an HTTP header)")
    return value


def _parse_path(text: str) -> Path:
    value = text.strip()
    if not value or any(ord(char) < 32 or char == "\x7f" for char in value):
        raise ValueError("accepted: a file system path without control characters")
    return expand_home(value)


def expand_home(value: str) -> Path:
    """``value`` with a leading ``~`` or ``~user`` expanded; ValueError when that home
    directory is unknown (no such user, or no HOME), never a traceback."""
    try:
        return Path(value).expanduser()
    except RuntimeError:
        user = value[1:].split("/", 1)[0]
        whose = f"user {user!r}" if user else "the current user"
        raise ValueError(f"the home directory of {whose} is unknown (accepted: a path, "
                         "~/PATH or ~USER/PATH for a user that exists)") from None


def _parse_log_level(text: str) -> str:
    return _choice_parser("debug", "info", "warning", "error")(text).upper()


def _parse_endpoint(text: str) -> str:
    value = text.strip().rstrip("/")
    if value and not value.startswith(("http://", "https://")):
        raise ValueError("accepted: an http:// or https:// URL")
    return value


def _parse_database_url(text: str) -> str:
    value = text.strip()
    if not value.startswith(("postgresql://", "postgres://")):
        raise ValueError("accepted: a postgresql://user:password@host:port/dbname URL "
                         "(host may be a socket directory: postgresql:///db?host=/run/pg)")
    return value


def _parse_hostname(text: str) -> str:
    value = text.strip()
    if not is_valid_name(value):
        raise ValueError(f"accepted: {NAME_RULE}")
    return value


def _parse_command(text: str) -> str:
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"accepted: an argv template split like shell words ({exc})") from None
    if not argv or not argv[0]:
        raise ValueError("accepted: a non-empty argv template")
    return text.strip()


def _parse_dollars(text: str) -> float:
    accepted = "accepted: an amount in US dollars from 0 to 1000000 (0 = no budget)"
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(accepted) from None
    if not 0 <= value <= 1_000_000:  # also rejects nan
        raise ValueError(accepted)
    return value


def parse_exit_codes(text: str) -> tuple[int, ...]:
    """``75,124`` -> (75, 124): exit codes from 1 to 255."""
    accepted = "accepted: exit codes from 1 to 255, separated by commas (e.g. 75,124)"
    codes = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if not item.isdigit() or not 1 <= int(item) <= 255:
            raise ValueError(f"{item!r} is not an exit code; {accepted}")
        codes.append(int(item))
    return tuple(codes)


def parse_patterns(text: str) -> tuple[str, ...]:
    """A JSON array of regular expressions (searched case-insensitively)."""
    import re

    accepted = 'accepted: a JSON array of regular expressions, e.g. ["rate limit", "\\b429\\b"]'
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"invalid JSON ({exc}); {accepted}") from None
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value) \
            or len(value) > 100:
        raise ValueError(accepted)
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a regular expression ({exc}); "
                             f"{accepted}") from None
    return tuple(value)


def _parse_optional_command(text: str) -> str:
    return _parse_command(text) if text.strip() else ""


_LINK_PLACEHOLDERS = ("commit", "task_id", "target")


def _parse_link_template(text: str) -> str:
    """A text with ``{commit}``, ``{task_id}``, ``{target}`` placeholders only."""
    import re

    value = text.strip()
    for name in re.findall(r"\{([^{}]*)\}", value):
        if name not in _LINK_PLACEHOLDERS:
            raise ValueError(f"unknown placeholder {{{name}}}; accepted: a text with "
                             + ", ".join(f"{{{p}}}" for p in _LINK_PLACEHOLDERS))
    return value


def _parse_path_list(text: str) -> tuple[Path, ...]:
    """``a:b:c`` (like PATH) into paths; empty parts are ignored."""
    return tuple(_parse_path(part) for part in text.split(":") if part.strip())


def split_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for an IPv6 address) -> (host, port); ValueError
    saying what is accepted."""
    accepted = "accepted: HOST:PORT, e.g. 127.0.0.1:8765 or [::1]:8765 (port 0-65535)"
    value = text.strip()
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or any(c in host for c in " /[]") \
            or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(accepted)
    return host, int(port)


def _parse_bind(text: str) -> str:
    split_bind(text)
    return text.strip()


#: The shortest dashboard token accepted (it guards a web page: no guessable ones).
MIN_TOKEN_CHARS = 16


def _parse_dashboard_token(text: str) -> str:
    value = text.strip()
    if value and (len(value) < MIN_TOKEN_CHARS
                  or any(not 0x21 <= ord(char) <= 0x7E for char in value)):
        raise ValueError(f"accepted: at least {MIN_TOKEN_CHARS} printable ASCII characters "
                         "without spaces, e.g. from 'openssl rand -hex 24'")
    return value


def parse_agent_limits(text: str) -> dict[str, int]:
    """Parse ``{"a": 1, "b": 2}`` or ``a=1,b=2`` into a name -> limit mapping."""
    value = text.strip()
    if not value:
        return {}
    accepted = (f'accepted: a JSON object {{"agent": N}} or agent=N,agent=N with N '
                f'from {LIMIT_BOUNDS.low} to {LIMIT_BOUNDS.high}')
    if value.startswith(("{", "[")):
        try:
            raw = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON at column {exc.colno}: {exc.msg}; {accepted}") from None
        except RecursionError:
            raise ValueError(f"JSON nested too deeply; {accepted}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"a JSON {type(raw).__name__} is not an object; {accepted}")
        pairs = list(raw.items())
    else:
        pairs = []
        for item in value.split(","):
            name, sep, number = item.partition("=")
            if not sep:
                raise ValueError(f"{_clip(item.strip())} has no '='; {accepted}")
            pairs.append((name.strip(), number.strip()))
    limits: dict[str, int] = {}
    for name, number in pairs:
        if not is_valid_name(name):
            raise ValueError(f"agent name {_clip(name)} is invalid ({NAME_RULE}); {accepted}")
        limit = number if isinstance(number, int) else None
        if isinstance(number, str) and _WHOLE_NUMBER.fullmatch(number):
            limit = int(number)
        if limit not in LIMIT_BOUNDS:
            raise ValueError(f"limit for {name!r} is {_clip(number)}; {accepted}")
        limits[name] = limit  # type: ignore[assignment]
    return limits


def _clip(value: object) -> str:
    """``repr(value)`` cut to a readable length for an error message."""
    try:
        shown = repr(value)
    except (RecursionError, ValueError):
        shown = f"a {type(value).__name__}"
    return shown if len(shown) <= 60 else shown[:57] + "..."


# --- the definitions --------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One setting: its variable, default, parser and documentation."""

    name: str  #: variable name without the prefix, e.g. ``HEARTBEAT_SEC``
    default: str  #: default as text ("" = empty); a few are derived, see ``default_note``
    parse: Callable[[str], Any]
    help: str
    example: str = ""
    secret: bool = False
    is_path: bool = False  #: relative values resolve against BASE_PATH
    default_note: str = ""  #: how a derived default is computed, for docs
    bounds: Bounds | None = None  #: the accepted range of a whole number (or of each one)
    range_note: str = ""  #: the accepted range of another numeric setting, for the docs

    @property
    def env(self) -> str:
        return PREFIX + self.name


    @property
    def attr(self) -> str:
        return self.name.lower()


def _path(name: str, default: str, help_text: str, example: str) -> Option:
    return Option(name, default, _parse_path, help_text, example, is_path=True)


def _whole(name: str, default: str, bounds: Bounds, help_text: str, example: str) -> Option:
    return Option(name, default, _int_parser(bounds), help_text, example, bounds=bounds)


OPTIONS: tuple[Option, ...] = (
    Option("BASE_PATH", "", _parse_path, "Root that relative paths resolve against.",
           "/srv/agents", is_path=True, default_note="the current directory"),
    _path("STATE_DIR", "state", "Runtime state: outbox, pass summary, metrics, pauses.",
          "/var/lib/tinyscheduler"),
    _path("RUNNING_DIR", "state/running", "Lease files, one per task in flight.",
          "/var/lib/tinyscheduler/running"),
    _path("LOG_DIR", "state/logs", "Scheduler logs and per-attempt task logs.",
          "/var/log/tinyscheduler"),
    _path("RECIPES_DIR", "recipes", "Where agent recipes live; a recipe must resolve inside it.",
          "/srv/agents/recipes"),
    _path("LOCK_FILE", "state/tinyscheduler.lock", "The scheduler lock (never deleted).",
          "/var/lib/tinyscheduler/scheduler.lock"),
    _path("AGENT_CONTROL_FILE", "agent-control.json",
          "Agent registry: JSON array of {agentName, agentType}; missing = legacy mode.",
          "/etc/tinyscheduler/agents.json"),
    _path("TASKS_DB", "state/tasks.db", "SQLite file of the embedded local task store.",
          "/var/lib/tinyscheduler/tasks.db"),
    Option("WORK_DIR", "", _parse_path, "Working directory of the agents.",
           "/srv/agents/checkout", is_path=True, default_note="BASE_PATH"),
    Option("AGENT_LIMITS", "", parse_agent_limits,
           "Concurrency per agent, JSON object or a=1,b=2.", 'dispatcher=1,worker=3',
           bounds=LIMIT_BOUNDS),
    _whole("DEFAULT_AGENT_LIMIT", "1", LIMIT_BOUNDS,
           "Limit of a registry agent absent from AGENT_LIMITS.", "2"),
    Option("TASK_SOURCE", "", _choice_parser("local", "tinytask", "postgres"),
           "Where tasks come from: local (embedded SQLite), tinytask (REST) or postgres "
           "(PostgreSQL, shared by several hosts).", "postgres",
           default_note="tinytask if MCP_ENDPOINT is set, else local"),
    Option("DATABASE_URL", "", _parse_database_url,
           "PostgreSQL URL for TASK_SOURCE=postgres or COORDINATOR=postgres (secret).",
           "postgresql://tiny:s3cr3t@db.internal/tinyscheduler", secret=True,
           default_note="unset: no PostgreSQL"),
    Option("DATABASE_URL_FILE", "", _parse_path,
           "A file holding DATABASE_URL (instead of the variable).",
           "/etc/tinyscheduler/database-url", is_path=True, default_note="unset"),
    Option("COORDINATOR", "none", _choice_parser("none", "postgres"),
           "Where claims, runs, global limits and hosts live with TASK_SOURCE=tinytask: "
           "none (one scheduler only) or postgres (several hosts share one TinyTask).",
           "postgres"),
    Option("GLOBAL_LIMITS", "", parse_agent_limits,
           "Runs per agent across all hosts (postgres), on top of AGENT_LIMITS; "
           "JSON object or a=1,b=2.", "vaela=5,damien=2", default_note="no global limits"),
    _whole("HOST_TIMEOUT_SEC", "120", HOST_TIMEOUT_BOUNDS,
           "Several hosts: a host silent this long is dead and its runs are reclaimed "
           "elsewhere; must exceed HEARTBEAT_SEC x STALE_MULTIPLIER.", "300"),
    Option("MCP_ENDPOINT", "", _parse_endpoint, "TinyTask server base URL (without /api/v1).",
           "http://tinytask:3000"),
    Option("MCP_TOKEN", "", _parse_token, "Bearer token for the TinyTask server (secret).",
           "s3cr3t", secret=True),
    Option("GOOSE_BIN", "goose", _parse_text, "The goose executable ({goose_bin}).",
           "/usr/local/bin/goose"),
    Option("AGENT_COMMAND", DEFAULT_AGENT_COMMAND, _parse_command,
           "Agent argv template; placeholders {task_id} {agent} {queue} {attempt} {recipe} "
           "{recipe_path} {title} {prompt} {task_file} {base_path} {goose_bin} {workspace} "
           "{branch}; never run by a shell.",
           "my-agent --task {task_id} --file {task_file}"),
    _whole("LOOP_INTERVAL_SEC", "60", LOOP_INTERVAL_BOUNDS, "Daemon: seconds between passes.",
           "30"),
    _whole("HEARTBEAT_SEC", "15", HEARTBEAT_SEC_BOUNDS, "Wrapper heartbeat interval.", "10"),
    _whole("STALE_MULTIPLIER", "4", STALE_MULTIPLIER_BOUNDS,
           "A heartbeat older than HEARTBEAT_SEC x this is stale.", "4"),
    _whole("MAX_RUNTIME_SEC", "3600", MAX_RUNTIME_BOUNDS, "Watchdog: longest allowed run.", "7200"),
    _whole("IDLE_TIMEOUT_SEC", "0", IDLE_TIMEOUT_BOUNDS,
           "Kill an agent silent for this long (0 = off).", "900"),
    _whole("KILL_GRACE_SEC", "30", KILL_GRACE_BOUNDS, "Seconds between SIGTERM and SIGKILL.", "10"),
    _whole("SPAWN_TIMEOUT_SEC", "30", SPAWN_TIMEOUT_BOUNDS,
           "A lease still 'starting' after this long with no wrapper is reclaimed.", "60"),
    _whole("MAX_ATTEMPTS", "3", MAX_ATTEMPTS_BOUNDS, "Attempts before a task is parked as failed.",
           "5"),
    _whole("RETRY_BACKOFF_SEC", "60", RETRY_BACKOFF_BOUNDS,
           "Retry delay: this x 2^(attempt-1) after a failed attempt.", "120"),
    Option("RATE_LIMIT_EXIT_CODES", "", parse_exit_codes,
           "Exit codes that mean the agent was rate-limited (comma-separated).", "75",
           default_note="none", range_note=EXIT_CODES_RANGE),
    Option("RATE_LIMIT_PATTERNS", "", parse_patterns,
           "JSON array of regexes; a failed attempt whose last 64 KB of output matches one "
           "was rate-limited. Empty = the built-in list (rate limit, 429, too many requests, "
           "quota exceeded, overloaded, usage limit); [] = none.", '["rate.?limit"]',
           default_note="the built-in list"),
    _whole("RATE_LIMIT_BACKOFF_SEC", "60", RATE_LIMIT_BACKOFF_BOUNDS,
           "First hold of a rate-limited agent; doubles while the limit persists.", "120"),
    _whole("RATE_LIMIT_BACKOFF_MAX_SEC", "3600", RATE_LIMIT_BACKOFF_MAX_BOUNDS,
           "Longest hold of a rate-limited agent.", "7200"),
    _whole("MAX_TOTAL_RUNTIME_SEC", "0", MAX_TOTAL_RUNTIME_BOUNDS,
           "Budget per task: runtime over all its attempts; spent -> parked (0 = none).",
           "14400"),
    Option("MAX_TASK_COST_USD", "0", _parse_dollars,
           "Budget per task: cost over all its attempts, from the agents' results; "
           "spent -> parked (0 = none).", "5", range_note=DOLLARS_RANGE),
    Option("AGENT_DAILY_COST_MAX_USD", "0", _parse_dollars,
           "Budget per agent per UTC day (agent-control dailyCostMaxUsd overrides); "
           "reached -> the agent pauses until the next day (0 = none).", "50",
           range_note=DOLLARS_RANGE),
    Option("PROMPT_TEMPLATE_FILE", "", _parse_path,
           "Template of {prompt}: text with {id} {title} {description} {queue} {agent} "
           "{attempt} {previous_summary} {previous_error} {workspace}.",
           "/etc/tinyscheduler/prompt.txt", is_path=True,
           default_note="task id, title and description"),
    Option("AGENT_RESULT_ADAPTER", "none", _choice_parser("none", "claude", "codex"),
           "Turn the agent's printed JSON into a result when it writes no result file.",
           "claude"),
    _whole("ATTEMPT_LOG_MAX_MB", "100", ATTEMPT_LOG_MAX_MB_BOUNDS,
           "Cap of one attempt log: the first and the latest output are kept around a "
           "marker saying how much was left out (0 = no cap).", "20"),
    _whole("LOG_RETENTION_DAYS", "30", LOG_RETENTION_DAYS_BOUNDS,
           "Daily scheduler logs older than this many days are deleted (0 = keep all).",
           "14"),
    _whole("METRICS_MAX_MB", "10", METRICS_MAX_MB_BOUNDS,
           "metrics.jsonl is moved to metrics.jsonl.1 (replacing it) at this size.", "50"),
    Option("SPAWN_MODE", "fork", _choice_parser("fork", "exec"),
           "How wrappers start: fork (from the scheduler, ~1 ms) or exec (a fresh "
           "tinyscheduler-wrapper process, ~150 ms).", "exec"),
    _whole("WARM_WRAPPER_SEC", "10", WARM_WRAPPER_BOUNDS,
           "run --daemon, SPAWN_MODE=fork: a wrapper whose task ended cleanly waits this long "
           "to supervise the next task in the same process (0 = a fresh process per task).",
           "0"),
    Option("HOSTNAME", "", _parse_hostname, "This host's name in leases.", "worker-01",
           default_note="the machine's host name"),
    Option("LOG_LEVEL", "INFO", _parse_log_level, "DEBUG, INFO, WARNING or ERROR.", "DEBUG"),
    Option("LOG_FORMAT", "text", _choice_parser("text", "json"),
           "text, or json (one object per line).", "json"),
    Option("DRY_RUN", "false", _parse_bool, "Plan and print, change nothing.", "true"),
    Option("DISABLE_BLOCKING", "false", _parse_bool,
           "Rollback switch: the source's own order, no blocker filtering.", "false"),
    # --- isolation: workspaces, hooks, resource limits, sandbox (docs/workspaces.md) ---
    Option("WORKSPACE_MODE", "none", _choice_parser("none", "worktree", "directory"),
           "Where agents work: none (in WORK_DIR), worktree (a git worktree per task) or "
           "directory (a private directory per task).", "worktree"),
    Option("REPO_DIR", "", _parse_path, "worktree mode: the git repository tasks work on "
           "(its own working tree is never modified).", "/srv/agents/repo", is_path=True,
           default_note="none; required in worktree mode"),
    Option("TARGET_BRANCH", "", _parse_text, "worktree mode: the branch work starts from.",
           "main", default_note="the branch checked out in REPO_DIR"),
    _path("WORKSPACES_DIR", "state/workspaces", "Where per-task workspaces are made "
          "(task-<id>).", "/srv/agents/workspaces"),
    Option("WORKSPACE_TEMPLATE", "", _parse_path, "directory mode: a directory copied into "
           "each new workspace.", "/srv/agents/template", is_path=True,
           default_note="none: an empty directory"),
    Option("WORKSPACE_FRESH_ON_RETRY", "false", _parse_bool,
           "A retry gets a new workspace from the current target instead of reusing the last "
           "one (unmerged work is kept on a branch).", "true"),
    Option("AUTO_COMMIT", "true", _parse_bool, "worktree mode: commit what the agent left "
           "uncommitted when its attempt ends.", "false"),
    Option("GIT_AUTHOR_NAME", "tinyscheduler", _parse_text, "Author of automatic commits.",
           "Agent Bot"),
    Option("GIT_AUTHOR_EMAIL", "tinyscheduler@localhost", _parse_text,
           "Author e-mail of automatic commits.", "agents@example.com"),
    _whole("MIN_FREE_DISK_MB", "500", MIN_FREE_DISK_MB_BOUNDS, "Below this much free space where "
           "workspaces are made, tasks are skipped (not failed); 0 = no check.", "2048"),
    Option("HOOK_AFTER_CREATE", "", _parse_optional_command, "Hook argv run once when a "
           "workspace is first made; placeholders {task_id} {workspace} {branch} {attempt}.",
           "npm ci", default_note="none"),
    Option("HOOK_BEFORE_RUN", "", _parse_optional_command,
           "Hook argv run before every attempt (same placeholders).", "make deps",
           default_note="none"),
    Option("HOOK_AFTER_RUN", "", _parse_optional_command, "Hook argv run after every attempt "
           "(also {outcome}); a failure is logged only.", "make clean", default_note="none"),
    Option("HOOK_BEFORE_REMOVE", "", _parse_optional_command, "Hook argv run before a "
           "workspace is deleted; a failure is logged only.", "rm -rf node_modules",
           default_note="none"),
    _whole("HOOK_TIMEOUT_SEC", "300", HOOK_TIMEOUT_BOUNDS,
           "Longest a hook may run (then SIGTERM, SIGKILL after KILL_GRACE_SEC).", "600"),
    # --- the merge queue (docs/merge-queue.md) ---
    Option("MERGE", "", _choice_parser("off", "merge", "rebase"),
           "worktree mode: how a succeeded task's branch lands on TARGET_BRANCH: merge (a "
           "merge commit), rebase (its commits replayed), or off (the branch is left).",
           "rebase", default_note="merge in worktree mode, off otherwise"),
    Option("MERGE_CHECK_COMMAND", "", _parse_optional_command,
           "Argv run on the merged result before the target moves; a failure leaves the "
           "target unchanged (check_failed).", "make test", default_note="none"),
    _whole("MERGE_CHECK_TIMEOUT_SEC", "600", MERGE_CHECK_TIMEOUT_BOUNDS,
           "Longest the merge check may run (then SIGTERM, SIGKILL after KILL_GRACE_SEC).",
           "1800"),
    Option("MERGE_CONFLICT", "retry", _choice_parser("retry", "park"),
           "A merge conflict re-runs the task on a fresh workspace from the new target "
           "(retry, counts as an attempt) or parks it for a person (park).", "park"),
    Option("HOOK_AFTER_MERGE", "", _parse_optional_command,
           "Hook argv run after a successful merge ({task_id} {commit} {target} {branch}); "
           "a failure is reported and never undoes the merge.", "git push origin main",
           default_note="none"),
    Option("MERGE_LINK_TEMPLATE", "", _parse_link_template,
           "A link to a merge commit for results and TinyTask comments ({commit} "
           "{task_id} {target}).", "https://git.example.com/repo/commit/{commit}",
           default_note="none"),
    _whole("AGENT_MEMORY_MAX_MB", "0", AGENT_MEMORY_MAX_MB_BOUNDS,
           "Address-space limit of an agent (setrlimit RLIMIT_AS); 0 = none.", "4096"),
    _whole("AGENT_CPU_MAX_SEC", "0", AGENT_CPU_MAX_BOUNDS,
           "CPU-seconds limit of an agent (RLIMIT_CPU); 0 = none.", "3600"),
    _whole("AGENT_FILE_MAX_MB", "0", AGENT_FILE_MAX_MB_BOUNDS,
           "Largest file an agent may write (RLIMIT_FSIZE); 0 = none.", "1024"),
    _whole("AGENT_OPEN_FILES_MAX", "0", AGENT_OPEN_FILES_MAX_BOUNDS,
           "Open files limit of an agent (RLIMIT_NOFILE); 0 = inherited.", "4096"),
    Option("SANDBOX", "none", _choice_parser("none", "bwrap"),
           "none, or bwrap: the agent runs under bubblewrap, the file system read-only "
           "except its workspace and SANDBOX_WRITABLE.", "bwrap"),
    Option("SANDBOX_WRITABLE", "", _parse_path_list,
           "bwrap: more writable paths, separated by ':' (e.g. a cache).",
           "/root/.cache:/srv/agents/npm-cache", default_note="none"),
    Option("DASHBOARD_BIND", "127.0.0.1:8765", _parse_bind,
           "Where `tinyscheduler dashboard` listens (HOST:PORT); any address other than "
           "loopback needs DASHBOARD_TOKEN.", "0.0.0.0:8765"),
    Option("DASHBOARD_TOKEN", "", _parse_dashboard_token,
           "Token the dashboard asks for (bearer header or login form); at least 16 "
           "characters (secret).", "9b1d5f3c7a2e4d6f8b0c1e3a", secret=True),
    Option("DASHBOARD_ACTIONS", "false", _parse_bool,
           "Dashboard buttons for cancel, retry, pause and resume (needs DASHBOARD_TOKEN).",
           "true"),
)

OPTIONS_BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}

#: Variables of the original TinyScheduler that no longer do anything.
OBSOLETE = {
    "BIN_DIR": "the wrapper ships as the tinyscheduler-wrapper console script",
    "TASK_CACHE_DIR": "task data is handed to the agent through TINYSCHEDULER_TASK_FILE",
}


@dataclass(frozen=True)
class Resolved:
    """A value and where it came from: ``default``, ``env file PATH``, ``environment``, ``flag``."""

    value: Any
    origin: str


@dataclass(frozen=True)
class Settings:
    """Every resolved setting. Built once per process by :func:`load_settings`."""

    base_path: Path
    state_dir: Path
    running_dir: Path
    log_dir: Path
    recipes_dir: Path
    lock_file: Path
    agent_control_file: Path
    tasks_db: Path
    work_dir: Path
    agent_limits: Mapping[str, int]
    default_agent_limit: int
    task_source: str
    mcp_endpoint: str
    mcp_token: str = field(repr=False)
    database_url: str = field(default="", repr=False)
    database_url_file: Path | str = ""
    coordinator: str = "none"
    global_limits: Mapping[str, int] = field(default_factory=dict)
    host_timeout_sec: int = 120
    goose_bin: str = "goose"
    agent_command: str = DEFAULT_AGENT_COMMAND
    loop_interval_sec: int = 60
    heartbeat_sec: int = 15
    stale_multiplier: int = 4
    max_runtime_sec: int = 3600
    idle_timeout_sec: int = 0
    kill_grace_sec: int = 30
    spawn_timeout_sec: int = 30
    max_attempts: int = 3
    retry_backoff_sec: int = 60
    rate_limit_exit_codes: tuple[int, ...] = ()
    rate_limit_patterns: tuple[str, ...] | str = ""
    rate_limit_backoff_sec: int = 60
    rate_limit_backoff_max_sec: int = 3600
    max_total_runtime_sec: int = 0
    max_task_cost_usd: float = 0.0
    agent_daily_cost_max_usd: float = 0.0
    prompt_template_file: Path | str = ""
    agent_result_adapter: str = "none"
    attempt_log_max_mb: int = 100
    log_retention_days: int = 30
    metrics_max_mb: int = 10
    spawn_mode: str = "fork"
    warm_wrapper_sec: int = 10
    hostname: str = "localhost"
    log_level: str = "INFO"
    log_format: str = "text"
    dry_run: bool = False
    disable_blocking: bool = False
    workspace_mode: str = "none"
    repo_dir: Path | None = None
    target_branch: str = ""
    workspaces_dir: Path = Path("state/workspaces")
    workspace_template: Path | None = None
    workspace_fresh_on_retry: bool = False
    auto_commit: bool = True
    git_author_name: str = "tinyscheduler"
    git_author_email: str = "tinyscheduler@localhost"
    min_free_disk_mb: int = 500
    hook_after_create: str = ""
    hook_before_run: str = ""
    hook_after_run: str = ""
    hook_before_remove: str = ""
    hook_timeout_sec: int = 300
    merge: str = "off"
    merge_check_command: str = ""
    merge_check_timeout_sec: int = 600
    merge_conflict: str = "retry"
    hook_after_merge: str = ""
    merge_link_template: str = ""
    agent_memory_max_mb: int = 0
    agent_cpu_max_sec: int = 0
    agent_file_max_mb: int = 0
    agent_open_files_max: int = 0
    sandbox: str = "none"
    sandbox_writable: tuple[Path, ...] = ()
    dashboard_bind: str = "127.0.0.1:8765"
    dashboard_token: str = field(default="", repr=False)
    dashboard_actions: bool = False
    env_file: Path | None = None
    #: how the env file was chosen: ``--env-file``, ``TINYSCHEDULER_ENV_FILE``, ``found
    #: in the current directory``, or "" when none was loaded
    env_file_how: str = ""
    origins: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    unknown_variables: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @property
    def outbox_dir(self) -> Path:
        return self.state_dir / "outbox"

    @property
    def pause_file(self) -> Path:
        return self.state_dir / "paused.json"

    @property
    def last_pass_file(self) -> Path:
        return self.state_dir / "last-pass.json"

    @property
    def metrics_file(self) -> Path:
        return self.state_dir / "metrics.jsonl"

    @property
    def outcomes_file(self) -> Path:
        return self.state_dir / "outcomes.jsonl"

    @property
    def wake_socket(self) -> Path:
        return self.state_dir / "wake.sock"

    @property
    def task_log_dir(self) -> Path:
        return self.log_dir / "tasks"

    @property
    def throttle_dir(self) -> Path:
        """Per-agent rate-limit holds and daily spending."""
        return self.state_dir / "agents"

    def resolved(self) -> dict[str, Resolved]:
        """Every setting with its origin, secrets masked: what ``config --show`` prints."""
        shown: dict[str, Resolved] = {}
        for option in OPTIONS:
            value = getattr(self, option.attr)
            if option.secret and value:
                value = "********"
            elif option.name == "MCP_ENDPOINT" and value:
                value = mask_url(value)  # credentials in the URL are secrets too
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [str(item) for item in value]
            elif value is None:
                value = ""
            elif isinstance(value, Mapping):
                value = dict(value)
            shown[option.name] = Resolved(value, self.origins.get(option.name, "default"))
        return shown


# --- loading ----------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of an env file (python-dotenv syntax). Missing file -> ConfigError."""
    if not path.is_file():
        raise ConfigError(
            f"env file {path} does not exist or is not a file "
            "(pass an existing file, or omit it to use ./tinyscheduler.env or ./.env when "
            "present; 'tinyscheduler init' writes one)"
        )
    from dotenv import dotenv_values  # imported only when an env file is read

    try:
        values = dotenv_values(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"env file {path} cannot be read: {exc}") from None
    return {key: value for key, value in values.items() if value is not None}


def load_settings(
    env_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Build the settings from the layers; raise :class:`ConfigError` naming a bad value.

    ``env_file`` None means the file named by ``TINYSCHEDULER_ENV_FILE``, else
    ``./tinyscheduler.env`` or ``./.env`` when present. Every value of every layer is
    checked, also one a higher layer overrides. ``flags`` maps option names to text
    values, except ``AGENT_LIMITS`` which maps to a dict merged over the lower layers.
    Nothing is created or changed on disk.
    """
    environ = os.environ if environ is None else environ
    flags = dict(flags or {})
    cwd = Path.cwd() if cwd is None else cwd
    env_file, how = choose_env_file(env_file, environ, cwd)
    file_values = read_env_file(env_file) if env_file is not None else {}

    layers: list[tuple[str, Mapping[str, str]]] = [
        (f"env file {env_file}", file_values),
        ("environment", environ),
    ]
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for option in OPTIONS:
        text, origin = option.default, "default"
        for layer_origin, layer in layers:
            if layer.get(option.env, "").strip():
                text, origin = layer[option.env], layer_origin
                _parse(option, text, origin)  # checked even when a higher layer wins
        flag_value = flags.get(option.name)
        if flag_value is not None and option.name != "AGENT_LIMITS":
            text, origin = str(flag_value), "flag"
        values[option.name] = _parse(option, text, origin) if text.strip() else None
        origins[option.name] = origin

    limits = dict(values["AGENT_LIMITS"] or {})
    if flags.get("AGENT_LIMITS"):
        limits.update(flags["AGENT_LIMITS"])
        origins["AGENT_LIMITS"] = "flag"
    values["AGENT_LIMITS"] = limits

    _derive_defaults(values, cwd)
    _check_workspaces(values, origins)
    if values["TASK_SOURCE"] == "tinytask" and not values["MCP_ENDPOINT"]:
        raise ConfigError(
            f"{PREFIX}TASK_SOURCE=tinytask (from {origins['TASK_SOURCE']}) needs "
            f"{PREFIX}MCP_ENDPOINT (accepted: an http:// or https:// URL of the TinyTask "
            "server; or set TASK_SOURCE=local)"
        )
    _check_database(values, origins)
    unknown = sorted(
        {key for _, layer in layers for key in layer if key.startswith(PREFIX)}
        - {option.env for option in OPTIONS} - {ENV_FILE_VARIABLE}
    )
    return Settings(
        **{option.attr: values[option.name] for option in OPTIONS},
        env_file=env_file,
        env_file_how=how,
        origins=origins,
        unknown_variables=tuple(unknown),
    )


def choose_env_file(
    env_file: Path | None, environ: Mapping[str, str], cwd: Path
) -> tuple[Path | None, str]:
    """The env file to read and how it was chosen (see :func:`load_settings`)."""
    if env_file is not None:
        return env_file, "--env-file"
    named = environ.get(ENV_FILE_VARIABLE, "").strip()
    if named:
        try:
            path = expand_home(named)
        except ValueError as exc:
            raise ConfigError(f"{ENV_FILE_VARIABLE}={named!r}: {exc}") from None
        return (path if path.is_absolute() else cwd / path), ENV_FILE_VARIABLE
    for name in DISCOVERED_ENV_FILES:
        if (cwd / name).is_file():
            return cwd / name, "found in the current directory"
    return None, ""


def _check_database(values: dict[str, Any], origins: dict[str, str]) -> None:
    """DATABASE_URL from its file; present when something needs PostgreSQL; a host
    timeout that outlasts a wrapper's stale window."""
    url_file = values["DATABASE_URL_FILE"]
    if url_file and values["DATABASE_URL"]:
        raise ConfigError(f"{PREFIX}DATABASE_URL and {PREFIX}DATABASE_URL_FILE are both set; "
                          "accepted: one of them")
    if url_file:
        try:
            text = Path(url_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{PREFIX}DATABASE_URL_FILE={url_file} cannot be read: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        values["DATABASE_URL"] = _parse(OPTIONS_BY_NAME["DATABASE_URL"], text,
                                        f"file {url_file}")
        origins["DATABASE_URL"] = f"file {url_file}"
    needs = [f"{name}={values[name]}" for name in ("TASK_SOURCE", "COORDINATOR")
             if values[name] == "postgres"]
    if needs and not values["DATABASE_URL"]:
        raise ConfigError(f"{PREFIX}{needs[0]} needs {PREFIX}DATABASE_URL or "
                          f"{PREFIX}DATABASE_URL_FILE (accepted: a postgresql:// URL)")
    if values["COORDINATOR"] == "postgres" and values["TASK_SOURCE"] != "tinytask":
        raise ConfigError(f"{PREFIX}COORDINATOR=postgres (from {origins['COORDINATOR']}) is "
                          "for TASK_SOURCE=tinytask; TASK_SOURCE=postgres coordinates "
                          "itself and local is one host only")
    stale = values["HEARTBEAT_SEC"] * values["STALE_MULTIPLIER"]
    if needs and values["HOST_TIMEOUT_SEC"] <= stale:
        raise ConfigError(
            f"{PREFIX}HOST_TIMEOUT_SEC={values['HOST_TIMEOUT_SEC']} (from "
            f"{origins['HOST_TIMEOUT_SEC']}) must exceed HEARTBEAT_SEC x STALE_MULTIPLIER "
            f"= {stale}: a cut-off host must stop its agents before others take over")


def _parse(option: Option, text: str, origin: str) -> Any:
    try:
        if len(text) > MAX_VALUE_CHARS:
            raise ValueError(f"{len(text)} characters; accepted: at most {MAX_VALUE_CHARS}")
        if text_problem(text):
            raise ValueError(f"the value {text_problem(text)}; accepted: {TEXT_RULE}")
        return option.parse(text)
    except ValueError as exc:
        shown = "********" if option.secret else _clip(mask_url(text))
        raise ConfigError(f"{option.env}={shown} (from {origin}) is invalid: {exc}") from None


def _derive_defaults(values: dict[str, Any], cwd: Path) -> None:
    base = values["BASE_PATH"] or cwd
    base = base if base.is_absolute() else cwd / base
    values["BASE_PATH"] = base
    if values["WORK_DIR"] is None:
        values["WORK_DIR"] = base
    for option in OPTIONS:
        value = values[option.name]
        if option.is_path and isinstance(value, Path) and not value.is_absolute():
            values[option.name] = base / value
    values["SANDBOX_WRITABLE"] = tuple(
        path if path.is_absolute() else base / path for path in values["SANDBOX_WRITABLE"] or ())
    if values["TASK_SOURCE"] is None:
        values["TASK_SOURCE"] = "tinytask" if values["MCP_ENDPOINT"] else "local"
    if values["HOSTNAME"] is None:
        # os.uname() is what socket.gethostname() returns on Linux, without importing socket
        values["HOSTNAME"] = os.uname().nodename.split(".")[0] or "localhost"
    for option in OPTIONS:
        if values[option.name] is None and option.name not in _OPTIONAL_PATHS:
            values[option.name] = "" if option.default == "" else option.parse(option.default)


#: Path settings whose absence is None rather than a default path.
_OPTIONAL_PATHS = ("REPO_DIR", "WORKSPACE_TEMPLATE")
#: Longest a ``git`` call made while loading the settings may take.
_GIT_TIMEOUT_SEC = 10


def _check_workspaces(values: dict[str, Any], origins: Mapping[str, str]) -> None:
    """worktree mode needs REPO_DIR and a target branch (default: REPO_DIR's own branch);
    workspaces may not live inside REPO_DIR's working tree (that would modify it)."""
    mode = values["WORKSPACE_MODE"]
    if not values["MERGE"]:
        values["MERGE"] = "merge" if mode == "worktree" else "off"
    elif values["MERGE"] != "off" and mode != "worktree":
        raise ConfigError(f"{PREFIX}MERGE={values['MERGE']} (from {origins['MERGE']}) needs "
                          f"{PREFIX}WORKSPACE_MODE=worktree (it is {mode}); accepted: off, or "
                          "set WORKSPACE_MODE=worktree")
    if mode == "directory" and values["WORKSPACE_TEMPLATE"] is not None \
            and not values["WORKSPACE_TEMPLATE"].is_dir():
        raise ConfigError(f"{PREFIX}WORKSPACE_TEMPLATE={values['WORKSPACE_TEMPLATE']} (from "
                          f"{origins['WORKSPACE_TEMPLATE']}) is not a directory; accepted: an "
                          "existing directory to copy into each workspace, or empty")
    if mode != "worktree":
        return
    repo = values["REPO_DIR"]
    if repo is None or not repo.is_dir():
        shown = "is not set" if repo is None else f"={repo} is not a directory"
        raise ConfigError(f"{PREFIX}WORKSPACE_MODE=worktree needs {PREFIX}REPO_DIR, which "
                          f"{shown}; accepted: the path of a git repository")
    workspaces = values["WORKSPACES_DIR"]
    if workspaces.resolve().is_relative_to(repo.resolve()):
        raise ConfigError(f"{PREFIX}WORKSPACES_DIR={workspaces} is inside {PREFIX}REPO_DIR="
                          f"{repo}: worktrees there would change the repository's own working "
                          "tree; accepted: a directory outside REPO_DIR")
    if not values["TARGET_BRANCH"]:
        values["TARGET_BRANCH"] = _checked_out_branch(repo)


def _checked_out_branch(repo: Path) -> str:
    import subprocess

    why = "HEAD is detached"
    try:
        proc = subprocess.run(["git", "-C", str(repo), "symbolic-ref", "--quiet", "--short",
                               "HEAD"], capture_output=True, text=True, timeout=_GIT_TIMEOUT_SEC,
                              stdin=subprocess.DEVNULL)
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.strip()
        if proc.returncode != 1:
            why = (proc.stderr.strip().splitlines() or ["git failed"])[-1]
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = f"git could not run: {exc}"
    raise ConfigError(f"{PREFIX}TARGET_BRANCH is not set and {PREFIX}REPO_DIR={repo} has no "
                      f"branch checked out ({why}); accepted: set {PREFIX}TARGET_BRANCH to the "
                      "branch work starts from")
