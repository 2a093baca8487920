"""``task add|list|show|edit|retry|cancel|revert|delete|prune|import|export``: manage the
task store, embedded (TASK_SOURCE=local) or PostgreSQL (TASK_SOURCE=postgres).

The store (sqlite3, psycopg) is imported inside the command bodies so ``--help`` stays fast.
Every change nudges a running daemon through its wake-up socket.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from scheduler.cli.context import AppContext, SubGroup
from scheduler.errors import ConfigError, InputError

STATUSES = ("idle", "working", "complete", "failed", "cancelled")
TITLE_WIDTH = 50


@click.group(cls=SubGroup)
def task() -> None:
    """Manage tasks in the task store (TASK_SOURCE=local or postgres)."""


@contextmanager
def _open_store(app: AppContext) -> Iterator[tuple[Any, Any]]:
    """The settings and an open task store; refuses when TASK_SOURCE is tinytask."""
    settings = app.settings()
    if settings.task_source == "tinytask":
        raise ConfigError(
            "task commands manage the embedded or PostgreSQL task store; TASK_SOURCE is "
            "tinytask — manage tasks on the TinyTask server"
        )
    if settings.task_source == "postgres":
        from scheduler.sources.postgres.store import PostgresStore

        store: Any = PostgresStore.from_settings(settings)
    else:
        from scheduler.sources.local import LocalStore

        store = LocalStore.from_settings(settings)
    try:
        yield settings, store
    finally:
        store.close()


def _nudger() -> Callable[[Any], None]:
    """Wakes the daemon (given the settings). Imported before the change it announces:
    the import costs a few ms, and the daemon should hear of a change once committed."""
    from scheduler.state.wake import nudge

    def wake(settings: Any) -> None:
        nudge(settings.wake_socket)

    return wake


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    from scheduler.clock import to_iso

    return to_iso(value)


def task_to_dict(task_obj: Any) -> dict[str, Any]:
    """The stable JSON shape of a task (imported when needed: not on ``--help``)."""
    from scheduler.sources.base import task_to_dict as to_dict

    return to_dict(task_obj)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _describe(task_obj: Any) -> str:
    parts = [f"task {task_obj.id}: {task_obj.title!r}", f"[{task_obj.status}]"]
    if task_obj.queue:
        parts.append(f"queue {task_obj.queue}")
    if task_obj.assignee:
        parts.append(f"agent {task_obj.assignee}")
    if task_obj.priority:
        parts.append(f"priority {task_obj.priority}")
    if task_obj.blocked_by:
        state = "blocked" if task_obj.is_blocked else "unblocked"
        parts.append(f"{state} by {', '.join(task_obj.blocked_by)}")
    return " ".join(parts)


# --- add ---------------------------------------------------------------------------------


@task.command()
@click.argument("title")
@click.option("--description", default="", help="Longer text handed to the agent.")
@click.option("--queue", help="Queue (agent type) whose pool runs the task.")
@click.option("--agent", help="Assign to this agent directly.")
@click.option("--priority", type=int, default=0, show_default=True,
              help="Higher runs first.")
@click.option("--blocked-by", "blocked_by", multiple=True, metavar="ID",
              help="Wait for this task to complete first (repeatable).")
@click.option("--recipe", help="Recipe name or file in RECIPES_DIR, e.g. dev.yaml.")
@click.option("--files", multiple=True, metavar="GLOB",
              help="A path or git-style pattern the task expects to touch (repeatable); "
                   "tasks whose files overlap never run at the same time.")
@click.option("--json", "as_json", is_flag=True, help="Print the task as JSON.")
@click.pass_obj
def add(app: AppContext, title: str, description: str, queue: str | None,
        agent: str | None, priority: int, blocked_by: tuple[str, ...], recipe: str | None,
        files: tuple[str, ...], as_json: bool) -> None:
    """Add a task."""
    nudge = _nudger()
    with _open_store(app) as (settings, store):
        added = store.add_task(title, description=description, queue=queue, assignee=agent,
                               priority=priority, blocked_by=blocked_by, recipe=recipe,
                               files=files)
    nudge(settings)
    if as_json:
        _echo_json(task_to_dict(added))
    else:
        click.echo(f"added {_describe(added)}")
    _warn_if_unrunnable(settings, added)


def _warn_if_unrunnable(settings: Any, task_obj: Any) -> None:
    """Say so on stderr when no agent of the registry can ever run this task."""
    from scheduler.config.registry import load_registry

    try:
        registry = load_registry(settings.agent_control_file, settings.agent_limits,
                                 settings.default_agent_limit)
    except ConfigError as exc:
        click.echo(f"warning: cannot check which agent runs task {task_obj.id}: {exc}",
                   err=True)
        return
    reason = registry.cannot_run(task_obj.queue, task_obj.assignee)
    if reason:
        click.echo(f"warning: no agent can run task {task_obj.id}: {reason} "
                   f"({registry.describe_known()}); it waits until that changes "
                   f"(tinyscheduler task edit {task_obj.id} --queue Q or --agent A)", err=True)


# --- list --------------------------------------------------------------------------------


def _merging(settings: Any) -> set[str]:
    """Ids of the working tasks whose branch waits for, or is in, its merge."""
    from scheduler.state.leases import MERGING, LeaseStore

    if not settings.running_dir.is_dir():
        return set()
    return {lease.task_id for lease in LeaseStore(settings.running_dir).list(quarantine=False)
            if lease.state == MERGING}


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


@task.command("list")
@click.option("--status", type=click.Choice(STATUSES), help="Only tasks in this status.")
@click.option("--queue", help="Only tasks of this queue.")
@click.option("--agent", help="Only tasks assigned to this agent.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_obj
def list_(app: AppContext, status: str | None, queue: str | None, agent: str | None,
          as_json: bool) -> None:
    """List tasks, oldest first."""
    with _open_store(app) as (settings, store):
        tasks = store.list_tasks(status=status, queue=queue, assignee=agent)
        if not as_json:
            runs = store.run_counts([t.id for t in tasks])
            blockers = store.current([b for t in tasks for b in t.blocked_by])
    merging = _merging(settings) if any(t.status == "working" for t in tasks) else set()
    if as_json:
        _echo_json([{**task_to_dict(t), "merging": t.id in merging} for t in tasks])
        return
    if not tasks:
        click.echo("no tasks")
        return
    header = ("ID", "STATUS", "QUEUE", "AGENT", "PRI", "RUNS", "BLOCKED", "TITLE")
    rows = [
        (t.id, "merging" if t.id in merging else t.status, t.queue or "-", t.assignee or "-",
         str(t.priority), str(runs.get(t.id, 0)), _open_blockers(t, blockers),
         _clip(t.title, TITLE_WIDTH))
        for t in tasks
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]))


def _open_blockers(task_obj: Any, blockers: dict[str, Any]) -> str:
    """The blockers not complete yet, or "no"."""
    open_ids = [b for b in task_obj.blocked_by
                if blockers.get(b) is not None and blockers[b].status != "complete"]
    return ",".join(open_ids) or "no"


# --- show --------------------------------------------------------------------------------


@task.command()
@click.argument("task_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the task as JSON.")
@click.pass_obj
def show(app: AppContext, task_id: str, as_json: bool) -> None:
    """Show a task: every field, its blockers, the tasks it blocks and its history."""
    if as_json:
        from scheduler.reconcile.task_view import task_document

        with _open_store(app) as (settings, store):
            _echo_json(task_document(settings, store, task_id))
        return
    with _open_store(app) as (settings, store):
        found = store.get(task_id)
        details = store.details(task_id)
        history = store.history(task_id)
        blocking_ids = store.blocking(task_id)
        related = store.current([*found.blocked_by, *blocking_ids])
    from scheduler.workspace import record

    kept = record.read(app.settings().task_log_dir, found.id)
    merging = found.status == "working" and found.id in _merging(settings)
    merged = details.get("merge_commit")
    fields = (
        ("status", found.status + (" (parked)" if found.parked else "")
         + (" (merging)" if merging else "")),
        ("queue", found.queue), ("assignee", found.assignee),
        ("priority", found.priority), ("recipe", found.recipe),
        ("files", " ".join(found.files)),
        ("attempts", found.attempts), ("not before", _iso(found.not_before)),
        ("created", _iso(found.created_at)), ("updated", details["updated_at"]),
        ("blocked", "yes" if found.is_blocked else "no"),
        ("last error", found.last_error), ("result", details["result_summary"]),
        ("used", _usage(details)),
        ("merged as", merged), ("changed", " ".join(details.get("changed_files") or ())),
        ("workspace", _workspace_line(kept)),
    )
    click.echo(f"task {found.id}: {found.title}")
    for label, value in fields:
        text = "-" if value is None or value == "" else str(value)
        lines = text.splitlines() or ["-"]
        click.echo(f"  {label:<11} {lines[0]}")
        for line in lines[1:]:
            click.echo(f"  {'':<11} {line}")
    if found.description:
        click.echo("  description:")
        for line in found.description.splitlines():
            click.echo(f"    {line}")
    for label, ids in (("blocked by", found.blocked_by), ("blocking", blocking_ids)):
        click.echo(f"{label}:" if ids else f"{label}: none")
        for item in ids:
            other = related[item]
            status = other.status if other else "?"
            title = _clip(other.title, TITLE_WIDTH) if other else ""
            click.echo(f"  {item}  {status:<9}  {title}")
    click.echo("history:")
    for entry in history:
        detail = (entry["detail"] or "").strip().splitlines()
        click.echo(f"  {entry['at']}  {entry['from_status'] or '-'} -> {entry['to_status']}"
                   f"  {entry['actor']}  {detail[0] if detail else ''}".rstrip())


def _usage(details: dict[str, Any]) -> str:
    """What the task's attempts used, e.g. ``412 s, $0.38, 12,034 tokens in, 3,100 out``."""
    parts = [f"{details['runtime_sec']:.0f} s"] if details.get("runtime_sec") else []
    if details.get("cost_usd"):
        parts.append(f"${details['cost_usd']:.2f}")
    if details.get("tokens_in") or details.get("tokens_out"):
        parts.append(f"{details['tokens_in']:,} tokens in, {details['tokens_out']:,} out")
    return ", ".join(parts)


def _workspace_line(kept: Any) -> str | None:
    if kept is None:
        return None
    state = "removed" if kept.state == "removed" else "kept"
    branch = f", branch {kept.branch}" if kept.branch else ""
    return f"{kept.path} ({state}{branch})"


# --- log -------------------------------------------------------------------------------


@task.command()
@click.argument("task_id", metavar="ID")
@click.option("--attempt", type=click.IntRange(min=1), help="Which attempt (default: the "
              "latest).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the "
              "attempt ends, then say how it ended.")
@click.pass_obj
def log(app: AppContext, task_id: str, attempt: int | None, follow: bool) -> int:
    """Print the log of one attempt of a task (any task source)."""
    import sys

    from scheduler.names import check_name
    from scheduler.state import tasklog

    check_name(task_id)
    settings = app.settings()
    logs, running_dir = settings.task_log_dir, settings.running_dir
    running = tasklog.running_attempt(running_dir, task_id)
    if attempt is None:
        known = tasklog.attempts(logs, task_id)
        attempt = max([*known, running or 0]) or None
        if attempt is None:
            raise InputError(f"task {task_id} has no attempt log in {logs / task_id}")
    path = tasklog.attempt_path(logs, task_id, attempt)
    if running != attempt and not path.exists():
        known = tasklog.attempts(logs, task_id)
        have = f"attempts with a log: {', '.join(map(str, known))}" if known else "no attempt logs"
        raise InputError(f"task {task_id} has no log for attempt {attempt} ({have})")
    out = sys.stdout.buffer
    if not follow:
        chunk = tasklog.read_chunk(path, 0, limit=1 << 62)
        out.write(chunk[0] if chunk else b"")
        out.flush()
        return 0
    for data in tasklog.follow(logs, running_dir, task_id, attempt):
        out.write(data)
        out.flush()
    ended = tasklog.outcome(tasklog.tail(path)) or "no outcome line (the attempt was " \
        "reclaimed or its wrapper died; see 'task show')"
    click.echo(f"attempt {attempt} of task {task_id} ended: {ended}", err=True)
    return 0


# --- retry / cancel ----------------------------------------------------------------------


@task.command()
@click.argument("task_id", metavar="ID")
@click.pass_obj
def retry(app: AppContext, task_id: str) -> None:
    """Put a failed or cancelled task back to idle (attempts reset to 0)."""
    from scheduler.reconcile import actions

    with _open_store(app) as (settings, store):
        click.echo(actions.retry(settings, store, task_id))


@task.command()
@click.argument("task_id", metavar="ID")
@click.pass_obj
def cancel(app: AppContext, task_id: str) -> None:
    """Cancel an idle task, or stop a working one through its wrapper."""
    from scheduler.reconcile import actions

    with _open_store(app) as (settings, store):
        click.echo(actions.cancel(settings, store, task_id))


# --- edit / delete / prune -----------------------------------------------------------------


@task.command()
@click.argument("task_id", metavar="ID")
@click.option("--title", help="New title.")
@click.option("--description", help="New description.")
@click.option("--queue", help="Move to this queue.")
@click.option("--no-queue", is_flag=True, help="Take it out of its queue.")
@click.option("--agent", help="Assign to this agent.")
@click.option("--no-agent", is_flag=True, help="Unassign it (its queue's pool runs it).")
@click.option("--priority", type=int, help="New priority (higher runs first).")
@click.option("--recipe", help="New recipe name or file in RECIPES_DIR.")
@click.option("--blocked-by", "block", multiple=True, metavar="ID",
              help="Also wait for this task (repeatable).")
@click.option("--unblock", multiple=True, metavar="ID",
              help="No longer wait for this task (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the task as JSON.")
@click.pass_obj
def edit(app: AppContext, task_id: str, title: str | None, description: str | None,
         queue: str | None, no_queue: bool, agent: str | None, no_agent: bool,
         priority: int | None, recipe: str | None, block: tuple[str, ...],
         unblock: tuple[str, ...], as_json: bool) -> None:
    """Change a task that is not running: the checks of 'task add' apply."""
    for value, clear, name in ((queue, no_queue, "queue"), (agent, no_agent, "agent")):
        if value is not None and clear:
            raise click.UsageError(f"give --{name} or --no-{name}, not both")
    changes: dict[str, Any] = {
        name: value for name, value in (("title", title), ("description", description),
                                        ("queue", queue), ("assignee", agent),
                                        ("priority", priority), ("recipe", recipe))
        if value is not None}
    if no_queue:
        changes["queue"] = None
    if no_agent:
        changes["assignee"] = None
    nudge = _nudger()
    with _open_store(app) as (settings, store):
        edited = store.edit(task_id, changes, block=block, unblock=unblock)
    nudge(settings)
    if as_json:
        _echo_json(task_to_dict(edited))
    else:
        click.echo(f"edited {_describe(edited)}")
    _warn_if_unrunnable(settings, edited)


@task.command()
@click.argument("task_id", metavar="ID")
@click.pass_obj
def delete(app: AppContext, task_id: str) -> None:
    """Delete a task that never ran (a task that ran keeps its history: cancel it)."""
    with _open_store(app) as (_, store):
        deleted = store.delete(task_id)
    click.echo(f"deleted task {deleted.id}: {deleted.title!r}")


@task.command()
@click.option("--older-than", "days", type=click.IntRange(min=0), required=True,
              metavar="DAYS", help="Finished (complete or cancelled) more than DAYS ago.")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@click.pass_obj
def prune(app: AppContext, days: int, dry_run: bool) -> None:
    """Delete complete and cancelled tasks finished more than DAYS ago, with their history.

    A finished task that an unfinished one still waits for is kept. Attempt logs are
    left in LOG_DIR/tasks/.
    """
    from datetime import timedelta

    with _open_store(app) as (_, store):
        removed, kept = store.prune(timedelta(days=days), dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    ids = f": {_id_ranges(removed)}" if removed else ""
    click.echo(f"{verb} {len(removed)} task{'s' if len(removed) != 1 else ''} finished more "
               f"than {days} day{'s' if days != 1 else ''} ago{ids}")
    if kept:
        click.echo(f"kept {_id_ranges(kept)}: unfinished tasks wait for them")


def _id_ranges(ids: list[str]) -> str:
    """``1-3, 7`` for ids 1, 2, 3, 7."""
    numbers = sorted(int(i) for i in ids)
    parts: list[str] = []
    start = prev = numbers[0]
    for number in [*numbers[1:], None]:
        if number is not None and number == prev + 1:
            prev = number
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if number is not None:
            start = prev = number
    return ", ".join(parts)


# --- revert ------------------------------------------------------------------------------


@task.command()
@click.argument("task_id", metavar="ID")
@click.pass_obj
def revert(app: AppContext, task_id: str) -> None:
    """Undo a merged task on TARGET_BRANCH with a revert commit (compare-and-swap).
    Reopens nothing; a revert that conflicts says so and changes nothing (exit 1)."""
    with _open_store(app) as (settings, store):
        found = store.get(task_id)
        merged = store.details(found.id)
        commit = merged["merge_commit"]
        if not commit:
            raise InputError(f"task {found.id} has no merge commit; accepted: the id of a task "
                             "the merge queue merged")
        if settings.workspace_mode != "worktree" or settings.repo_dir is None:
            raise ConfigError("task revert needs WORKSPACE_MODE=worktree and the REPO_DIR the "
                              "task was merged into")
        from scheduler.merge import git_merge, landing

        target = settings.target_branch
        outcome = landing.revert_task(settings, found.id, commit, found.title,
                                      since=merged["merge_base"] or "")
        if outcome.outcome == git_merge.CONFLICT:
            text = (f"revert of {commit[:12]} on {target} conflicts in "
                    f"{', '.join(outcome.conflicts)}; nothing changed")
            store.note(found.id, text, actor="cli")
            click.echo(f"task {found.id}: {text}", err=True)
            click.get_current_context().exit(1)
        files = ", ".join(outcome.changed_files[:20])
        text = (f"reverted on {target}: {outcome.commit[:12]} undoes merge {commit[:12]} "
                f"({len(outcome.changed_files)} file(s): {files})")
        store.note(found.id, text, actor="cli")
    click.echo(f"task {found.id}: {text}")


# --- import ------------------------------------------------------------------------------


@task.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the added tasks as JSON.")
@click.pass_obj
def import_(app: AppContext, file: Path, as_json: bool) -> None:
    """Add every task of a JSON file, or none.

    \b
    The file is a list of objects: {"title": "...", "description": "...",
    "queue": "dev", "agent": "alice", "priority": 5, "recipe": "dev.yaml",
    "blocked_by": [12, "#0"]} -- "#N" is the N-th item of the same file (0-based).
    """
    try:
        specs = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read import file {file}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"import file {file} is not valid JSON: {exc}") from None
    nudge = _nudger()
    with _open_store(app) as (settings, store):
        try:
            added = store.import_tasks(specs)
        except InputError as exc:
            raise InputError(f"{file}: nothing imported:\n{exc}") from None
    nudge(settings)
    if as_json:
        _echo_json([task_to_dict(t) for t in added])
    else:
        click.echo(f"imported {len(added)} task{'s' if len(added) != 1 else ''}"
                   + (f" ({added[0].id}-{added[-1].id})" if added else ""))


# --- export ------------------------------------------------------------------------------


@task.command("export")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file (created 0600) instead of standard output.")
@click.pass_obj
def export(app: AppContext, output: Path | None) -> None:
    """Every task in the import format, with status, attempts, result and history.

    \b
    Moves a backlog between stores, or backs one up:
      tinyscheduler task export -o backlog.json          # from the old store
      tinyscheduler --env-file pg.env task import backlog.json
    Blockers become "#N" references; a working task is exported idle.
    """
    from scheduler.sources.rules import export_item

    with _open_store(app) as (_, store):
        tasks = store.list_tasks()
        position = {t.id: index for index, t in enumerate(tasks)}
        items = [export_item(t, store.details(t.id), store.history(t.id), position)
                 for t in tasks]
    text = json.dumps(items, indent=2, ensure_ascii=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    import os

    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise InputError(f"cannot write export file {output}: {exc.strerror or exc}") from None
    click.echo(f"exported {len(items)} task{'s' if len(items) != 1 else ''} to {output}",
               err=True)
