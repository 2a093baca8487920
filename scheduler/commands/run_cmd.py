"""``run``, ``status``, ``pause``, ``resume`` (placeholder until the reconciler lands)."""

from __future__ import annotations

import click

from scheduler.cli import SubCommand


@click.command(cls=SubCommand)
def run() -> int:
    """Run reconciliation passes."""
    return 0


@click.command(cls=SubCommand)
def status() -> int:
    """Show agents, running leases and the last pass."""
    return 0


@click.command(cls=SubCommand)
def pause() -> int:
    """Pause dispatch."""
    return 0


@click.command(cls=SubCommand)
def resume() -> int:
    """Resume dispatch."""
    return 0
