"""Telling a rate-limited attempt from a failed one, and how long its agent waits.

A rate limit is the provider's problem, not the task's: the task is requeued without
counting an attempt and the *agent* is held back, with a delay that doubles while the
limit persists and resets at its first success.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

#: Only this much of the end of an attempt's output is searched.
TAIL_BYTES = 64 * 1024

#: The messages the common agent CLIs and model APIs print when throttled.
DEFAULT_PATTERNS: tuple[str, ...] = (
    r"rate[ _-]?limit",
    r"\b429\b",
    r"too many requests",
    r"quota (?:exceeded|exhausted)|exceeded your (?:current )?quota|insufficient_quota",
    r"\boverloaded",
    r"usage limit",
)

#: A line an agent waiting for input typically ends with.
_PROMPT_LINE = re.compile(r"(\?|\(y/n\)|\[y/n\]|:)\s*$", re.IGNORECASE)


def compile_patterns(patterns: Iterable[str]) -> re.Pattern[str]:
    """One case-insensitive regex for all patterns; raises ValueError naming a bad one."""
    checked = []
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"rate-limit pattern {pattern!r} is not a regular expression "
                             f"({exc})") from None
        checked.append(f"(?:{pattern})")
    if not checked:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile("|".join(checked), re.IGNORECASE)


def is_rate_limited(*, said_rate_limited: bool, exit_code: int | None,
                    exit_codes: Sequence[int], output_tail: str,
                    patterns: re.Pattern[str]) -> str | None:
    """Why an attempt that did not succeed counts as rate-limited, or None."""
    if said_rate_limited:
        return "the agent's result says rate_limited"
    if exit_code is not None and exit_code in exit_codes:
        return f"exit code {exit_code} is a rate-limit exit code"
    match = patterns.search(output_tail)
    if match:
        return f"its output says {match.group(0)!r}"
    return None


def next_delay(streak: int, *, base_sec: int, max_sec: int,
               retry_after_sec: float | None = None) -> int:
    """Seconds to hold the agent after its ``streak``-th rate limit in a row (1 = first).

    ``retry_after_sec`` from the agent wins when given (bounded by ``max_sec``)."""
    if retry_after_sec is not None:
        return max(1, min(int(retry_after_sec + 0.999), max_sec))
    return max(1, min(base_sec * 2 ** min(max(streak - 1, 0), 30), max_sec))


def looks_like_waiting_for_input(output_tail: str) -> bool:
    """True when the last non-empty line of output reads like a question or a prompt."""
    lines = [line for line in output_tail.splitlines() if line.strip()]
    return bool(lines) and bool(_PROMPT_LINE.search(lines[-1]))


def ordinal(number: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 21st ..."""
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(
        number % 10, "th")
    return f"{number}{suffix}"
