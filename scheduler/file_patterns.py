"""Declared files: the git-style patterns a task expects to touch, and when two overlap.

A pattern is a path relative to the repository root, ``/``-separated, in which ``*``
matches within one path segment, ``?`` one character, ``[abc]`` one of a set, and a whole
segment ``**`` any number of segments (zero included). A pattern also covers everything
below what it names, so ``src/auth`` declares the directory and its contents.

Two patterns *overlap* when some path could match both. The rule is conservative: when
it cannot tell, it says they overlap — a false overlap only makes a task wait, a missed
one costs a merge conflict. Examples:

=====================  =====================  =======
``src/auth/**``        ``src/auth/login.py``  overlap
``src/auth/**``        ``src/billing/*.py``   apart
``*.md``               ``README.md``          overlap
``docs/*.md``          ``docs/api/x.md``      apart (``*`` stays in one segment)
``src``                ``src/a.py``           overlap (a directory covers its contents)
``src/*_test.py``      ``src/auth_*.py``      overlap (``auth_x_test.py`` fits both)
``src/*.py``           ``src/*.js``           apart (no name ends in both)
=====================  =====================  =======
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MAX_PATTERN_CHARS = 256
MAX_PATTERNS = 100
_WILD = re.compile(r"[*?\[]")


class BadPattern(ValueError):
    """A declared file pattern that cannot be used; the message names it."""


def check(pattern: object) -> str:
    """The pattern, normalised (no ``./``, no trailing ``/``); raises :class:`BadPattern`."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise BadPattern(f"file pattern {pattern!r} is empty; accepted: a path relative to "
                         "the repository root, with * ? [..] and ** as in git")
    text = pattern.strip()
    accepted = "accepted: a relative path such as src/auth/** or README.md"
    if len(text) > MAX_PATTERN_CHARS or any(ord(c) < 32 for c in text):
        raise BadPattern(f"file pattern {pattern!r} is too long or has control characters; "
                         f"{accepted}")
    if text.startswith("/") or "\\" in text:
        raise BadPattern(f"file pattern {pattern!r} is absolute or uses '\\'; {accepted}")
    segments = [s for s in text.split("/") if s not in ("", ".")]
    if not segments:
        raise BadPattern(f"file pattern {pattern!r} names no path; {accepted}")
    for segment in segments:
        if segment == "..":
            raise BadPattern(f"file pattern {pattern!r} leaves the repository ('..'); "
                             f"{accepted}")
        if "**" in segment and segment != "**":
            raise BadPattern(f"file pattern {pattern!r}: '**' must be a whole segment "
                             f"(like src/**/x.py); {accepted}")
        if segment.count("[") != segment.count("]"):
            raise BadPattern(f"file pattern {pattern!r} has an unclosed '['; {accepted}")
    return "/".join(segments)


def check_all(patterns: Iterable[object]) -> tuple[str, ...]:
    """Every pattern checked, duplicates dropped, order kept."""
    checked: list[str] = []
    for pattern in patterns:
        value = check(pattern)
        if value not in checked:
            checked.append(value)
    if len(checked) > MAX_PATTERNS:
        raise BadPattern(f"{len(checked)} file patterns; accepted: at most {MAX_PATTERNS}")
    return tuple(checked)


def overlap(first: str, second: str) -> bool:
    """Could some path match both patterns (each also covering what lies below it)?"""
    return _segments_overlap(tuple(first.split("/")) + ("**",),
                             tuple(second.split("/")) + ("**",))


@dataclass(frozen=True)
class Clash:
    """The first pair of patterns by which two declarations overlap."""

    mine: str
    theirs: str


def clash(mine: Sequence[str], theirs: Sequence[str]) -> Clash | None:
    for a in mine:
        for b in theirs:
            if overlap(a, b):
                return Clash(a, b)
    return None


def _segments_overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    seen: set[tuple[int, int]] = set()
    stack = [(0, 0)]
    while stack:
        i, j = stack.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] == "**":
            stack.append((i + 1, j))  # ** matches nothing
            if j < len(b):
                stack.append((i, j + 1))  # ** swallows one of b's segments
            continue
        if j < len(b) and b[j] == "**":
            stack.append((i, j + 1))
            if i < len(a):
                stack.append((i + 1, j))
            continue
        if i < len(a) and j < len(b) and _segment_overlap(a[i], b[j]):
            stack.append((i + 1, j + 1))
    return False


def _segment_overlap(p: str, q: str) -> bool:
    """Could one file name match both segment patterns? Exact when either is literal,
    conservative (literal prefix and suffix compatible) when both have wildcards."""
    p_wild, q_wild = bool(_WILD.search(p)), bool(_WILD.search(q))
    if not p_wild and not q_wild:
        return p == q
    if not p_wild:
        return fnmatch.fnmatchcase(p, q)
    if not q_wild:
        return fnmatch.fnmatchcase(q, p)
    p_head, p_tail = _literal_ends(p)
    q_head, q_tail = _literal_ends(q)
    heads_fit = p_head.startswith(q_head) or q_head.startswith(p_head)
    tails_fit = p_tail.endswith(q_tail) or q_tail.endswith(p_tail)
    return heads_fit and tails_fit


def _literal_ends(segment: str) -> tuple[str, str]:
    """The literal text before the first wildcard and after the last one."""
    first = _WILD.search(segment)
    head = segment[: first.start()] if first else segment
    last_star = max(segment.rfind("*"), segment.rfind("?"), segment.rfind("]"))
    tail = segment[last_star + 1:] if last_star >= 0 else ""
    return head, tail
