"""The result protocol: JSON an agent may write to ``TINYSCHEDULER_RESULT_FILE``.

The file is read once, after the agent exits: at most :data:`MAX_BYTES`, never through a
symlink, only as a regular file. Every field is optional and validated on its own; a file
that is not a JSON object, or has a field of the wrong type or range, is *bad*: it is
noted in the task's history and the exit code decides the outcome, as if it were absent.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_BYTES = 64 * 1024
MAX_SUMMARY_CHARS = 4000
MAX_LINKS = 20
MAX_FILES = 1000
MAX_TEXT_CHARS = 2000
MAX_RETRY_AFTER_SEC = 7 * 86400
MAX_COST_USD = 1_000_000.0
MAX_TOKENS = 10**12

SUCCEEDED, FAILED, RATE_LIMITED, NEEDS_HUMAN = "succeeded", "failed", "rate_limited", "needs_human"
OUTCOMES = (SUCCEEDED, FAILED, RATE_LIMITED, NEEDS_HUMAN)
FIELDS = ("outcome", "summary", "retry_after_sec", "cost_usd", "tokens_in", "tokens_out",
          "links", "files_changed")


@dataclass(frozen=True)
class AgentResult:
    """What the agent said about its attempt (every field optional)."""

    outcome: str | None = None
    summary: str = ""
    retry_after_sec: float | None = None
    cost_usd: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    links: tuple[str, ...] = ()
    files_changed: tuple[str, ...] = ()
    ignored_fields: tuple[str, ...] = field(default=())

    def usage(self) -> dict[str, Any]:
        """Cost and tokens, only those given (for the result's detail and the store)."""
        values = {"cost_usd": self.cost_usd, "tokens_in": self.tokens_in,
                  "tokens_out": self.tokens_out}
        return {key: value for key, value in values.items() if value is not None}


class BadResultFile(ValueError):
    """The file exists but cannot be used; the message says what is wrong."""


def path_for(attempt_dir: Path, attempt: int) -> Path:
    """Where attempt ``attempt`` of a task may write its result."""
    return attempt_dir / f"attempt-{attempt}.result.json"


def read(path: Path) -> AgentResult | None:
    """The agent's result, None when it wrote none; raises :class:`BadResultFile`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                     | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symlink
        raise BadResultFile(f"cannot open {path.name} ({exc.strerror}; accepted: a regular "
                            "file, not a symlink)") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadResultFile(f"{path.name} is not a regular file")
        if info.st_size > MAX_BYTES:
            raise BadResultFile(f"{path.name} is {info.st_size} bytes; accepted: at most "
                                f"{MAX_BYTES}")
        data = os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    return parse(data)


def parse(data: bytes) -> AgentResult:
    """Validate the JSON document field by field; raise :class:`BadResultFile`."""
    if len(data) > MAX_BYTES:
        raise BadResultFile(f"result is over {MAX_BYTES} bytes")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadResultFile(f"result is not UTF-8 JSON ({exc})") from None
    if not isinstance(document, dict):
        raise BadResultFile(f"result is a JSON {_kind(document)}; accepted: an object with "
                            f"fields {', '.join(FIELDS)}")
    outcome = document.get("outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise _bad("outcome", outcome, " | ".join(OUTCOMES))
    return AgentResult(
        outcome=outcome,
        summary=_text(document, "summary", MAX_SUMMARY_CHARS),
        retry_after_sec=_number(document, "retry_after_sec", MAX_RETRY_AFTER_SEC),
        cost_usd=_number(document, "cost_usd", MAX_COST_USD),
        tokens_in=_count(document, "tokens_in"),
        tokens_out=_count(document, "tokens_out"),
        links=_links(document),
        files_changed=_files(document),
        ignored_fields=tuple(sorted(key for key in document if key not in FIELDS)),
    )


def _bad(name: str, value: object, accepted: str) -> BadResultFile:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return BadResultFile(f"field {name!r} is {shown}; accepted: {accepted}")


def _kind(value: object) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _text(document: dict[str, Any], name: str, limit: int) -> str:
    value = document.get(name, "")
    if not isinstance(value, str):
        raise _bad(name, value, "a string")
    if "\x00" in value:
        raise _bad(name, value, "text without NUL characters")
    return value[:limit]


def _number(document: dict[str, Any], name: str, maximum: float) -> float | None:
    value = document.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not 0 <= value <= maximum:
        raise _bad(name, value, f"a number from 0 to {maximum:g}")
    return float(value)


def _count(document: dict[str, Any], name: str) -> int | None:
    value = document.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        raise _bad(name, value, f"a whole number from 0 to {MAX_TOKENS:g}")
    return value


def _links(document: dict[str, Any]) -> tuple[str, ...]:
    values = _strings(document, "links", MAX_LINKS)
    for value in values:
        if not value.startswith(("https://", "http://")) or any(c.isspace() for c in value):
            raise _bad("links", value, "http:// or https:// URLs without spaces")
    return values


def _files(document: dict[str, Any]) -> tuple[str, ...]:
    values = _strings(document, "files_changed", MAX_FILES)
    for value in values:
        if value.startswith("/") or ".." in value.split("/"):
            raise _bad("files_changed", value, "paths relative to the workspace, no '..'")
    return values


def _strings(document: dict[str, Any], name: str, limit: int) -> tuple[str, ...]:
    value = document.get(name, [])
    if not isinstance(value, list) or len(value) > limit:
        raise _bad(name, value, f"an array of at most {limit} strings")
    for item in value:
        if not isinstance(item, str) or not item or len(item) > MAX_TEXT_CHARS \
                or "\x00" in item:
            raise _bad(name, item, f"non-empty strings of at most {MAX_TEXT_CHARS} characters")
    return tuple(value)
