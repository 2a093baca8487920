"""``git`` calls: argv only (no shell), bounded in time, a clean environment, and a lock
per repository for what git does not make safe to run concurrently (worktree add and
remove, ref updates)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from scheduler.errors import TinySchedulerError
from scheduler.fsutil import ensure_private_dir, kernel_flock
from scheduler.workspace.process import TAIL_BYTES, Finished, Tick, run_bounded

#: Longest one git call may take (a checkout of a very large repository included).
GIT_TIMEOUT_SEC = 300
#: Longest a wrapper waits for another one's git operation on the same repository.
LOCK_TIMEOUT_SEC = 600
#: Configuration every call carries: no hooks of the repository, no signing, no pager.
CONFIG = ("-c", "core.hooksPath=/dev/null", "-c", "commit.gpgSign=false",
           "-c", "core.pager=cat", "-c", "advice.detachedHead=false")


class GitError(TinySchedulerError):
    """A git command failed; the message names the command and git's last words."""


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for git: no GIT_* variable of ours leaks in (GIT_DIR would redirect
    every command), no prompt, messages in English."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GIT_") and not k.startswith("TINYSCHEDULER_")}
    env.update({"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0"})
    env.update(extra or {})
    return env


def run(repo: Path, *args: str, check: bool = True, env: Mapping[str, str] | None = None,
        tick: Tick | None = None, tick_every: float = 15.0,
        timeout: float = GIT_TIMEOUT_SEC) -> Finished:
    """``git -C repo args...``; raises :class:`GitError` on failure when ``check``."""
    argv = ["git", "-C", str(repo), *CONFIG, *args]
    done = run_bounded(argv, cwd=repo if repo.is_dir() else "/", env=env or git_env(),
                       timeout=timeout, tick=tick, tick_every=tick_every)
    if check and not done.ok:
        why = _why(done)
        raise GitError(f"git {' '.join(args[:3])} in {repo}: {done.describe(timeout)}"
                       + (f": {why}" if why else ""))
    return done


def _why(done: Finished) -> str:
    """git's own ``fatal:`` / ``error:`` lines (its advice after them would push them out
    of the last lines), else the output's last lines."""
    lines = done.output[-TAIL_BYTES:].decode(errors="replace").splitlines()
    errors = [line.strip() for line in lines if line.startswith(("fatal:", "error:"))]
    return "\n".join(errors[-3:]) if errors else done.tail(3)


def out(repo: Path, *args: str, **kwargs) -> str:
    """The stripped stdout of a git command that must succeed."""
    return run(repo, *args, **kwargs).output.decode(errors="replace").strip()


def rev(repo: Path, ref: str) -> str | None:
    """The commit ``ref`` names, or None when there is none."""
    done = run(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    text = done.output.decode(errors="replace").strip()
    return text if done.ok and text else None


def lock_path(state_dir: Path, repo: Path) -> Path:
    """The lock file that serialises git operations on ``repo`` (one per repository)."""
    import hashlib  # only when a workspace is made, not for every wrapper start

    digest = hashlib.sha256(str(repo.resolve()).encode()).hexdigest()[:16]
    return state_dir / "git-locks" / f"repo-{digest}.lock"


@contextmanager
def repo_lock(state_dir: Path, repo: Path, *, tick: Tick | None = None,
              tick_every: float = 15.0, timeout: float = LOCK_TIMEOUT_SEC) -> Iterator[None]:
    """Hold the repository's lock (a kernel flock: a killed holder frees it at once)."""
    with held(lock_path(state_dir, repo), tick=tick, tick_every=tick_every, timeout=timeout,
              what="the git lock"):
        yield


@contextmanager
def held(path: Path, *, tick: Tick | None = None, tick_every: float = 15.0,
         timeout: float = LOCK_TIMEOUT_SEC, what: str = "the lock") -> Iterator[None]:
    """Hold the kernel flock ``path``, waiting at most ``timeout`` seconds and calling
    ``tick`` every ``tick_every`` seconds while waiting (False from it: give up)."""
    ensure_private_dir(path.parent)
    lock = kernel_flock(path, on_acquired=lambda _fd: None)
    deadline = time.monotonic() + timeout
    # KernelFlock.acquire answers False when the wait is over (it raises nothing): only a
    # True answer enters.
    while not lock.acquire(timeout=max(0.0, min(tick_every, deadline - time.monotonic())),
                           poll_interval=0.01):
        if time.monotonic() >= deadline:
            raise GitError(f"another process held {what} {path} for more than {timeout:g} s")
        if tick is not None and not tick():
            raise GitError(f"the lease was lost while waiting for {what}")
    try:
        yield
    finally:
        lock.release()
