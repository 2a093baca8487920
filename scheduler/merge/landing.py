"""The merge queue's step in the wrapper: land a succeeded task's branch on the target.

    agent succeeded, leftovers auto-committed
      -> no commits beyond the base: "no changes", nothing merged
      -> mark the workspace record ``merging`` (a crash from here on is finished by the
         next attempt, which does not run the agent again) and tell the caller the files
         the branch changed (the lease holds them for the planner)
      -> wait for the target's merge lock (one merge per target at a time), heartbeating
      -> merge or rebase onto the target's tip, run the check, compare-and-swap
         (``git_merge.merge``: redone when the target moved, idempotent after a crash)
      -> merged: HOOK_AFTER_MERGE; conflict / check_failed: the target is untouched
    after the result is recorded (``tidy``): merged -> worktree and branch removed;
    conflict with MERGE_CONFLICT=retry -> worktree removed, the branch's work kept under
    ``tinyscheduler/kept/``, so the next attempt starts fresh from the new target.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from scheduler import faults
from scheduler.fsutil import ensure_private_dir
from scheduler.merge import git_merge
from scheduler.merge.git_merge import Check, Git, GitError
from scheduler.sources import base as outcomes
from scheduler.workspace import gitcmd, hooks, record, worktree
from scheduler.workspace.base import Context, Workspace

#: Longest a wrapper waits for the merges queued before its own.
MERGE_WAIT_SEC = 6 * 3600
#: At most this many changed files are held in the lease (more: the whole tree is held).
MAX_HELD_FILES = 1000
#: Outcomes of a landing beyond git_merge's: the merge machinery failed.
ERROR = "error"


@dataclass(frozen=True)
class Landed:
    """How the landing ended."""

    outcome: str  #: merged | no_changes | conflict | check_failed | error
    target: str = ""
    commit: str = ""  #: merged: the target's new commit
    target_before: str = ""
    changed_files: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    check_sec: float = 0.0
    check_tail: str = ""
    already: bool = False  #: an interrupted merge had landed already
    notes: tuple[str, ...] = field(default=())
    error: str = ""


def merge_lock_path(state_dir: Path, repo: Path, target: str) -> Path:
    """The flock that serializes merges into ``target`` of ``repo``."""
    digest = hashlib.sha256(f"{repo.resolve()}\0{target}".encode()).hexdigest()[:16]
    return state_dir / "merge-locks" / f"target-{digest}.lock"


def git_for(ctx: Context) -> Git:
    """git on REPO_DIR with the repository lock, heartbeating through the context."""
    s = ctx.settings
    return Git(s.repo_dir, lock=lambda: gitcmd.repo_lock(s.state_dir, s.repo_dir,
                                                         tick=ctx.tick,
                                                         tick_every=ctx.tick_every),
               tick=ctx.tick, tick_every=ctx.tick_every)


def author_of(settings) -> dict[str, str]:
    return {"GIT_AUTHOR_NAME": settings.git_author_name,
            "GIT_AUTHOR_EMAIL": settings.git_author_email}


def interrupted(ctx: Context) -> bool:
    """True when an earlier attempt of this task was killed while merging its branch."""
    rec = record.read(ctx.settings.task_log_dir, ctx.task_id)
    return rec is not None and rec.merging and rec.state == record.READY


def land(ctx: Context, workspace: Workspace,
         on_merging: Callable[[tuple[str, ...]], None]) -> Landed:
    """Merge the task's branch into TARGET_BRANCH; never raises for git's failures."""
    s = ctx.settings
    target, branch = s.target_branch, workspace.branch or ""
    git = git_for(ctx)
    try:
        tip, old = git.rev(f"refs/heads/{branch}"), git.rev(f"refs/heads/{target}")
        if not tip or not old:
            raise GitError(f"branch {branch if not tip else target} does not exist")
        if tip == workspace.base_commit or tip == old:
            return Landed(git_merge.NO_CHANGES, target, old, old)
        # The task's own changes: from the commit its work started from (a branch merged
        # before an interruption is contained in the target, so a merge-base says nothing).
        base = workspace.base_commit
        fork = base if base and git.is_ancestor(base, tip) else \
            git.run("merge-base", old, tip).stdout.strip()
        changed = git.changed(fork, tip) if fork else ()
        _mark(s, ctx.task_id, merging=True)
        on_merging(changed if len(changed) <= MAX_HELD_FILES else ("**",))
        faults.crash_point("merge-after-mark")
        with gitcmd.held(merge_lock_path(s.state_dir, s.repo_dir, target), tick=ctx.tick,
                         tick_every=ctx.tick_every, timeout=MERGE_WAIT_SEC,
                         what=f"the merge lock of {target}"):
            faults.crash_point("merge-after-lock")
            git_merge.clean_scratch(git, s.workspaces_dir / ".merge", _in_use)
            outcome = git_merge.merge(
                git, target, branch, message=_message(ctx), author=author_of(s),
                scratch=s.workspaces_dir / ".merge", mode=s.merge,
                check=_check(s), base=workspace.base_commit or "")
    except gitcmd.GitError as exc:
        return Landed(ERROR, target, error=str(exc))
    landed = Landed(outcome.outcome, target, outcome.commit, outcome.target_before,
                    outcome.changed_files or changed, outcome.conflicts, outcome.check_sec,
                    outcome.check_tail, outcome.already, outcome.notes)
    for note in outcome.notes:
        ctx.note(f"merge: {note}")
    if landed.outcome == git_merge.MERGED:
        failed = hooks.run(ctx, "after_merge", workspace, "merged",
                           extra={"commit": landed.commit, "target": target})
        if failed:
            ctx.note(f"{failed} (the merge stands)")
            landed = replace(landed, notes=(*landed.notes, failed))
    return landed


def tidy(ctx: Context, workspace: Workspace, landed: Landed | None) -> None:
    """Once the result is recorded: clear the ``merging`` mark; a merged (or unchanged)
    task's worktree and branch go; a conflicting one (MERGE_CONFLICT=retry) leaves its
    work on a kept branch and its next attempt starts fresh. After a merge that failed
    for another reason (``error``) the mark stays: the next attempt retries the merge
    instead of running the agent again."""
    s = ctx.settings
    faults.crash_point("merge-before-cleanup")
    if landed is not None and landed.outcome == ERROR:
        return  # the merge never ended: the next attempt tries it again, not the agent
    if landed is not None and landed.outcome in (git_merge.MERGED, git_merge.NO_CHANGES):
        if worktree.remove(ctx, workspace) and workspace.branch:
            git = git_for(ctx)
            tip = git.rev(f"refs/heads/{workspace.branch}")
            if tip and git.is_ancestor(tip, f"refs/heads/{s.target_branch}"):
                git.delete_branch(workspace.branch, tip)
                ctx.note(f"branch {workspace.branch}: deleted (its work is on "
                         f"{s.target_branch})")
    elif landed is not None and landed.outcome == git_merge.CONFLICT \
            and s.merge_conflict == "retry":
        kept = worktree.retire(ctx, workspace)
        ctx.note(f"merge conflict: the next attempt starts from {s.target_branch}; this "
                 f"attempt's work is kept on {kept}" if kept else
                 f"merge conflict: the next attempt starts from {s.target_branch}")
    _mark(s, ctx.task_id, merging=False)


def revert_task(settings, task_id: str, commit: str, title: str,
                since: str = "") -> git_merge.MergeOutcome:
    """A commit on TARGET_BRANCH that undoes a merged task's ``commit``, landed by
    compare-and-swap while holding the target's merge lock (it queues with the merges);
    ``since`` (the target before a rebase landed the task) undoes every commit after it.
    A revert that conflicts changes nothing (outcome ``conflict``)."""
    repo, target = settings.repo_dir, settings.target_branch
    git = Git(repo, lock=lambda: gitcmd.repo_lock(settings.state_dir, repo))
    subject = " ".join(title.split())[:200]
    message = (f"Revert task {task_id}: {subject}\n\nThis reverts the merge of task "
               f"{task_id}, {commit}.")
    with gitcmd.held(merge_lock_path(settings.state_dir, repo, target),
                     timeout=gitcmd.LOCK_TIMEOUT_SEC, what=f"the merge lock of {target}"):
        return git_merge.revert(git, target, commit, message=message,
                                author=author_of(settings),
                                scratch=settings.workspaces_dir / ".merge", since=since)


@dataclass(frozen=True)
class Verdict:
    """What a landing means for the attempt: its outcome, the result's first line, the
    result's ``merge`` detail, and whether it parks the task."""

    outcome: str
    text: str
    detail: dict
    park: bool = False


def verdict(landed: Landed, settings, task_id: str, spent: float) -> Verdict:
    """The attempt's outcome and the words for it (a pure rule)."""
    target, files = landed.target, landed.changed_files
    if landed.outcome == git_merge.MERGED:
        shown = ", ".join(files[:20]) + (f" and {len(files) - 20} more" if len(files) > 20
                                         else "")
        text = (f"merged into {target} as {landed.commit[:12]}"
                + (" (it had landed before the interruption)" if landed.already else "")
                + f"; {len(files)} file(s) changed: {shown}"
                + (f"; check {landed.check_sec:.1f} s" if settings.merge_check_command
                   else ""))
        detail: dict = {"commit": landed.commit, "target": target,
                        "changed_files": list(files), "check_sec": round(landed.check_sec, 3),
                        "merge_sec": round(spent, 3)}
        if not landed.already:  # the target before this merge (where a rebase started)
            detail["before"] = landed.target_before
        url = link(settings, landed.commit, task_id)
        if url:
            detail["link"] = url
            text += f"; {url}"
        return Verdict(outcomes.SUCCEEDED, text + "".join(f"; {n}" for n in landed.notes),
                       detail)
    if landed.outcome == git_merge.NO_CHANGES:
        return Verdict(outcomes.SUCCEEDED, f"no changes: the branch has no commits beyond "
                                           f"{target}; nothing merged", {})
    if landed.outcome == git_merge.CONFLICT:
        park = settings.merge_conflict == "park"
        text = (f"merge conflict with {target} ({landed.target_before[:12]}) in "
                f"{', '.join(landed.conflicts)}; {target} untouched; "
                + ("parked for a person (MERGE_CONFLICT=park)" if park else
                   f"the next attempt starts fresh from {target}"))
        return Verdict(outcomes.MERGE_CONFLICT, text, {
            "conflicts": list(landed.conflicts), "target": target,
            "target_at": landed.target_before, "changed_files": list(files)}, park)
    if landed.outcome == git_merge.CHECK_FAILED:
        tail = " ".join(landed.check_tail.split())[-300:]
        return Verdict(outcomes.CHECK_FAILED,
                       f"merge check failed after {landed.check_sec:.1f} s; {target} "
                       f"untouched: {tail}", {
                           "target": target, "target_at": landed.target_before,
                           "check_sec": round(landed.check_sec, 3),
                           "check_tail": landed.check_tail[-2000:],
                           "changed_files": list(files)})
    return Verdict(outcomes.OUTCOME_FAILED, f"merge into {target} failed: {landed.error}", {})


def link(settings, commit: str, task_id: str) -> str:
    """MERGE_LINK_TEMPLATE filled in, or ""."""
    template = settings.merge_link_template
    if not template or not commit:
        return ""
    for name, value in (("commit", commit), ("task_id", task_id),
                        ("target", settings.target_branch)):
        template = template.replace("{" + name + "}", value)
    return template


def _message(ctx: Context) -> str:
    title = " ".join(ctx.title.split())[:200]
    head = f"Merge task {ctx.task_id}: {title}" if title else f"Merge task {ctx.task_id}"
    return f"{head}\n\ntinyscheduler merged branch {worktree.branch_for(ctx.task_id)}"


def _check(settings) -> Check | None:
    if not settings.merge_check_command:
        return None
    argv = hooks.fill(settings.merge_check_command, {})
    return Check(argv, settings.merge_check_timeout_sec, settings.kill_grace_sec)


def _in_use(scratch: Path) -> bool:
    """A temporary worktree ``merge-<pid>-<random>`` is in use while its process lives."""
    import os

    pid = scratch.name.split("-")[1] if scratch.name.count("-") >= 2 else ""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mark(settings, task_id: str, **fields: object) -> None:
    rec = record.read(settings.task_log_dir, task_id)
    if rec is not None:
        ensure_private_dir(settings.task_log_dir)
        record.write(settings.task_log_dir, rec.changed(**fields))
