"""``agents presets``: ready command templates for the common agent CLIs."""

from __future__ import annotations

import click

from scheduler.cli.context import SubGroup


@click.group(cls=SubGroup)
def agents() -> None:
    """Agent commands and presets."""


@agents.command()
def presets() -> None:
    """List the ready command templates (use one with 'validate-config --fix --preset')."""
    from scheduler.agents.presets import PRESETS

    width = max(len(preset.name) for preset in PRESETS)
    for preset in PRESETS:
        click.echo(f"{preset.name:<{width}}  {preset.description}")
        click.echo(f"{'':<{width}}  AGENT_COMMAND={preset.command}")
        if preset.adapter != "none":
            click.echo(f"{'':<{width}}  AGENT_RESULT_ADAPTER={preset.adapter}")
        click.echo(f"{'':<{width}}  checked {preset.checked}")
