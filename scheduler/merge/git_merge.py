"""Merging a finished task's branch onto its target, crash-safely.

The target ref moves only by compare-and-swap (``git update-ref <ref> <new> <old>``):
whatever happens — a crash, a concurrent commit to the target — the target is at its
old commit or at the new one, never anywhere else, and a commit someone else added
meanwhile is never overwritten (the merge is redone on the new tip). The merge itself
is computed without any working tree (``git merge-tree --write-tree``), so no working
tree, REPO_DIR's included, is touched by it; a check command, a rebase and a revert
run in a temporary detached worktree that is removed afterwards.

A merge is idempotent: a branch whose tip is already in the target is reported as
merged without a new commit, so a merge redone after a crash never merges twice.

git runs like every other git call of tinyscheduler (``scheduler.workspace.gitcmd``): the
same configuration (no repository hooks, no signing) and environment, and the same
per-repository lock around what git does not make safe to run concurrently (ref updates,
worktree add and remove). A long check calls ``tick`` (the wrapper's heartbeat).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from scheduler import faults
from scheduler.workspace import gitcmd
from scheduler.workspace.process import Tick, run_bounded

#: Longest any single git command may run.
GIT_TIMEOUT_SEC = 120
#: How often a merge is redone when the target keeps moving under it.
MAX_RACES = 20
#: At most this much of a check's output is kept for the history.
CHECK_TAIL_CHARS = 2000

MERGED, NO_CHANGES, CONFLICT, CHECK_FAILED = "merged", "no_changes", "conflict", "check_failed"


class GitError(gitcmd.GitError):
    """A git command failed in a way the merge cannot handle; the message names it."""


def _no_lock() -> AbstractContextManager[object]:
    return nullcontext()


@dataclass(frozen=True)
class MergeOutcome:
    outcome: str  #: merged | no_changes | conflict | check_failed
    target_before: str = ""
    commit: str = ""  #: the target's new commit (merged), or the commit it already had
    changed_files: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    check_sec: float = 0.0
    check_tail: str = ""
    already: bool = False  #: the branch was in the target already (a redone merge)
    races: int = 0  #: times the target moved under the merge and it was redone
    notes: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Git:
    """git on one repository: argv only, bounded in time, no prompt, stable output."""

    repo: Path
    timeout: float = GIT_TIMEOUT_SEC
    #: The repository's lock (``gitcmd.repo_lock``), held around ref updates and
    #: worktree add/remove; none by default.
    lock: Callable[[], AbstractContextManager[object]] = _no_lock
    #: Called every ``tick_every`` seconds while a check runs, and between git commands
    #: when that much time has passed; False stops the merge (the lease was lost).
    tick: Tick | None = None
    tick_every: float = 15.0
    _ticked: list[float] = field(default_factory=lambda: [time.monotonic()], compare=False,
                                 repr=False)

    def run(self, *args: str, check: bool = True, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        self._heartbeat()
        full_env = gitcmd.git_env(env)
        try:
            proc = subprocess.run(["git", "-C", str(cwd or self.repo), *gitcmd.CONFIG, *args],
                                  capture_output=True, text=True, timeout=self.timeout,
                                  env=full_env, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise GitError(f"git {args[0]} took longer than {self.timeout:g} s") from None
        if check and proc.returncode != 0:
            raise GitError(f"git {' '.join(args[:3])} failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[:300]}")
        return proc

    def _heartbeat(self) -> None:
        if self.tick is None or time.monotonic() - self._ticked[0] < self.tick_every:
            return
        self._ticked[0] = time.monotonic()
        if not self.tick():
            raise GitError("the lease was lost during the merge")

    def rev(self, name: str) -> str:
        """The commit ``name`` points at, or "" when there is none."""
        proc = self.run("rev-parse", "--verify", "--quiet", f"{name}^{{commit}}", check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def is_ancestor(self, older: str, newer: str) -> bool:
        return self.run("merge-base", "--is-ancestor", older, newer, check=False).returncode == 0

    def changed(self, base: str, tip: str) -> tuple[str, ...]:
        out = self.run("diff", "--name-only", "-z", base, tip).stdout
        return tuple(sorted(name for name in out.split("\0") if name))

    def cas(self, ref: str, new: str, old: str, message: str) -> bool:
        """Move ``ref`` from ``old`` to ``new``; False when it no longer points at ``old``."""
        with self.lock():
            proc = self.run("update-ref", "-m", message, ref, new, old, check=False)
        return proc.returncode == 0

    def delete_branch(self, branch: str, expected: str) -> bool:
        """Delete ``branch`` if it still points at ``expected``."""
        with self.lock():
            proc = self.run("update-ref", "-d", f"refs/heads/{branch}", expected, check=False)
        return proc.returncode == 0


@dataclass(frozen=True)
class Check:
    """The command run on a merge's result before the target moves (argv, no shell)."""

    argv: Sequence[str]
    timeout_sec: float
    kill_grace_sec: float = 5.0


def merge(git: Git, target: str, branch: str, *, message: str, author: dict[str, str],
          scratch: Path, mode: str = "merge", check: Check | None = None,
          base: str = "") -> MergeOutcome:
    """Bring ``branch`` into ``target`` (branch names), checked, by compare-and-swap.
    ``base`` is the commit the branch's work started from, when known: a branch still
    there has no changes.

    The caller holds the lock that serializes merges into ``target``."""
    ref = f"refs/heads/{target}"
    notes: list[str] = []
    for races in range(MAX_RACES):
        old, tip = git.rev(ref), git.rev(f"refs/heads/{branch}")
        if not old or not tip:
            raise GitError(f"branch {target if not old else branch} does not exist")
        if tip == (git.rev(base) if base else "") or tip == old:
            return MergeOutcome(NO_CHANGES, old, old, races=races)
        if git.is_ancestor(tip, old):
            return MergeOutcome(MERGED, old, _landed_by(git, tip, old), already=True,
                                races=races, notes=tuple(notes))
        base = git.run("merge-base", old, tip).stdout.strip()
        changed = git.changed(base, tip)
        if not changed:
            return MergeOutcome(NO_CHANGES, old, old, races=races)
        if mode == "rebase":
            new, conflicts = _rebased(git, old, tip, scratch, author)
        else:
            new, conflicts = _merged(git, old, tip, message, author)
        if conflicts:
            return MergeOutcome(CONFLICT, old, changed_files=changed, conflicts=conflicts,
                                races=races, notes=tuple(notes))
        faults.crash_point("merge-before-check")
        spent, tail, passed = (0.0, "", True) if check is None else \
            _run_check(git, new, check, scratch)
        if not passed:
            return MergeOutcome(CHECK_FAILED, old, changed_files=changed, check_sec=spent,
                                check_tail=tail, races=races, notes=tuple(notes))
        faults.crash_point("merge-before-cas")
        if git.cas(ref, new, old, f"tinyscheduler: {message.splitlines()[0]}"):
            faults.crash_point("merge-after-cas")
            return MergeOutcome(MERGED, old, new, changed, check_sec=spent, check_tail=tail,
                                races=races, notes=tuple(notes))
        notes.append(f"target {target} moved during the merge; redone on its new tip")
    raise GitError(f"target {target} kept moving: gave up after {MAX_RACES} attempts")


def _landed_by(git: Git, tip: str, target: str) -> str:
    """The commit of ``target``'s first-parent line that brought ``tip`` in (the merge
    commit of an earlier, interrupted merge), or ``target`` when git cannot tell."""
    proc = git.run("rev-list", "--first-parent", "--ancestry-path", "--reverse",
                   f"{tip}..{target}", check=False)
    first = proc.stdout.split()[:1] if proc.returncode == 0 else []
    return first[0] if first else target


def revert(git: Git, target: str, commit: str, *, message: str, author: dict[str, str],
           scratch: Path, since: str = "") -> MergeOutcome:
    """Add a commit to ``target`` that undoes ``commit`` (a merge: against its first
    parent; with ``since``, every commit of ``since..commit``, as a rebase landed them),
    by compare-and-swap; a revert that conflicts changes nothing."""
    ref = f"refs/heads/{target}"
    for races in range(MAX_RACES):
        old = git.rev(ref)
        full = git.rev(commit)
        if not old or not full:
            raise GitError(f"{'target ' + target if not old else 'commit ' + commit} "
                           "does not exist")
        if not git.is_ancestor(full, old):
            raise GitError(f"commit {commit} is not on {target}")
        parents = git.run("rev-list", "--parents", "-n", "1", full).stdout.split()[1:]
        undo = [full]
        if len(parents) > 1:
            undo = ["-m", "1", full]
        elif since:
            if not git.is_ancestor(since, full):
                raise GitError(f"commit {since} is not an ancestor of {commit}")
            undo = [f"{since}..{full}"]
        with _worktree(git, old, scratch) as work:
            proc = git.run("revert", "--no-commit", *undo, check=False, cwd=work)
            if proc.returncode != 0:
                conflicts = _unmerged(git, work)
                git.run("revert", "--abort", check=False, cwd=work)
                return MergeOutcome(CONFLICT, old, conflicts=conflicts or ("(unknown)",),
                                    races=races)
            git.run("commit", "--no-verify", "-m", message, cwd=work,
                    env=_identity(author))
            new = git.run("rev-parse", "HEAD", cwd=work).stdout.strip()
        changed = git.changed(old, new)
        if git.cas(ref, new, old, f"tinyscheduler: {message.splitlines()[0]}"):
            return MergeOutcome(MERGED, old, new, changed, races=races)
    raise GitError(f"target {target} kept moving: gave up after {MAX_RACES} attempts")


# --- the merge itself -------------------------------------------------------------------


def _merged(git: Git, old: str, tip: str, message: str,
            author: dict[str, str]) -> tuple[str, tuple[str, ...]]:
    """A merge commit of ``tip`` into ``old`` made without a working tree, or the files
    that conflict."""
    proc = git.run("merge-tree", "--write-tree", "--name-only", "--no-messages", "-z",
                   old, tip, check=False)
    if proc.returncode not in (0, 1):
        raise GitError(f"git merge-tree failed ({proc.returncode}): {proc.stderr.strip()}")
    parts = [part for part in proc.stdout.split("\0") if part]
    tree, rest = parts[0], parts[1:]
    if proc.returncode == 1:
        return "", tuple(sorted(set(rest))) or ("(unknown)",)
    new = git.run("commit-tree", tree, "-p", old, "-p", tip, "-m", message,
                  env=_identity(author)).stdout.strip()
    return new, ()


def _identity(author: dict[str, str]) -> dict[str, str]:
    """Author and committer both: the settings' GIT_AUTHOR_NAME / GIT_AUTHOR_EMAIL."""
    return {**author, "GIT_COMMITTER_NAME": author["GIT_AUTHOR_NAME"],
            "GIT_COMMITTER_EMAIL": author["GIT_AUTHOR_EMAIL"]}


def _rebased(git: Git, old: str, tip: str, scratch: Path,
             author: dict[str, str]) -> tuple[str, tuple[str, ...]]:
    """``tip``'s commits replayed onto ``old`` in a temporary worktree, or the conflicts."""
    with _worktree(git, tip, scratch) as work:
        proc = git.run("rebase", "--no-autosquash", old, check=False, cwd=work,
                       env=_identity(author))
        if proc.returncode != 0:
            conflicts = _unmerged(git, work)
            git.run("rebase", "--abort", check=False, cwd=work)
            return "", conflicts or ("(unknown)",)
        return git.run("rev-parse", "HEAD", cwd=work).stdout.strip(), ()


def _unmerged(git: Git, work: Path) -> tuple[str, ...]:
    out = git.run("diff", "--name-only", "--diff-filter=U", "-z", check=False, cwd=work).stdout
    return tuple(sorted(name for name in out.split("\0") if name))


# --- the check ----------------------------------------------------------------------------


def _run_check(git: Git, commit: str, check: Check, scratch: Path) -> tuple[float, str, bool]:
    """Run the check on ``commit`` in a temporary worktree: (seconds, output tail, passed).
    It runs like a hook (``process.run_bounded``): its own session, stopped like a hung
    agent after its timeout (TERM, then KILL), killed if this process dies, ``tick`` called
    while it runs (a False tick stops it: the lease was lost)."""
    env = {k: v for k, v in os.environ.items() if k != "TINYSCHEDULER_MCP_TOKEN"}
    with _worktree(git, commit, scratch) as work:
        started = time.monotonic()
        done = run_bounded(list(check.argv), cwd=work, env=env, timeout=check.timeout_sec,
                           grace=check.kill_grace_sec, tick=git.tick,
                           tick_every=git.tick_every, die_with_parent=True)
        spent = time.monotonic() - started
    if done.stopped:
        raise GitError("the lease was lost while the merge check ran")
    tail = done.output[-CHECK_TAIL_CHARS * 4:].decode(errors="replace")[-CHECK_TAIL_CHARS:]
    if done.error:
        return spent, f"the check could not start: {done.error}", False
    if done.timed_out:
        tail += f"\n(check stopped: ran longer than {check.timeout_sec:g} s)"
        return spent, tail.strip(), False
    return spent, tail, done.returncode == 0


# --- temporary worktrees --------------------------------------------------------------------


class _worktree:  # noqa: N801 - used as a context manager, like open()
    """A detached worktree of ``commit`` under ``scratch``, removed on exit."""

    def __init__(self, git: Git, commit: str, scratch: Path) -> None:
        self.git, self.commit = git, commit
        self.path = scratch / f"merge-{os.getpid()}-{os.urandom(4).hex()}"

    def __enter__(self) -> Path:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self.git.lock():
            self.git.run("worktree", "add", "--detach", "--no-checkout", "--quiet",
                         str(self.path), self.commit)
        # The checkout touches only this worktree: outside the repository's lock.
        self.git.run("reset", "--hard", "--quiet", "HEAD", cwd=self.path)
        return self.path

    def __exit__(self, *_exc: object) -> None:
        with self.git.lock():
            self.git.run("worktree", "remove", "--force", str(self.path), check=False)
            if self.path.exists():
                shutil.rmtree(self.path, ignore_errors=True)
            self.git.run("worktree", "prune", check=False)


def clean_scratch(git: Git, scratch: Path, is_live: Callable[[Path], bool] = lambda _: False
                  ) -> None:
    """Remove temporary worktrees a crashed merge left behind."""
    if scratch.is_dir():
        for entry in scratch.iterdir():
            if entry.name.startswith("merge-") and not is_live(entry):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
    with git.lock():
        git.run("worktree", "prune", check=False)
