"""``workspace list`` and ``workspace prune``: what workspaces and task branches exist, and
removing them safely.

Prune never touches a task whose lease exists (it runs or is about to), never removes a
worktree with uncommitted changes or a branch with commits that are not on the target
unless forced, and runs HOOK_BEFORE_REMOVE before deleting a workspace.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from scheduler import clock
from scheduler.state.leases import LeaseStore
from scheduler.workspace import gitcmd as git
from scheduler.workspace import hooks, record
from scheduler.workspace.base import Context, Workspace
from scheduler.workspace.worktree import KEPT_PREFIX, has_unmerged_work


@dataclass(frozen=True)
class Entry:
    """One task's workspace as ``workspace list`` shows it."""

    task_id: str
    mode: str
    path: str
    exists: bool
    branch: str | None
    branch_exists: bool
    state: str
    attempt: int
    outcome: str | None
    leased: bool
    updated_at: str
    note: str

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Action:
    task_id: str
    done: str  #: removed | kept | skipped
    detail: str


def entries(settings) -> list[Entry]:
    leases = LeaseStore(settings.running_dir)
    found = []
    for rec in record.all_records(settings.task_log_dir):
        branch_exists = bool(rec.branch and rec.repo_dir and Path(rec.repo_dir).is_dir()
                             and git.rev(Path(rec.repo_dir), f"refs/heads/{rec.branch}"))
        exists = os.path.lexists(rec.path)
        if not exists and not branch_exists and rec.state == record.REMOVED:
            continue
        found.append(Entry(rec.task_id, rec.mode, rec.path, exists, rec.branch, branch_exists,
                           rec.state, rec.attempt, rec.outcome,
                           leases.read(rec.task_id) is not None, rec.updated_at, rec.note))
    return found


def prune(settings, *, older_than_days: float | None = None, force: bool = False,
          now: datetime | None = None) -> list[Action]:
    """Remove workspaces (and their branches) of tasks that have no lease."""
    now = now or clock.now()
    actions = []
    leases = LeaseStore(settings.running_dir)
    for rec in record.all_records(settings.task_log_dir):
        if older_than_days is not None and rec.updated_at:
            age = (now - clock.from_iso(rec.updated_at)).total_seconds() / 86400
            if age < older_than_days:
                continue
        lock_on = Path(rec.repo_dir) if rec.mode == "worktree" and rec.repo_dir \
            else settings.workspaces_dir
        with git.repo_lock(settings.state_dir, lock_on):
            if leases.read(rec.task_id) is not None:
                actions.append(Action(rec.task_id, "skipped", "its lease is live"))
                continue
            actions += _prune_one(settings, rec, force)
    return actions


def _prune_one(settings, rec: record.Record, force: bool) -> list[Action]:
    actions: list[Action] = []
    notes: list[str] = []
    ctx = Context(settings, rec.task_id, rec.attempt, note=notes.append)
    path = Path(rec.path)
    repo = Path(rec.repo_dir) if rec.repo_dir else None
    gone = True
    if not _plausible(path, rec.task_id):
        return [Action(rec.task_id, "skipped", f"record names {path}, not a task-{rec.task_id} "
                                               "directory; left alone")]
    if os.path.lexists(path):
        removed, detail = _remove_dir(ctx, rec, path, repo, force)
        actions.append(Action(rec.task_id, "removed" if removed else "kept", detail))
        gone = removed
    branches_left = []
    if rec.mode == "worktree" and repo is not None and repo.is_dir() and rec.branch:
        # A kept worktree keeps its branch: it is checked out there (git refuses to delete
        # it) and the uncommitted work belongs on it.
        branches_left = _prune_branches(rec, repo, force, actions, keep_own=not gone)
    if gone and not branches_left:
        record.path_for(settings.task_log_dir, rec.task_id).unlink(missing_ok=True)
    else:
        record.write(settings.task_log_dir, rec.changed(
            state=record.REMOVED if gone else rec.state,
            note="; ".join(a.detail for a in actions if a.done == "kept")))
    return actions


def _plausible(path: Path, task_id: str) -> bool:
    """Only ever delete what looks like a workspace: an absolute ``.../task-<id>`` that is
    not a symlink."""
    return path.is_absolute() and path.name == f"task-{task_id}" and not path.is_symlink()


def _remove_dir(ctx: Context, rec: record.Record, path: Path, repo: Path | None,
                force: bool) -> tuple[bool, str]:
    is_worktree = rec.mode == "worktree" and repo is not None and (path / ".git").is_file()
    if is_worktree:
        dirty = git.run(path, "status", "--porcelain", "--untracked-files=all",
                        check=False).output.strip()
        if dirty and not force:
            return False, f"{path}: uncommitted changes (use --force to remove)"
    elif rec.mode == "worktree" and not force:
        return False, f"{path}: not a git worktree (use --force to remove)"
    failed = hooks.run(ctx, "before_remove", Workspace(rec.task_id, rec.mode, path, rec.branch))
    if is_worktree and repo is not None:
        git.run(repo, "worktree", "remove", "--force", "--force", str(path))
    else:
        shutil.rmtree(path)
    if repo is not None and repo.is_dir():
        git.run(repo, "worktree", "prune", check=False)
    return True, f"{path}: removed" + (f" ({failed})" if failed else "")


def _prune_branches(rec: record.Record, repo: Path, force: bool, actions: list[Action],
                    keep_own: bool = False) -> list[str]:
    """Delete the task's branch (unless ``keep_own``) and kept branches; the ones left."""
    assert rec.branch is not None
    target = rec.target_branch or ""
    listed = git.out(repo, "for-each-ref", "--format=%(refname:short)",
                     f"refs/heads/{rec.branch}", f"refs/heads/{KEPT_PREFIX}{rec.task_id}-*")
    left = []
    for branch in listed.splitlines():
        if keep_own and branch == rec.branch:
            left.append(branch)
            continue
        unmerged = not target or git.rev(repo, f"refs/heads/{target}") is None \
            or has_unmerged_work(repo, branch, target)
        if unmerged and not force:
            left.append(branch)
            actions.append(Action(rec.task_id, "kept", f"branch {branch}: has commits not on "
                                                       f"{target or 'the target'} (use --force)"))
            continue
        git.run(repo, "branch", "--delete", "--force", branch)
        actions.append(Action(rec.task_id, "removed", f"branch {branch}"))
    return left
