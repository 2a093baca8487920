"""The scheduler lock, contended by real processes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from scheduler.state.lock import SchedulerLock, SchedulerLockHeld

CONTENDER = """
import sys
from pathlib import Path
from scheduler.state.lock import SchedulerLock
lock = SchedulerLock(Path(sys.argv[1]), "host-b")
print(lock.try_acquire(), lock.describe_holder(), flush=True)
sys.stdin.readline()
"""


@pytest.mark.processes
def test_second_process_cannot_acquire_and_sees_the_holder(tmp_path: Path,
                                                           spawn_python) -> None:
    path = tmp_path / "state" / "tinyscheduler.lock"
    with SchedulerLock(path, "host-a") as lock:
        assert os.fstat(lock.fileno()).st_ino == os.stat(path).st_ino  # the locked file
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(lock.holder_path).st_mode) == 0o600
        child = spawn_python(CONTENDER, str(path))
        line = child.stdout.readline()
        assert line.startswith(f"False held by pid {os.getpid()} on host-a since ")
        assert line.strip().endswith("Z")
    assert lock.fileno() is None
    assert path.exists() and not lock.holder_path.exists()


@pytest.mark.processes
def test_next_scheduler_acquires_after_the_holder_is_killed(tmp_path: Path,
                                                            spawn_python) -> None:
    path = tmp_path / "tinyscheduler.lock"
    holder = spawn_python(CONTENDER, str(path))
    assert holder.stdout.readline().startswith("True")
    lock = SchedulerLock(path, "host-a")
    assert lock.try_acquire() is False
    assert lock.holder() == {"pid": holder.pid, "host": "host-b",
                             "since": lock.holder()["since"]}
    with pytest.raises(SchedulerLockHeld, match=f"held by pid {holder.pid} on host-b"):
        lock.__enter__()
    holder.kill()
    holder.wait()
    assert lock.try_acquire() is True
    try:
        assert lock.holder()["pid"] == os.getpid()
    finally:
        lock.release()
    assert path.exists()


@pytest.mark.parametrize("content", ["", "garbage", "[1]", json.dumps({"pid": "1"}),
                                     json.dumps({"pid": True, "host": "h", "since": "s"})])
def test_garbage_holder_file_is_tolerated(tmp_path: Path, content: str) -> None:
    lock = SchedulerLock(tmp_path / "x.lock", "host-a")
    lock.holder_path.write_text(content)
    assert lock.holder() is None
    assert "unknown process" in lock.describe_holder()


def test_missing_holder_and_release_when_not_held(tmp_path: Path) -> None:
    lock = SchedulerLock(tmp_path / "x.lock", "host-a")
    assert lock.holder() is None
    lock.release()
    assert lock.try_acquire() and lock.try_acquire()  # taking it again is a no-op
    lock.release()
    assert not lock.is_locked and (tmp_path / "x.lock").exists()


def test_a_holder_note_that_cannot_be_written_gives_the_lock_back(tmp_path: Path) -> None:
    """Something planted at the holder note's path (a directory): taking the lock fails
    with the error, and the lock is released, never left held by a failed pass."""
    path = tmp_path / "tinyscheduler.lock"
    holder = path.with_name(path.name + ".holder")
    holder.mkdir(parents=True)
    (holder / "keep").write_text("x")
    first = SchedulerLock(path, "host-a")
    with pytest.raises(OSError):
        first.try_acquire()
    second = SchedulerLock(path, "host-b")
    holder.joinpath("keep").unlink()
    holder.rmdir()
    assert second.try_acquire()  # free: the failed attempt let go
    holder.unlink()  # the note vanished while held: releasing is still clean
    second.release()
    third = SchedulerLock(path, "host-c")
    assert third.try_acquire()
    third.release()
