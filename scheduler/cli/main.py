"""The ``tinyscheduler`` command line: global options, error mapping, subcommands.

Subcommand modules import their heavy dependencies inside the command bodies, and a
subcommand's module is imported only when that subcommand is named (``--help`` imports
them all), so ``--help`` and ``config --show`` start fast. Exit codes: 0 ok, 1 a pass with errors,
2 usage or configuration error (see :mod:`scheduler.errors`).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import click

from scheduler import __version__
from scheduler.cli.context import AppContext, MainGroup, SubCommand
from scheduler.errors import EXIT_OK, EXIT_PASS_ERRORS, EXIT_USAGE, TinySchedulerError

#: subcommand -> (its module in scheduler.cli, the command's name there)
_COMMANDS = {
    "init": ("init_cmd", "init"),
    "config": ("config_cmd", "config"),
    "validate-config": ("config_cmd", "validate_config"),
    "run": ("run_cmd", "run"),
    "status": ("run_cmd", "status"),
    "pause": ("run_cmd", "pause"),
    "resume": ("run_cmd", "resume"),
    "task": ("task_cmd", "task"),
    "agents": ("agents_cmd", "agents"),
    "workspace": ("workspace_cmd", "workspace"),
    "dashboard": ("run_cmd", "dashboard"),
}


class LazyGroup(MainGroup):
    """The main group; a subcommand's module is imported when the subcommand is looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        # An unknown name loads every subcommand: the error suggests the closest one.
        for name in [cmd_name] if cmd_name in _COMMANDS else list(_COMMANDS):
            if name not in self.commands:
                module, attr = _COMMANDS[name]
                command = getattr(importlib.import_module(f"scheduler.cli.{module}"), attr)
                self.add_command(command, name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tinyscheduler", message="%(prog)s %(version)s")
@click.option("--env-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Env file to load (default: $TINYSCHEDULER_ENV_FILE, else "
                   "./tinyscheduler.env or ./.env when present). Must come before the "
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


@click.command(cls=SubCommand)
def version() -> None:
    """Print the version (the same as --version)."""
    click.echo(f"tinyscheduler {__version__}")


cli.add_command(version)


def _undecodable_argument(argv: list[str]) -> str | None:
    """The error for the first argument that is not valid UTF-8 (Python keeps such bytes
    as lone surrogates, which could be neither stored nor printed), or None."""
    for position, arg in enumerate(argv, start=1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            try:
                shown = repr(os.fsencode(arg))  # the bytes as given
            except UnicodeEncodeError:
                shown = ascii(arg)
            return (f"argument {position} ({shown}) is not valid UTF-8; accepted: UTF-8 "
                    "text (check the terminal's or the script's encoding)")
    return None


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    problem = _undecodable_argument(sys.argv[1:] if argv is None else argv)
    if problem is not None:
        click.echo(f"error: {problem}", err=True)
        return EXIT_USAGE
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
    except OSError as exc:  # a full or read-only disk, a permission: one line, never a trace
        click.echo(f"error: {exc}", err=True)
        return EXIT_PASS_ERRORS
    if isinstance(result, int):
        return result
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
