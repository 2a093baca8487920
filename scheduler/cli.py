"""The ``tinyscheduler`` command line: global options, error mapping, subcommands.

Subcommand modules import their heavy dependencies inside the command bodies, so
``--help`` and ``config --show`` start fast. Exit codes: 0 ok, 1 a pass with errors,
2 usage or configuration error (see :mod:`scheduler.errors`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from scheduler import __version__
from scheduler.errors import EXIT_OK, EXIT_PASS_ERRORS, TinySchedulerError

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
            from scheduler.settings import load_settings

            merged = {**self.flags, **{k: v for k, v in flags.items() if v is not None}}
            self._settings = load_settings(env_file=self.env_file, flags=merged)
        return self._settings


@click.group(cls=MainGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tinyscheduler")
@click.option("--env-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Env file to load (default: ./.env when present). Must come before the "
                   "subcommand.")
@click.option("--base-path", type=click.Path(file_okay=False, path_type=Path),
              help="Overrides TINYSCHEDULER_BASE_PATH.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"],
                                               case_sensitive=False),
              help="Overrides TINYSCHEDULER_LOG_LEVEL.")
@click.pass_context
def cli(ctx: click.Context, env_file: Path | None, base_path: Path | None,
        log_level: str | None) -> None:
    """Run AI coding agents on a backlog of tasks, a few at a time, crash-safe.

    \b
    Exit codes: 0 ok (also: another scheduler holds the lock), 1 the pass had
    errors, 2 usage or configuration error.
    """
    flags = {"BASE_PATH": base_path, "LOG_LEVEL": log_level}
    ctx.obj = AppContext(env_file=env_file, flags={k: v for k, v in flags.items() if v})


def _register_commands() -> None:
    from scheduler.commands import config_cmd, run_cmd, task_cmd

    for command in (
        config_cmd.config,
        config_cmd.validate_config,
        run_cmd.run,
        run_cmd.status,
        run_cmd.pause,
        run_cmd.resume,
        task_cmd.task,
    ):
        cli.add_command(command)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    try:
        result = cli.main(args=argv, prog_name="tinyscheduler", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return EXIT_PASS_ERRORS
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except TinySchedulerError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except BrokenPipeError:
        return EXIT_OK
    if isinstance(result, int):
        return result
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
