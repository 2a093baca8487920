"""``workspace list`` and ``workspace prune``: thin commands over scheduler.workspace.prune."""

from __future__ import annotations

import json

import click

from scheduler.cli.context import AppContext, SubGroup
from scheduler.errors import EXIT_OK


@click.group(cls=SubGroup)
def workspace() -> None:
    """Per-task workspaces (WORKSPACE_MODE worktree or directory) and task branches."""


@workspace.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the workspaces as JSON.")
@click.pass_obj
def list_(app: AppContext, as_json: bool) -> int:
    """Every task workspace and branch that exists, and whether its lease is live."""
    from scheduler.workspace.prune import entries

    found = entries(app.settings())
    if as_json:
        click.echo(json.dumps([entry.to_json() for entry in found], indent=2))
        return EXIT_OK
    if not found:
        click.echo("no workspaces")
        return EXIT_OK
    for e in found:
        where = e.path if e.exists else f"{e.path} (removed)"
        branch = (f" branch {e.branch}" + ("" if e.branch_exists else " (deleted)")
                  if e.branch else "")
        live = " LEASE LIVE" if e.leased else ""
        click.echo(f"task {e.task_id:<8} {e.mode:<9} {e.state:<8} attempt {e.attempt} "
                   f"{e.outcome or '-':<13} {where}{branch}{live}")
        if e.note:
            click.echo(f"  note: {e.note}")
    return EXIT_OK


@workspace.command()
@click.option("--older-than", type=click.FloatRange(min=0), metavar="DAYS",
              help="Only workspaces untouched for at least DAYS days.")
@click.option("--force", is_flag=True,
              help="Also remove uncommitted changes and branches with unmerged work.")
@click.pass_obj
def prune(app: AppContext, older_than: float | None, force: bool) -> int:
    """Remove workspaces and task branches of tasks with no live lease.

    Without --force, a worktree with uncommitted changes and a branch with commits that
    are not on the target branch are kept (and reported).
    """
    from scheduler.workspace.prune import prune as run_prune

    actions = run_prune(app.settings(), older_than_days=older_than, force=force)
    for action in actions:
        click.echo(f"task {action.task_id}: {action.done} {action.detail}")
    removed = sum(a.done == "removed" for a in actions)
    click.echo(f"{removed} removed, {sum(a.done != 'removed' for a in actions)} kept or skipped")
    return EXIT_OK
