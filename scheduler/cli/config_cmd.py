"""``config --show`` and ``validate-config [--fix]``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import click

from scheduler.cli.context import AppContext, SubCommand
from scheduler.errors import EXIT_OK, EXIT_USAGE, ConfigError
from scheduler.redact import mask_url


@click.command(cls=SubCommand)
@click.option("--show", is_flag=True, help="Print every resolved setting and its origin.")
@click.option("--json", "as_json", is_flag=True, help="Print {name: {value, origin}} as JSON.")
@click.pass_obj
def config(app: AppContext, show: bool, as_json: bool) -> int:
    """Show the resolved configuration (secrets masked)."""
    settings = app.settings()
    resolved = settings.resolved()
    if as_json:
        click.echo(json.dumps(
            {name: {"value": item.value, "origin": item.origin} for name, item in resolved.items()},
            indent=2,
        ))
        return EXIT_OK
    width = max(len(name) for name in resolved)
    for name, item in resolved.items():
        value = item.value if isinstance(item.value, str) else json.dumps(item.value)
        click.echo(f"{name:<{width}}  {value}  [{item.origin}]")
    return EXIT_OK


@dataclass
class Finding:
    level: str  # "error" | "warning" | "ok" | "fixed"
    message: str


@click.command("validate-config", cls=SubCommand)
@click.option("--fix", is_flag=True,
              help="Create missing directories (0700) and a default agent control file.")
@click.option("--preset", metavar="NAME",
              help="With --fix: write this agent preset into the env file "
                   "(see 'tinyscheduler agents presets').")
@click.pass_obj
def validate_config(app: AppContext, fix: bool, preset: str | None) -> int:
    """Check the configuration; print each problem and how to fix it (exit 2 on errors)."""
    findings: list[Finding] = []
    if preset is not None:
        if not fix:
            raise click.UsageError("--preset writes the env file: use it with --fix")
        findings += _write_preset(_preset_env_file(app), preset)
        app.forget_settings()
    settings = app.settings()
    from scheduler.cli.runner import describe_env_file

    findings.insert(0, Finding("ok", describe_env_file(settings)))
    findings += _check_base_path(settings.base_path)
    if not any(f.level == "error" for f in findings):
        findings += _check_directories(settings, fix)
        findings += _check_control_file(settings, fix)
    findings += _check_agent_command(settings)
    findings += _check_source(settings)
    findings += _check_workspaces(settings)
    findings += [_unknown_variable(name) for name in settings.unknown_variables]
    from scheduler import faults

    hook = faults.armed()
    if hook:
        findings.append(Finding("warning", hook))
    registry = _registry_or_none(settings)
    if registry is not None:
        findings += [Finding("warning", message) for message in registry.warnings()]
    for finding in findings:
        click.echo(f"{finding.level.upper():<8} {finding.message}")
    if registry is not None:
        _print_agent_table(registry)
    errors = sum(f.level == "error" for f in findings)
    click.echo(f"{errors} error(s), {sum(f.level == 'warning' for f in findings)} warning(s), "
               f"{sum(f.level == 'fixed' for f in findings)} change(s)")
    return EXIT_USAGE if errors else EXIT_OK


def _unknown_variable(name: str) -> Finding:
    from scheduler.config.settings import OBSOLETE, PREFIX

    reason = OBSOLETE.get(name[len(PREFIX):])
    if reason:
        return Finding("warning", f"obsolete variable {name} is ignored: {reason}")
    return Finding("warning", f"unknown variable {name} is ignored: is it a typo?")


def _check_base_path(base: Path) -> list[Finding]:
    if not base.is_dir():
        return [Finding("error", f"base path {base} does not exist or is not a directory; "
                                 "create it or set TINYSCHEDULER_BASE_PATH")]
    return [Finding("ok", f"base path {base}")]


def _check_directories(settings, fix: bool) -> list[Finding]:
    from scheduler.fsutil import ensure_private_dir
    from scheduler.state.paths import ON_DEMAND, problems

    findings = []
    for label, path, problem in problems(settings):
        if problem is not None:
            findings.append(Finding("error", problem))
        elif label in ON_DEMAND and not os.path.lexists(path):
            continue
        elif os.path.isdir(path):
            if os.access(path, os.W_OK | os.X_OK):
                findings.append(Finding("ok", f"{label} {path}"))
            else:
                findings.append(Finding("error", f"{label} {path} is not writable; "
                                                 f"fix its owner or mode (chmod 700)"))
        elif fix:
            try:
                ensure_private_dir(path)
                findings.append(Finding("fixed", f"created {label} {path} (0700)"))
            except OSError as exc:
                findings.append(Finding("error", f"cannot create {label} {path}: {exc}"))
        elif _creatable(path):
            findings.append(Finding("warning", f"{label} {path} is missing; "
                                               "'validate-config --fix' creates it"))
        else:
            findings.append(Finding("error", f"{label} {path} is missing and cannot be created "
                                             "(no writable parent)"))
    recipes = settings.recipes_dir
    if recipes.is_dir():
        findings.append(Finding("ok", f"recipes directory {recipes}"))
    elif "{recipe" not in settings.agent_command:
        pass  # the agent command uses no recipe
    elif fix and not recipes.exists():
        try:
            ensure_private_dir(recipes)
            findings.append(Finding("fixed", f"created recipes directory {recipes} (0700)"))
        except OSError as exc:
            findings.append(Finding("error", f"cannot create recipes directory {recipes}: {exc}"))
    else:
        findings.append(Finding("warning", f"recipes directory {recipes} is "
                                           "missing; goose tasks will fail to launch "
                                           "(set TINYSCHEDULER_RECIPES_DIR or run "
                                           "'validate-config --fix')"))
    return findings


def _preset_env_file(app: AppContext) -> Path:
    """The env file a preset goes into: the one the settings load (named or found in the
    current directory), else a new ./tinyscheduler.env, which is found from then on."""
    from scheduler.config.settings import choose_env_file

    chosen, _how = choose_env_file(app.env_file, os.environ, Path.cwd())
    return chosen or Path("tinyscheduler.env")


def _write_preset(env_file: Path, name: str) -> list[Finding]:
    """Append the preset's settings to the env file; never overwrite a line that is set."""
    from scheduler.agents.presets import get
    from scheduler.config.envfile import env_value
    from scheduler.config.settings import PREFIX, read_env_file
    from scheduler.fsutil import FILE_MODE

    try:
        preset = get(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--preset") from None
    existing = read_env_file(env_file) if env_file.exists() else {}
    lines, findings = [], []
    for key, value in preset.settings().items():
        if existing.get(PREFIX + key, "").strip():
            findings.append(Finding("warning", f"{env_file}: {PREFIX}{key} is already set; "
                                               f"left as it is (preset {name} would set "
                                               f"{value!r})"))
        else:
            lines.append(f"{PREFIX}{key}={env_value(value)}\n")
    if lines:
        try:
            fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW,
                         FILE_MODE)
            with os.fdopen(fd, "a", encoding="utf-8") as handle:
                handle.write(f"# agent preset {name}: {preset.description}\n" + "".join(lines))
        except OSError as exc:
            return [Finding("error", f"cannot write preset {name} to {env_file}: {exc}")]
        findings.append(Finding("fixed", f"wrote preset {name} to {env_file}"))
    return findings


def _creatable(path: Path) -> bool:
    parent = path
    while not parent.exists():
        parent = parent.parent
    return parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)


def _check_control_file(settings, fix: bool) -> list[Finding]:
    from scheduler.config.registry import DEFAULT_AGENTS, parse_control_file
    from scheduler.fsutil import FILE_MODE, ensure_private_dir

    path = settings.agent_control_file
    if not path.exists():
        if not fix:
            return [Finding("warning", f"agent control file {path} is missing: legacy mode "
                                       "(assigned tasks only); 'validate-config --fix' writes "
                                       "a default one")]
        body = [{"agentName": name, "agentType": queue} for name, queue in DEFAULT_AGENTS]
        try:
            ensure_private_dir(path.parent)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(body, indent=2) + "\n")
        except OSError as exc:
            return [Finding("error", f"cannot create agent control file {path}: {exc}")]
        return [Finding("fixed", f"created agent control file {path} with "
                                 + ", ".join(f"{n} (queue {q})" for n, q in DEFAULT_AGENTS))]
    try:
        pairs = parse_control_file(path)
    except ConfigError as exc:
        return [Finding("error", f"{exc}; fix the file (it is never overwritten)")]
    findings = [Finding("ok", f"agent control file {path}: {len(pairs)} agent(s)")]
    for name, _queue in pairs:
        limit = settings.agent_limits.get(name, settings.default_agent_limit)
        if limit == 0:
            findings.append(Finding("warning", f"agent {name} has limit 0: it will never run; "
                                               "set TINYSCHEDULER_AGENT_LIMITS"))
    return findings


def _check_agent_command(settings) -> list[Finding]:
    from scheduler.config.agentcmd import agent_program, agent_program_problem, find_agent_program

    program = agent_program(settings)
    if "{" in program:
        return [Finding("warning", f"agent command starts with a placeholder ({program}); "
                                   "cannot check that it exists")]
    problem = agent_program_problem(settings)
    if problem:
        return [Finding("error", problem)]
    return [Finding("ok", f"agent command {find_agent_program(settings)}")]


def _check_workspaces(settings) -> list[Finding]:
    from scheduler.workspace.checks import check

    return [Finding(level, message) for level, message in check(settings)]


def _check_source(settings) -> list[Finding]:
    if settings.task_source == "postgres" or settings.coordinator == "postgres":
        return _check_postgres(settings)
    if settings.task_source == "tinytask":
        return [Finding("ok", f"task source tinytask at {mask_url(settings.mcp_endpoint)}")]
    return [Finding("ok", f"task source local at {settings.tasks_db}")]


def _check_postgres(settings) -> list[Finding]:
    """Connect, and compare the schema version with this tinyscheduler's (the password
    never appears: errors name the server as user@host:port/dbname)."""
    from scheduler.errors import TinySchedulerError
    from scheduler.sources.postgres import db as pgdb

    try:
        pgdb.require_driver()
        from scheduler.sources.postgres.schema import SCHEMA_VERSION, current_version

        database = pgdb.Database(settings.database_url)
        try:
            with database.transaction() as cur:
                version = current_version(cur)
        finally:
            database.close()
    except TinySchedulerError as exc:
        return [Finding("error", str(exc))]
    where = f"postgres {database.server}"
    if version > SCHEMA_VERSION:
        return [Finding("error", f"{where}: schema v{version} is newer than this "
                                 f"tinyscheduler supports (v{SCHEMA_VERSION}); upgrade")]
    if version < SCHEMA_VERSION:
        state = "empty" if version == 0 else f"schema v{version}"
        return [Finding("ok", f"{where}: reachable, {state}; migrated to "
                              f"v{SCHEMA_VERSION} at first use")]
    role = (f"coordinator for tinytask at {settings.mcp_endpoint}"
            if settings.task_source == "tinytask" else "task source")
    return [Finding("ok", f"{where}: reachable, schema v{version} ({role})")]


def _registry_or_none(settings):
    from scheduler.config.registry import load_registry

    try:
        return load_registry(settings.agent_control_file, settings.agent_limits,
                             settings.default_agent_limit)
    except ConfigError:
        return None


def _print_agent_table(registry) -> None:
    click.echo("")
    mode = "legacy mode: assigned tasks only" if registry.legacy else "registry"
    click.echo(f"effective agents ({mode}):")
    if not registry.agents:
        click.echo("  (none)")
        return
    width = max(len("AGENT"), *(len(agent.name) for agent in registry.agents))
    queue_width = max(len("QUEUE"), *(len(agent.queue or "-") for agent in registry.agents))
    click.echo(f"  {'AGENT':<{width}}  {'QUEUE':<{queue_width}}  LIMIT")
    for agent in registry.agents:
        click.echo(f"  {agent.name:<{width}}  {agent.queue or '-':<{queue_width}}  "
                   f"{agent.limit}")
