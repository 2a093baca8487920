"""The workspace's life around one attempt, whatever the mode.

    begin:  free-space check -> prepare (worktree or directory) -> after_create (once)
            -> before_run                                        [failure: launch_failed]
    end:    after_run -> auto-commit (worktree, AUTO_COMMIT)     [failures are logged]
    after a successful attempt is recorded: the worktree directory is removed (its branch
    stays); directories of directory mode and every failed, parked or cancelled
    workspace are kept for inspection until ``workspace prune``.
"""

from __future__ import annotations

from scheduler.workspace import directory, disk, hooks, record, worktree
from scheduler.workspace.base import Context, LowDisk, Workspace, WorkspaceError
from scheduler.workspace.gitcmd import GitError


def begin(ctx: Context) -> Workspace | None:
    """Prepare the attempt's workspace and run its hooks; None in mode ``none``.
    Raises :class:`WorkspaceError` (the attempt is ``launch_failed``) with the reason."""
    s = ctx.settings
    if s.workspace_mode == "none":
        return None
    low = disk.shortage(s.workspaces_dir, s.min_free_disk_mb)
    current = record.read(s.task_log_dir, ctx.task_id)
    if low and (current is None or current.state != record.READY):
        raise LowDisk(f"low disk: {low}")
    prepare = worktree.prepare if s.workspace_mode == "worktree" else directory.prepare
    try:
        workspace = prepare(ctx)
    except GitError as exc:
        raise WorkspaceError(f"workspace: {exc}") from None
    except OSError as exc:
        raise WorkspaceError(f"workspace: {exc}") from None
    rec = record.read(s.task_log_dir, ctx.task_id)
    if rec is not None and not rec.after_create_done:
        failed = hooks.run(ctx, "after_create", workspace)
        if failed:
            raise WorkspaceError(failed)
        rec = record.write(s.task_log_dir, rec.changed(after_create_done=True))
    if rec is not None:
        record.write(s.task_log_dir, rec.changed(attempt=ctx.attempt, outcome=None))
    failed = hooks.run(ctx, "before_run", workspace)
    if failed:
        raise WorkspaceError(failed)
    return workspace


def end(ctx: Context, workspace: Workspace, outcome: str) -> None:
    """After the agent: after_run, then commit its leftovers (worktree, AUTO_COMMIT)."""
    s = ctx.settings
    failed = hooks.run(ctx, "after_run", workspace, outcome)
    if failed:
        ctx.note(f"{failed} (the outcome stands)")
    if workspace.mode == "worktree" and s.auto_commit:
        title = " ".join(ctx.title.split())[:200]
        message = f"task {ctx.task_id}: {title}" if title else f"task {ctx.task_id}"
        try:
            worktree.commit_leftovers(ctx, workspace, message)
        except (GitError, OSError) as exc:
            ctx.note(f"auto-commit failed: {exc}")
    _mark(s, ctx.task_id, outcome=outcome)


def tidy(ctx: Context, workspace: Workspace, outcome: str) -> None:
    """Once the attempt's result is recorded: a completed task's worktree is removed."""
    if workspace.mode != "worktree" or outcome != "succeeded":
        return
    try:
        worktree.remove(ctx, workspace)
    except (GitError, OSError) as exc:
        ctx.note(f"workspace {workspace.path}: kept, removing it failed: {exc}")


def _mark(settings, task_id: str, **fields: object) -> None:
    rec = record.read(settings.task_log_dir, task_id)
    if rec is not None:
        record.write(settings.task_log_dir, rec.changed(**fields))
