"""directory mode: each task works in ``WORKSPACES_DIR/task-<id>``, a private directory,
optionally seeded with a copy of WORKSPACE_TEMPLATE (for agents that do not use git).

The directory is built under a temporary name and renamed into place, so a crash leaves
either no workspace or a complete one. Nothing is ever deleted that might hold work: a
fresh retry moves the old directory to ``WORKSPACES_DIR/.kept/``, and directories stay
after the task completes until ``workspace prune`` removes them.
"""

from __future__ import annotations

import os
import shutil

from scheduler import clock, faults
from scheduler.fsutil import DIR_MODE, ensure_private_dir
from scheduler.workspace import record
from scheduler.workspace.base import Context, Workspace, aside_path, workspace_path
from scheduler.workspace.gitcmd import repo_lock


def prepare(ctx: Context) -> Workspace:
    """The task's directory: reused when ready (unless a fresh retry is asked for), else
    made. Holds the workspaces directory's lock, which ``workspace prune`` takes too."""
    with repo_lock(ctx.settings.state_dir, ctx.settings.workspaces_dir, tick=ctx.tick,
                   tick_every=ctx.tick_every):
        return _prepare(ctx)


def _prepare(ctx: Context) -> Workspace:
    s = ctx.settings
    path = workspace_path(s, ctx.task_id)
    ensure_private_dir(s.workspaces_dir)
    rec = record.read(s.task_log_dir, ctx.task_id)
    _remove_temporaries(s.workspaces_dir, path.name)
    ready = (rec is not None and rec.state == record.READY and rec.mode == "directory"
             and rec.path == str(path) and path.is_dir() and not path.is_symlink())
    fresh = s.workspace_fresh_on_retry and rec is not None and 0 < rec.attempt < ctx.attempt
    if ready and not fresh:
        ctx.note(f"workspace {path}: reused")
        return Workspace(ctx.task_id, "directory", path)
    if os.path.lexists(path):
        label = f"attempt-{rec.attempt}" if ready and rec is not None else "orphaned"
        aside = aside_path(s, "kept", ctx.task_id, f"{label}-{_stamp()}")
        ensure_private_dir(aside.parent)
        os.rename(path, aside)
        ctx.note(f"workspace {path}: the previous one moved to {aside}")
    rec = record.write(s.task_log_dir, record.Record(
        ctx.task_id, "directory", str(path), record.CREATING, attempt=ctx.attempt))
    faults.crash_point("workspace-after-lock")
    temporary = s.workspaces_dir / f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    if s.workspace_template is not None:
        shutil.copytree(s.workspace_template, temporary, symlinks=True)
        os.chmod(temporary, DIR_MODE)
    else:
        temporary.mkdir(mode=DIR_MODE)
    faults.crash_point("workspace-mid-add")
    os.rename(temporary, path)
    faults.crash_point("workspace-after-add")
    record.write(s.task_log_dir, rec.changed(state=record.READY))
    ctx.note(f"workspace {path}: created"
             + (f" from {s.workspace_template}" if s.workspace_template else ""))
    return Workspace(ctx.task_id, "directory", path, created=True)


def _remove_temporaries(workspaces_dir, name: str) -> None:
    """Half-built directories of earlier, crashed attempts of this task."""
    prefix = f".{name}.tmp-"
    for entry in os.scandir(workspaces_dir):
        if entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)


def _stamp() -> str:
    return clock.now().strftime("%Y%m%dT%H%M%S%f")
