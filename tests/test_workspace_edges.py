"""Edges of the workspace helpers with real processes: the git and merge locks held by
another process, a bubblewrap that cannot work here, the git metadata a sandbox opens, and
the file size limit."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.workspace import limits, sandbox
from scheduler.workspace.gitcmd import GitError, held

HOLD = ("import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n")


@pytest.fixture
def holder(spawn_python, tmp_path: Path):
    """Another process holding the flock ``tmp_path/locks/the.lock`` until its stdin closes."""
    path = tmp_path / "locks" / "the.lock"
    path.parent.mkdir(mode=0o700)
    child = spawn_python(HOLD, str(path))
    assert child.stdout.readline() == "held\n"
    return path, child


def test_a_lock_held_elsewhere_is_waited_for_and_never_entered(holder):
    path, child = holder
    entered = []
    expected = re.escape(f"another process held the git lock {path} for more than 0.3 s")
    with pytest.raises(GitError, match=expected), \
            held(path, tick=lambda: True, tick_every=0.05, timeout=0.3, what="the git lock"):
        entered.append(True)
    assert entered == []


def test_a_lost_lease_stops_the_wait_for_a_lock(holder):
    path, child = holder
    ticks = []

    def tick() -> bool:
        ticks.append(1)
        return len(ticks) < 3

    with pytest.raises(GitError, match="the lease was lost while waiting for the merge lock"), \
            held(path, tick=tick, tick_every=0.02, timeout=60, what="the merge lock"):
        pytest.fail("entered a lock another process holds")
    assert len(ticks) == 3


def test_a_lock_freed_by_its_holder_is_taken(holder):
    path, child = holder
    child.stdin.close()  # the holder exits: the kernel frees its lock
    child.wait(timeout=10)
    with held(path, timeout=5):
        assert path.exists()


def fake_bwrap(directory: Path, script: str) -> None:
    directory.mkdir()
    program = directory / "bwrap"
    program.write_text(script)
    program.chmod(0o755)


@pytest.mark.parametrize("script, expected", [
    ("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n",
     "cannot create its namespaces here: bwrap: setting up uid map: Permission denied; "
     "run as root or allow unprivileged user namespaces"),
    ("#!/bin/sh\nexit 1\n", "cannot create its namespaces here: exit 1;"),
    ("#!/nonexistent/interpreter\n", "could not run: [Errno 2] No such file or directory"),
])
def test_a_bwrap_that_cannot_work_here_says_why(tmp_path, monkeypatch, script, expected):
    fake_bwrap(tmp_path / "bin", script)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    problem = sandbox.check()
    assert problem is not None
    assert problem.startswith(f"bwrap ({tmp_path / 'bin' / 'bwrap'}) ") and expected in problem


def test_only_a_worktree_opens_git_metadata_to_the_sandbox(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert sandbox.git_writable(plain) == []  # directory mode: no .git at all
    (plain / ".git").write_text("not a pointer to a git directory\n")
    assert sandbox.git_writable(plain) == []


def test_an_agent_writing_past_the_file_size_limit_is_refused_the_bytes(tmp_path):
    triples = limits.rlimits(limits.Limits(file_mb=1))
    assert triples == [(resource.RLIMIT_FSIZE, 1 << 20, 1 << 20)]
    target = tmp_path / "big.bin"
    code = f"open({str(target)!r}, 'wb').write(b'x' * (2 << 20))"
    proc = subprocess.run([sys.executable, "-S", "-c", code], preexec_fn=lambda: limits.apply(
        triples), capture_output=True, timeout=30)
    # Python ignores SIGXFSZ: the write past the limit fails (EFBIG) and nothing more lands
    assert proc.returncode == 1 and b"OSError: [Errno 27] File too large" in proc.stderr
    assert os.path.getsize(target) == 1 << 20
