"""Turning what an agent CLI prints into the result protocol, for agents that write no
result file themselves (``AGENT_RESULT_ADAPTER``).

Each adapter reads the tail of the attempt's output and returns an
:class:`~scheduler.agents.result_file.AgentResult`, or None when the output has nothing it
recognises (the exit code then decides, as without an adapter).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from scheduler.agents.result_file import FAILED, SUCCEEDED, AgentResult

ADAPTERS = ("none", "claude", "codex")


def adapt(name: str, output_tail: str) -> AgentResult | None:
    parser = _PARSERS.get(name)
    return parser(output_tail) if parser else None


def _json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects among the lines of ``text``, in order (other lines skipped)."""
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                found.append(value)
    return found


def _claude(tail: str) -> AgentResult | None:
    """``claude --print --output-format json``: one object of type ``result`` at the end,
    with ``is_error``, ``result`` (text), ``total_cost_usd`` and ``usage``."""
    results = [v for v in _json_lines(tail) if v.get("type") == "result"]
    if not results:
        return None
    last = results[-1]
    usage = last.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    return AgentResult(
        outcome=FAILED if last.get("is_error") else SUCCEEDED,
        summary=str(last.get("result", ""))[:4000],
        cost_usd=_amount(last.get("total_cost_usd")),
        tokens_in=_count(usage.get("input_tokens")),
        tokens_out=_count(usage.get("output_tokens")),
    )


def _codex(tail: str) -> AgentResult | None:
    """``codex exec --json``: JSON events; ``turn.completed`` carries ``usage``,
    ``turn.failed`` and ``error`` say why a run failed."""
    events = _json_lines(tail)
    if not events:
        return None
    tokens_in = tokens_out = 0
    seen_usage = False
    failure = ""
    message = ""
    for event in events:
        kind = event.get("type")
        if kind == "turn.completed" and isinstance(event.get("usage"), dict):
            seen_usage = True
            tokens_in += _count(event["usage"].get("input_tokens")) or 0
            tokens_out += _count(event["usage"].get("output_tokens")) or 0
        elif kind in ("turn.failed", "error"):
            error = event.get("error")
            if not isinstance(error, dict):
                error = event
            failure = str(error.get("message", kind))
        elif kind == "item.completed" and isinstance(event.get("item"), dict):
            item = event["item"]
            if item.get("type") == "agent_message":
                message = str(item.get("text", ""))
    if not seen_usage and not failure:
        return None
    return AgentResult(
        outcome=FAILED if failure else SUCCEEDED,
        summary=(failure or message)[:4000],
        tokens_in=tokens_in if seen_usage else None,
        tokens_out=tokens_out if seen_usage else None,
    )


def _amount(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e6:
        return float(value)
    return None


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**12:
        return value
    return None


_PARSERS: dict[str, Callable[[str], AgentResult | None]] = {"claude": _claude,
                                                           "codex": _codex}
