"""worktree mode: each task works in ``WORKSPACES_DIR/task-<id>``, a git worktree of
REPO_DIR on its own branch ``tinyscheduler/task-<id>`` started from TARGET_BRANCH.

Creation is crash-safe: the record says ``creating`` before git touches anything and
``ready`` only once the worktree is checked out, so whatever a crash leaves is either
nothing or recognisably half-made, and the next attempt repairs it (``git worktree
prune``, remove, add again). Worktree add/remove and ref updates hold the repository's
git lock. REPO_DIR's own working tree is never touched: every command runs with ``-C`` on
the repository (for its metadata) or on the task's worktree.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from scheduler import clock, faults
from scheduler.fsutil import ensure_private_dir
from scheduler.names import check_name
from scheduler.workspace import gitcmd as git
from scheduler.workspace import hooks, record
from scheduler.workspace.base import Context, Workspace, WorkspaceError, aside_path, workspace_path

#: Every task branch lives under this prefix (the merge queue relies on it).
BRANCH_PREFIX = "tinyscheduler/task-"
#: Parallel checkout: files are written by this many processes (it waits on I/O).
CHECKOUT_WORKERS = 8
#: Branches with work of an earlier attempt, kept when a retry starts fresh.
KEPT_PREFIX = "tinyscheduler/kept/task-"


def branch_for(task_id: str) -> str:
    """``tinyscheduler/task-<id>``; WorkspaceError when git cannot name a branch so."""
    check_name(task_id)
    if ".." in task_id or task_id.endswith((".", ".lock")):
        raise WorkspaceError(f"task id {task_id!r} cannot name a git branch (no '..', no "
                             "trailing '.' or '.lock'); use directory mode for such ids")
    return BRANCH_PREFIX + task_id


def prepare(ctx: Context) -> Workspace:
    """The task's worktree: reused when it is ready (unless a fresh retry is asked for),
    else (re)made from the target branch."""
    s = ctx.settings
    repo, path, branch = s.repo_dir, workspace_path(s, ctx.task_id), branch_for(ctx.task_id)
    ensure_private_dir(s.workspaces_dir)
    rec = record.read(s.task_log_dir, ctx.task_id)
    with git.repo_lock(s.state_dir, repo, tick=ctx.tick, tick_every=ctx.tick_every):
        faults.crash_point("workspace-after-lock")
        git.run(repo, "worktree", "prune")
        listed = _worktrees(repo)
        ready = (rec is not None and rec.state == record.READY and rec.mode == "worktree"
                 and rec.path == str(path) and os.path.realpath(path) in listed
                 and (path / ".git").is_file())
        # A branch waiting to merge (an interrupted merge) is never retired: the next
        # attempt finishes its merge.
        fresh = (s.workspace_fresh_on_retry and rec is not None and not rec.merging
                 and 0 < rec.attempt < ctx.attempt)
        if ready and not fresh and rec is not None:
            ctx.note(f"workspace {path}: reused (branch {branch})")
            return Workspace(ctx.task_id, "worktree", path, branch, rec.base_commit)
        if ready and rec is not None:
            _retire(ctx, repo, path, branch, rec)
        else:
            _repair(ctx, repo, path, rec, listed)
        target = git.rev(repo, f"refs/heads/{s.target_branch}")
        if target is None:
            raise WorkspaceError(f"target branch {s.target_branch!r} does not exist in "
                                 f"REPO_DIR {repo}")
        existing = git.rev(repo, f"refs/heads/{branch}")
        base = target
        if existing is not None:
            kept = rec.base_commit if rec is not None and rec.branch == branch else None
            base = kept or git.out(repo, "merge-base", existing, target)
        rec = record.write(s.task_log_dir, record.Record(
            ctx.task_id, "worktree", str(path), record.CREATING, branch, base,
            s.target_branch, str(repo), attempt=ctx.attempt))
        if existing is not None:
            git.run(repo, "worktree", "add", "--no-checkout", str(path), branch,
                    tick=ctx.tick, tick_every=ctx.tick_every)
        else:
            git.run(repo, "worktree", "add", "--no-checkout", "-b", branch, str(path), target,
                    tick=ctx.tick, tick_every=ctx.tick_every)
    faults.crash_point("workspace-mid-add")
    # The checkout itself touches only this worktree (its index and files): no lock.
    git.run(path, "-c", f"checkout.workers={CHECKOUT_WORKERS}", "reset", "--hard", "--quiet",
            "HEAD", tick=ctx.tick, tick_every=ctx.tick_every)
    os.chmod(path, 0o700)
    faults.crash_point("workspace-after-add")
    record.write(s.task_log_dir, rec.changed(state=record.READY))
    ctx.note(f"workspace {path}: created on branch {branch} from {s.target_branch} "
             f"({base[:12]})")
    return Workspace(ctx.task_id, "worktree", path, branch, base, created=True)


def commit_leftovers(ctx: Context, workspace: Workspace, message: str) -> str | None:
    """Commit whatever the agent left uncommitted on the task branch; the new commit, or
    None when the worktree was clean."""
    s = ctx.settings
    if not (workspace.path / ".git").is_file():
        return None
    status = git.run(workspace.path, "status", "--porcelain", "--untracked-files=all")
    if not status.output.strip():
        return None
    env = git.git_env({"GIT_AUTHOR_NAME": s.git_author_name,
                       "GIT_AUTHOR_EMAIL": s.git_author_email,
                       "GIT_COMMITTER_NAME": s.git_author_name,
                       "GIT_COMMITTER_EMAIL": s.git_author_email})
    with git.repo_lock(s.state_dir, s.repo_dir, tick=ctx.tick, tick_every=ctx.tick_every):
        git.run(workspace.path, "add", "--all", env=env, tick=ctx.tick,
                tick_every=ctx.tick_every)
        git.run(workspace.path, "commit", "--quiet", "--no-verify", "-m", message, env=env,
                tick=ctx.tick, tick_every=ctx.tick_every)
    commit = git.out(workspace.path, "rev-parse", "HEAD")
    ctx.note(f"workspace {workspace.path}: committed what the agent left as {commit[:12]}")
    return commit


def remove(ctx: Context, workspace: Workspace) -> bool:
    """Delete the worktree directory of a completed task; its branch stays. Kept (False)
    when it still has uncommitted changes."""
    s = ctx.settings
    if git.run(workspace.path, "status", "--porcelain").output.strip():
        ctx.note(f"workspace {workspace.path}: kept, it has uncommitted changes")
        _mark(s, ctx.task_id, note="kept: uncommitted changes")
        return False
    failed = hooks.run(ctx, "before_remove", workspace)
    if failed:
        ctx.note(f"{failed} (the workspace is removed anyway)")
    with git.repo_lock(s.state_dir, s.repo_dir, tick=ctx.tick, tick_every=ctx.tick_every):
        git.run(s.repo_dir, "worktree", "remove", "--force", str(workspace.path))
    _mark(s, ctx.task_id, state=record.REMOVED, note="removed after the task completed")
    ctx.note(f"workspace {workspace.path}: removed (branch {workspace.branch} kept)")
    return True


def has_unmerged_work(repo: Path, branch: str, target: str) -> bool:
    """True when ``branch`` has commits that are not on ``target``."""
    done = git.run(repo, "merge-base", "--is-ancestor", f"refs/heads/{branch}",
                   f"refs/heads/{target}", check=False)
    if done.returncode in (0, 1):
        return done.returncode == 1
    raise git.GitError(f"cannot compare {branch} with {target}: {done.tail(2)}")


# --- repair and retirement -------------------------------------------------------------


def _worktrees(repo: Path) -> dict[str, dict[str, str]]:
    """Registered worktrees: path -> {"branch": ..., "locked": ...} (porcelain format)."""
    text = git.out(repo, "worktree", "list", "--porcelain")
    found: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "worktree":
            current = found.setdefault(os.path.realpath(value), {})
        elif current is not None and key in ("branch", "locked", "prunable"):
            current[key] = value
    return found


def _repair(ctx: Context, repo: Path, path: Path, rec: record.Record | None,
            listed: dict[str, dict[str, str]]) -> None:
    """Clear what an earlier crash left at ``path``. A half-made worktree (its record says
    ``creating``: no agent ever ran in it) is removed; anything else found there, which
    might hold work, is moved aside and reported."""
    registered = os.path.realpath(path) in listed
    if not registered and not os.path.lexists(path):
        return
    half_made = rec is not None and rec.state == record.CREATING and rec.path == str(path)
    if registered:
        git.run(repo, "worktree", "unlock", str(path), check=False)
    if half_made or not os.path.lexists(path):
        if registered:
            git.run(repo, "worktree", "remove", "--force", "--force", str(path), check=False)
        if os.path.lexists(path):
            shutil.rmtree(path, ignore_errors=False)
        ctx.note(f"workspace {path}: repaired a half-made worktree")
    else:
        aside = aside_path(ctx.settings, "orphaned", ctx.task_id, _stamp())
        ensure_private_dir(aside.parent)
        os.rename(path, aside)
        ctx.note(f"workspace {path}: not a usable worktree; moved aside to {aside}")
    git.run(repo, "worktree", "prune")


def retire(ctx: Context, workspace: Workspace) -> str | None:
    """Remove the task's worktree and keep its branch's work under ``tinyscheduler/kept/``
    (the merge queue, after a conflict): the next attempt starts fresh from the target.
    The kept branch's name, or None when nothing needed keeping."""
    s = ctx.settings
    rec = record.read(s.task_log_dir, ctx.task_id)
    if rec is None or workspace.branch is None:
        return None
    with git.repo_lock(s.state_dir, s.repo_dir, tick=ctx.tick, tick_every=ctx.tick_every):
        kept = _retire(ctx, s.repo_dir, workspace.path, workspace.branch, rec)
    record.write(s.task_log_dir, rec.changed(state=record.REMOVED, merging=False,
                                             note=f"retired; work kept on {kept}" if kept
                                             else "retired"))
    return kept


def _retire(ctx: Context, repo: Path, path: Path, branch: str,
            rec: record.Record) -> str | None:
    """Before a fresh retry: nothing of the last attempt is lost. Its leftovers are
    committed, the worktree removed, and its branch kept under ``tinyscheduler/kept/``
    when it has work that is not on the target (else deleted)."""
    s = ctx.settings
    workspace = Workspace(ctx.task_id, "worktree", path, branch, rec.base_commit)
    leftovers = git.run(path, "status", "--porcelain", "--untracked-files=all").output.strip()
    if leftovers:
        env = git.git_env({"GIT_AUTHOR_NAME": s.git_author_name,
                           "GIT_AUTHOR_EMAIL": s.git_author_email,
                           "GIT_COMMITTER_NAME": s.git_author_name,
                           "GIT_COMMITTER_EMAIL": s.git_author_email})
        git.run(path, "add", "--all", env=env)
        git.run(path, "commit", "--quiet", "--no-verify", "-m",
                f"task {ctx.task_id}: work left by attempt {rec.attempt}", env=env)
    failed = hooks.run(ctx, "before_remove", workspace)
    if failed:
        ctx.note(f"{failed} (the workspace is removed anyway)")
    git.run(repo, "worktree", "remove", "--force", str(path))
    if has_unmerged_work(repo, branch, s.target_branch):
        kept = f"{KEPT_PREFIX}{ctx.task_id}-attempt-{rec.attempt}"
        git.run(repo, "branch", "--move", "--force", branch, kept)
        ctx.note(f"workspace {path}: fresh retry; the last attempt's work is kept on {kept}")
        return kept
    git.run(repo, "branch", "--delete", "--force", branch)
    ctx.note(f"workspace {path}: fresh retry from {s.target_branch}")
    return None


def _mark(settings, task_id: str, **fields: object) -> None:
    rec = record.read(settings.task_log_dir, task_id)
    if rec is not None:
        record.write(settings.task_log_dir, rec.changed(**fields))


def _stamp() -> str:
    return clock.now().strftime("%Y%m%dT%H%M%S%f")
