"""``init``: write a commented env file with every setting, to start from."""

from __future__ import annotations

import os
from pathlib import Path

import click

from scheduler.cli.context import SubCommand
from scheduler.errors import EXIT_OK, ConfigError, InputError


@click.command(cls=SubCommand)
@click.argument("file", required=False, default="tinyscheduler.env",
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--agent-command", metavar="TEMPLATE",
              help="Write TINYSCHEDULER_AGENT_COMMAND uncommented with this argv template.")
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
def init(file: Path, agent_command: str | None, force: bool) -> int:
    """Write FILE (default ./tinyscheduler.env): every setting, commented, with its default.

    In the current directory it is read automatically; elsewhere name it with
    --env-file or TINYSCHEDULER_ENV_FILE. Nothing else is created: run
    'validate-config --fix' next.
    """
    from scheduler.config import envfile
    from scheduler.config.settings import OPTIONS_BY_NAME
    from scheduler.fsutil import FILE_MODE

    values = {}
    if agent_command is not None:
        try:
            values["AGENT_COMMAND"] = OPTIONS_BY_NAME["AGENT_COMMAND"].parse(agent_command)
        except ValueError as exc:
            raise InputError(f"--agent-command {agent_command!r} is invalid: {exc}") from None
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(file, flags, FILE_MODE)
    except FileExistsError:
        raise ConfigError(f"{file} exists; nothing written (edit it, or pass --force to "
                          "overwrite it)") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {file}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(envfile.render(values))
    os.chmod(file, FILE_MODE)
    where = ("read automatically from this directory"
             if file.name in ("tinyscheduler.env", ".env") and file.resolve().parent == Path.cwd()
             else f"pass --env-file {file} or set TINYSCHEDULER_ENV_FILE={file}")
    click.echo(f"wrote {file}: every setting with its default, commented out ({where})")
    if agent_command is None:
        click.echo("set TINYSCHEDULER_AGENT_COMMAND (or TINYSCHEDULER_GOOSE_BIN) in it, then "
                   "run: tinyscheduler validate-config --fix")
    else:
        click.echo("next: tinyscheduler validate-config --fix")
    return EXIT_OK
