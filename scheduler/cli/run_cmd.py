"""``run``, ``status``, ``pause``, ``resume``, ``dashboard``."""

from __future__ import annotations

import json

import click

from scheduler.cli.context import AppContext, SubCommand
from scheduler.errors import EXIT_OK, EXIT_PASS_ERRORS, ConfigError


def _agent_limit(_ctx, _param, values: tuple[str, ...]) -> dict[str, int] | None:
    if not values:
        return None
    from scheduler.config.settings import parse_agent_limits

    try:
        return parse_agent_limits(",".join(values))
    except ValueError as exc:
        raise click.BadParameter(f"{exc} (expected NAME=N)") from None


@click.command(cls=SubCommand)
@click.option("--once", is_flag=True, help="One pass, then exit "
              "(default; for a systemd timer or cron).")
@click.option("--daemon", is_flag=True, help="Passes in a loop (systemd service).")
@click.option("--dry-run", is_flag=True, default=None,
              help="Print the plan; change nothing (no lease, no source write, no process).")
@click.option("--json", "as_json", is_flag=True, help="Print the pass summary (and plan) as JSON.")
@click.option("--agent-limit", multiple=True, callback=_agent_limit, metavar="NAME=N",
              help="Override one agent's limit (repeatable).")
@click.option("--mcp-endpoint", help="Overrides TINYSCHEDULER_MCP_ENDPOINT.")
@click.option("--loop-interval", type=click.IntRange(min=1),
              help="Overrides TINYSCHEDULER_LOOP_INTERVAL_SEC.")
@click.pass_obj
def run(app: AppContext, once: bool, daemon: bool, dry_run: bool | None, as_json: bool,
        agent_limit: dict | None, mcp_endpoint: str | None, loop_interval: int | None) -> int:
    """Reconcile: reclaim dead leases, fill free slots, spawn wrappers.

    Exit 0 clean (also when another scheduler holds the lock), 1 if anything in the pass
    failed, 2 on a configuration error (also: the agent command's program is missing).
    """
    if once and daemon:
        raise click.UsageError("--once and --daemon exclude each other: give one "
                               "(--once is the default)")
    flags = {"AGENT_LIMITS": agent_limit, "MCP_ENDPOINT": mcp_endpoint,
             "LOOP_INTERVAL_SEC": loop_interval, "DRY_RUN": "true" if dry_run else None}
    settings = app.settings(**flags)
    from scheduler.cli import runner
    from scheduler.config.agentcmd import agent_program_problem

    problem = agent_program_problem(settings)
    if problem:
        if settings.env_file is None:
            problem += ("; note: no env file was loaded (none named, no ./tinyscheduler.env "
                        "or ./.env here): pass --env-file FILE before the subcommand")
        raise ConfigError(problem)
    return runner.run(settings, daemon=daemon, dry_run=settings.dry_run,
                      as_json=as_json, reload=lambda: _reload(app, flags))


def _reload(app: AppContext, flags: dict):
    from scheduler.config.settings import load_settings

    merged = {**app.flags, **{k: v for k, v in flags.items() if v is not None}}
    return load_settings(env_file=app.env_file, flags=merged)


@click.command(cls=SubCommand)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--watch", is_flag=True, help="Redraw every second until interrupted.")
@click.pass_obj
def status(app: AppContext, as_json: bool, watch: bool) -> int:
    """Agents, running tasks, backlog, outbox, last pass, source health (exit 1 if
    unhealthy)."""
    from scheduler.reconcile import status as status_mod

    if watch and as_json:
        raise click.UsageError("give --watch or --json, not both")
    settings = app.settings()
    if watch:
        return _watch(settings, status_mod)
    report = status_mod.collect(settings)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        click.echo(status_mod.render(report))
    return EXIT_OK if report["healthy"] else EXIT_PASS_ERRORS


def _watch(settings, status_mod) -> int:
    """``status --watch``: clear the terminal and redraw once a second until SIGINT
    (Ctrl-C) or SIGTERM, then exit 0. The handlers are installed here: a SIGINT that the
    parent ignores (a background job of a script, ``nohup``) would otherwise be ignored
    here too, and nothing would end the loop. The signal is also noted, so an interrupt
    that lands where Python drops exceptions (a finalizer) still ends it."""
    import signal
    import sys
    import time

    stopped: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopped.append(signum)
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    try:
        while not stopped:
            text = status_mod.render(status_mod.collect(settings))
            sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")  # home, clear, redraw
            sys.stdout.flush()
            if not stopped:
                time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _pause_command(pause: bool):
    verb = "pause" if pause else "resume"
    help_text = (f"{verb.capitalize()} dispatch: everything, one agent or one queue. "
                 "Running tasks go on; persists across restarts.")

    @click.command(verb, cls=SubCommand, help=help_text)
    @click.option("--agent", help=f"{verb.capitalize()} one agent only.")
    @click.option("--queue", help=f"{verb.capitalize()} one queue only.")
    @click.pass_obj
    def command(app: AppContext, agent: str | None, queue: str | None) -> int:
        from scheduler.reconcile.actions import set_paused

        if agent and queue:
            raise click.UsageError("give --agent or --queue, not both")
        click.echo(set_paused(app.settings(), pause=pause, agent=agent, queue=queue))
        return EXIT_OK

    return command


pause = _pause_command(True)
resume = _pause_command(False)


@click.command(cls=SubCommand)
@click.option("--bind", metavar="HOST:PORT",
              help="Overrides TINYSCHEDULER_DASHBOARD_BIND (default 127.0.0.1:8765). A "
                   "non-loopback address needs TINYSCHEDULER_DASHBOARD_TOKEN.")
@click.pass_obj
def dashboard(app: AppContext, bind: str | None) -> int:
    """Serve a live web dashboard, a JSON API and Prometheus metrics (read-only; never
    takes the scheduler lock; the tinyscheduler[dashboard] extra)."""
    settings = app.settings(DASHBOARD_BIND=bind)
    try:
        from scheduler.dashboard import server
    except ImportError as exc:
        missing = (exc.name or "?").split(".")[0]
        raise ConfigError(f"the dashboard needs its optional libraries ({missing} is "
                          "missing): pip install 'tinyscheduler[dashboard]'") from None
    return server.serve(settings)
