"""What every command shares: the collected global options and the command classes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

GLOBAL_ONLY_OPTIONS = ("--env-file",)


def _reject_global_options(ctx: click.Context, args: list[str]) -> None:
    """A global option written after a subcommand gets an error saying where it goes."""
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in GLOBAL_ONLY_OPTIONS:
            subcommand = ctx.command_path.split(" ", 1)[-1]
            raise click.UsageError(
                f"{name} is a global option: put it before the subcommand, e.g. "
                f"'tinyscheduler {name} FILE {subcommand} ...'",
                ctx=ctx,
            )


class SubCommand(click.Command):
    """A subcommand; rejects global-only options written after it, with a hint."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        _reject_global_options(ctx, args)
        return super().parse_args(ctx, args)


class SubGroup(click.Group):
    """A group of subcommands (``task ...``) with the same check."""

    command_class = SubCommand

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        _reject_global_options(ctx, args)
        return super().parse_args(ctx, args)


class MainGroup(click.Group):
    command_class = SubCommand
    group_class = SubGroup


SubGroup.group_class = SubGroup


@dataclass
class AppContext:
    """What the global options collected; builds the settings once, on first use."""

    env_file: Path | None = None
    flags: dict[str, Any] = field(default_factory=dict)
    _settings: Any = None

    def settings(self, **flags: Any):
        """The process's settings; command flags (non-None) override every other layer."""
        if self._settings is None:
            from scheduler.config.settings import load_settings

            merged = {**self.flags, **{k: v for k, v in flags.items() if v is not None}}
            self._settings = load_settings(env_file=self.env_file, flags=merged)
        return self._settings

    def forget_settings(self) -> None:
        """Load the settings again on next use (after a command changed the env file)."""
        self._settings = None
