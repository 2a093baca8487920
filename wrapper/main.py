"""Entry point of ``tinyscheduler-wrapper`` (placeholder until the wrapper lands)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    return 0
