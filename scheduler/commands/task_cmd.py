"""``task add|list|show|retry|cancel|import`` (placeholder until the local store lands)."""

from __future__ import annotations

import click

from scheduler.cli import SubGroup


@click.group(cls=SubGroup)
def task() -> None:
    """Manage tasks in the embedded local store."""
