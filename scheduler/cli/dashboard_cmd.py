"""``dashboard``: the web page, JSON API and /metrics (the ``tinyscheduler[dashboard]``
extra). Thin: the application lives in :mod:`scheduler.dashboard`."""

from __future__ import annotations

import click

from scheduler.cli.context import AppContext, SubCommand
from scheduler.errors import ConfigError


@click.command(cls=SubCommand)
@click.option("--bind", metavar="HOST:PORT",
              help="Overrides TINYSCHEDULER_DASHBOARD_BIND (default 127.0.0.1:8765). A "
                   "non-loopback address needs TINYSCHEDULER_DASHBOARD_TOKEN.")
@click.pass_obj
def dashboard(app: AppContext, bind: str | None) -> int:
    """Serve a live web dashboard, a JSON API and Prometheus metrics (read-only; never
    takes the scheduler lock)."""
    settings = app.settings(DASHBOARD_BIND=bind)
    try:
        from scheduler.dashboard import server
    except ImportError as exc:
        raise ConfigError(
            f"the dashboard needs its optional libraries ({(exc.name or '?').split('.')[0]} "
            "is missing): "
            "pip install 'tinyscheduler[dashboard]'") from None
    return server.serve(settings)
