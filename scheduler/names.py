"""Validation of names that come from outside and may end up in a path or an argv."""

from __future__ import annotations

import re

from scheduler.errors import InvalidName

#: Task ids, agent names and queue names: 1-64 of letters, digits, ``_``, ``.`` and ``-``.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
NAME_RULE = "1-64 characters from A-Z a-z 0-9 _ . - (and not '.' or '..')"


def is_valid_name(value: object) -> bool:
    """True when ``value`` is safe to use as one path component."""
    return (
        isinstance(value, str)
        and value not in (".", "..")
        and NAME_PATTERN.fullmatch(value) is not None
    )


#: What a text field (a title, a description) may hold, for error messages.
TEXT_RULE = "UTF-8 text without NUL characters"
_SURROGATES = re.compile("[\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored or passed as an argument, or None. A NUL cannot be
    in an argv; a lone surrogate (from undecodable bytes or a bad JSON escape) is not
    UTF-8 and cannot be stored."""
    if "\x00" in value:
        return f"contains a NUL character at position {value.index(chr(0))}"
    bad = _SURROGATES.search(value)
    if bad is not None:
        return (f"is not valid UTF-8 (an unpaired surrogate \\u{ord(bad.group()):04x} at "
                f"position {bad.start()})")
    return None


def check_name(value: object, what: str = "task id") -> str:
    """Return ``value`` if it is a valid name, else raise :class:`InvalidName` saying why."""
    if not is_valid_name(value):
        raise InvalidName(f"invalid {what} {value!r}: expected {NAME_RULE}")
    return value  # type: ignore[return-value]
