"""SANDBOX=bwrap: the agent runs under bubblewrap. The root file system is read-only; the
agent's workspace, the SANDBOX_WRITABLE paths and (worktree mode) the git metadata its
own branch needs are writable; /tmp is private; the network is kept (agents call model
APIs); inherited descriptors (the output, the liveness lock) pass through unchanged.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

#: How to install bubblewrap, for error messages.
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf " \
               "install bubblewrap)"
CHECK_TIMEOUT_SEC = 10


def find() -> str | None:
    return shutil.which("bwrap")


def check() -> str | None:
    """None when bwrap is installed and can make its namespaces here, else why not."""
    program = find()
    if program is None:
        return f"SANDBOX=bwrap but bwrap is not on PATH; {INSTALL_HINT}"
    argv = [program, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--tmpfs", "/tmp", "true"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=CHECK_TIMEOUT_SEC,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap ({program}) could not run: {exc}"
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return (f"bwrap ({program}) cannot create its namespaces here: {why}; run as root or "
                "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1"
                ", or the distribution's apparmor rule for bwrap)")
    return None


def wrap(argv: list[str], *, program: str, workspace: Path | None, cwd: Path,
         writable: Iterable[Path] = (), readable: Iterable[Path] = ()) -> list[str]:
    """The bwrap argv that runs ``argv`` in the sandbox. The private /tmp comes before the
    binds, or a workspace that lives under /tmp would be hidden by it."""
    sandbox = [program, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
               "--tmpfs", "/tmp"]
    for path in readable:
        sandbox += ["--ro-bind-try", str(path), str(path)]
    for path in writable:
        sandbox += ["--bind-try", str(path), str(path)]
    if workspace is not None:
        sandbox += ["--bind", str(workspace), str(workspace)]
    return [*sandbox, "--chdir", str(cwd), "--", *argv]


def hidden_by_private_tmp(argv: Iterable[str]) -> list[Path]:
    """Directories of the program and of the file arguments that lie below /tmp, which
    the private /tmp would hide (an agent or its script installed in a directory there), to
    bind back read-only. /tmp itself is never bound back: it stays private."""
    found: list[Path] = []
    for word in argv:
        path = Path(word)
        if not word.startswith("/tmp/") or path.parent == Path("/tmp"):
            continue
        if path.is_file() and path.parent not in found:
            found.append(path.parent)
    return found


def git_writable(workspace: Path) -> list[Path]:
    """What git in a worktree writes besides the worktree: its own metadata directory,
    the object store, and the task branches' refs and logs (REPO_DIR's working tree,
    index and other branches stay read-only)."""
    try:
        text = (workspace / ".git").read_text(encoding="utf-8").strip()
    except OSError:
        return []
    if not text.startswith("gitdir: "):
        return []
    gitdir = Path(text[len("gitdir: "):])
    common = gitdir.parent.parent  # <repo>/.git/worktrees/<name> -> <repo>/.git
    paths = [gitdir, common / "objects"]
    for sub in ("refs/heads/tinyscheduler", "logs/refs/heads/tinyscheduler"):
        (common / sub).mkdir(parents=True, exist_ok=True)
        paths.append(common / sub)
    return paths
