"""The lease store's less travelled branches: held locks, a store mutex that stays
locked, symlinks, forbidden heartbeat changes, and quarantine name collisions."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from freezegun import freeze_time

from scheduler.errors import LeaseError
from scheduler.state import leases as leases_module
from scheduler.state.leases import (
    MUTEX_NAME,
    RUNNING,
    STARTING,
    Lease,
    LeaseStore,
    encode,
    probe_lock,
)

T0 = datetime(2025, 1, 31, 12, 0, 0, 123000, tzinfo=timezone.utc)


def lease(task_id: str = "t1", **changes) -> Lease:
    values = dict(task_id=task_id, agent="worker", state=STARTING, spawn_token="tok-1",
                  started_at=T0, heartbeat=T0, host="h1")
    values.update(changes)
    return Lease(**values)  # type: ignore[arg-type]


def test_a_null_metadata_decodes_as_empty() -> None:
    data = json.loads(encode(lease()))
    data["metadata"] = None
    assert Lease.from_json(data).metadata == {}


def test_the_liveness_lock_as_a_context_manager(tmp_path: Path, spawn_python) -> None:
    store = LeaseStore(tmp_path / "running")
    with store.liveness_lock("t1") as held:
        assert held.is_locked and store.is_held("t1")
    assert not store.is_held("t1")

    holder = spawn_python(
        "import sys\nfrom pathlib import Path\n"
        "from scheduler.state.leases import LeaseStore\n"
        f"lock = LeaseStore(Path({str(store.running_dir)!r})).liveness_lock('t1')\n"
        "assert lock.acquire(0)\nprint('locked', flush=True)\nsys.stdin.read()\n")
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(LeaseError, match="task_t1.lock is held by another process"), \
            store.liveness_lock("t1"):
        pass
    holder.stdin.close()
    holder.wait(timeout=10)


def test_a_symlinked_lock_file_is_neither_followed_nor_removed(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "running")
    store.create(lease("t2"))
    target = tmp_path / "elsewhere"
    target.write_text("precious")
    link = store.lock_path("t1")
    link.symlink_to(target)

    assert probe_lock(link) is False
    assert store.remove_stale_lock_files(set()) == 0

    assert link.is_symlink() and target.read_text() == "precious"


def test_a_store_mutex_held_too_long_fails_the_operation_cleanly(tmp_path: Path, spawn_python,
                                                                 monkeypatch) -> None:
    store = LeaseStore(tmp_path / "running")
    store.create(lease())
    holder = spawn_python(
        "import fcntl, os, sys\n"
        f"fd = os.open({str(store.running_dir / MUTEX_NAME)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\nsys.stdin.read()\n")
    assert holder.stdout.readline().strip() == "locked"
    monkeypatch.setattr(leases_module, "MUTEX_WAIT_SEC", 0.2)

    with pytest.raises(LeaseError, match="is locked by another process for more than"):
        store.heartbeat("t1", "tok-1", T0)

    holder.stdin.close()
    holder.wait(timeout=10)
    assert store.heartbeat("t1", "tok-1", T0) is not None  # free again


def test_a_heartbeat_may_not_set_an_unknown_state(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "running")
    store.create(lease(state=RUNNING))
    before = (tmp_path / "running" / "task_t1.json").read_bytes()
    with pytest.raises(LeaseError, match="may not change task_id or set state 'gone'"):
        store.heartbeat("t1", "tok-1", T0, state="gone")
    assert (tmp_path / "running" / "task_t1.json").read_bytes() == before


def test_two_corrupt_leases_quarantined_at_one_instant_keep_both(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "running")
    store.running_dir.mkdir(mode=0o700)
    bad = store.running_dir / "task_t1.json"
    with freeze_time(T0):
        for content in (b"{first", b"{second"):
            bad.write_bytes(content)
            assert store.list() == []
    corrupt = sorted(p.name for p in (store.running_dir / "corrupt").iterdir()
                     if not p.name.endswith(".reason"))
    assert len(corrupt) == 2 and corrupt[1] == corrupt[0] + "-1"
    kept = sorted((store.running_dir / "corrupt" / name).read_bytes() for name in corrupt)
    assert kept == [b"{first", b"{second"]


def test_a_lease_mutex_file_is_private(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "running")
    store.create(lease())
    store.heartbeat("t1", "tok-1", T0)
    mode = os.stat(store.running_dir / MUTEX_NAME).st_mode & 0o777
    assert mode == 0o600
    fd = os.open(store.running_dir / MUTEX_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after the operation
    finally:
        os.close(fd)


def test_adoption_gives_up_at_once_when_the_lease_is_no_longer_adoptable(
        tmp_path: Path, spawn_python, monkeypatch) -> None:
    """A wrapper started for a lease that another process holds the lock of and that
    names another owner returns at once instead of waiting for the lock."""
    store = LeaseStore(tmp_path / "running")
    store.create(lease(state=RUNNING, spawn_token="theirs"))
    holder = spawn_python(
        "import sys\nfrom pathlib import Path\n"
        "from scheduler.state.leases import LeaseStore\n"
        f"lock = LeaseStore(Path({str(store.running_dir)!r})).liveness_lock('t1')\n"
        "assert lock.acquire(0)\nprint('locked', flush=True)\nsys.stdin.read()\n")
    assert holder.stdout.readline().strip() == "locked"
    monkeypatch.setattr(leases_module, "ADOPT_LOCK_WAIT_SEC", 60.0)
    began = time.monotonic()

    assert store.adopt("t1", "tok-1", os.getpid(), 1.0, T0) is None

    assert time.monotonic() - began < 30  # not the 60 s lock wait
    assert store.read("t1").spawn_token == "theirs"
    holder.stdin.close()
    holder.wait(timeout=10)


def test_a_long_bad_value_is_shortened_and_a_bad_monotonic_reading_refused() -> None:
    data = json.loads(encode(lease()))
    with pytest.raises(leases_module.LeaseDecodeError) as caught:
        Lease.from_json({**data, "host": ["x" * 200]})
    assert caught.value.field == "host" and "..." in str(caught.value)
    assert len(str(caught.value)) < 160
    for bad in (-1, 1e13, True, "12.5", float("nan")):
        with pytest.raises(leases_module.LeaseDecodeError, match="monotonic clock") as caught:
            Lease.from_json({**data, "started_mono": bad})
        assert caught.value.field == "started_mono"


def test_an_adoption_that_cannot_write_lets_go_of_the_lock_and_leaves_the_lease(
        tmp_path: Path, monkeypatch) -> None:
    """A full disk at the moment of adoption: the error reaches the wrapper, the liveness
    lock is released (the next pass may judge the lease) and the lease stays `starting`,
    so a later adoption with the same token still works."""
    store = LeaseStore(tmp_path / "running")
    store.create(lease())
    real_write = leases_module.write_temp

    def disk_full(*_args, **_kwargs) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(leases_module, "write_temp", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.adopt("t1", "tok-1", os.getpid(), 1.0, T0)
    assert not store.is_held("t1")
    assert store.read("t1").state == STARTING
    monkeypatch.setattr(leases_module, "write_temp", real_write)
    adopted = store.adopt("t1", "tok-1", os.getpid(), 1.0, T0)
    assert adopted is not None and adopted[0].state == RUNNING
    adopted[1].release()


@pytest.mark.parametrize("meanwhile", ["replaced", "removed"])
def test_a_corrupt_lease_changed_before_its_quarantine_is_left_alone(
        tmp_path: Path, monkeypatch, meanwhile: str) -> None:
    """A reader finds a lease file corrupt, but before it moves the file aside a writer
    replaces it with a good lease (or it is removed): the good lease is never quarantined,
    and nothing is moved for a file that is gone. (The new lease file may get the freed
    inode number of the old one: the reader keeps the old file open until its verdict, so
    the identity check cannot be fooled.)"""
    store = LeaseStore(tmp_path / "running")
    path = store.running_dir / "task_t1.json"
    store.running_dir.mkdir(mode=0o700)
    path.write_text("{not json")
    real_reject = LeaseStore._reject

    def change_then_reject(self, quarantine, name, reason, info):
        os.unlink(path)
        if meanwhile == "replaced":
            store.create(lease())
        return real_reject(self, quarantine, name, reason, info)

    monkeypatch.setattr(LeaseStore, "_reject", change_then_reject)
    assert store.read("t1") is None
    monkeypatch.setattr(LeaseStore, "_reject", real_reject)
    corrupt = store.running_dir / "corrupt"
    assert not corrupt.exists() or list(corrupt.iterdir()) == []
    if meanwhile == "replaced":
        assert store.read("t1") == lease()
    else:
        assert not path.exists()


def test_a_socket_planted_as_a_lease_file_is_skipped_and_logged(tmp_path: Path,
                                                              caplog) -> None:
    """A unix socket named like a lease cannot even be opened (ENXIO): listing skips it
    with a warning and goes on with the other leases; it is left for the operator."""
    import logging
    import socket

    store = LeaseStore(tmp_path / "running")
    store.create(lease("t2"))
    planted = store.running_dir / "task_t1.json"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(planted))
        with caplog.at_level(logging.WARNING, logger="tinyscheduler.leases"):
            assert [found.task_id for found in store.list()] == ["t2"]
        assert f"lease {planted} could not be read" in caplog.text
        assert planted.exists()


@pytest.mark.parametrize("meanwhile", ["replaced", "removed"])
def test_a_stale_lock_file_changed_while_being_removed_is_left_alone(
        tmp_path: Path, monkeypatch, meanwhile: str) -> None:
    """Removing an orphaned ``task_<id>.lock`` races with a wrapper that recreates it:
    once the old file is locked, its path is replaced by a fresh lock file (or removed).
    The fresh file is never unlinked: the identity check sees another inode."""
    store = LeaseStore(tmp_path / "running")
    store.running_dir.mkdir(mode=0o700)
    path = store.lock_path("t1")
    path.write_text("")
    real_flock = fcntl.flock
    fresh = tmp_path / "fresh.lock"

    def flock_then_change(fd, operation):
        real_flock(fd, operation)
        if meanwhile == "replaced":
            fresh.write_text("")
            os.replace(fresh, path)
        else:
            os.unlink(path)

    monkeypatch.setattr(leases_module.fcntl, "flock", flock_then_change)
    assert store.remove_stale_lock_files(set()) == 0
    monkeypatch.setattr(leases_module.fcntl, "flock", real_flock)
    assert path.exists() == (meanwhile == "replaced")


def test_a_corrupt_lease_removed_just_before_it_is_moved_aside_is_no_error(
        tmp_path: Path, monkeypatch) -> None:
    store = LeaseStore(tmp_path / "running")
    store.running_dir.mkdir(mode=0o700)
    path = store.running_dir / "task_t1.json"
    path.write_text("{not json")
    real_ensure = leases_module.ensure_private_dir

    def remove_then_ensure(directory, *args, **kwargs):
        if directory.name == "corrupt" and path.exists():
            path.unlink()  # removed by someone else between the check and the move
        return real_ensure(directory, *args, **kwargs)

    monkeypatch.setattr(leases_module, "ensure_private_dir", remove_then_ensure)
    assert store.list() == []
    assert list((store.running_dir / "corrupt").iterdir()) == []  # no reason without a file


def test_releasing_a_liveness_lock_that_is_not_held_changes_nothing(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "running")
    lock = store.liveness_lock("t1")
    lock.release()  # never taken
    assert not lock.is_locked and lock.fileno() is None
    assert lock.acquire(0) and lock.fileno() is not None
    lock.release()
    lock.release()  # twice
    assert not lock.is_locked and not store.is_held("t1")


def test_a_lock_probe_that_cannot_open_the_file_raises_rather_than_saying_free(
        tmp_path: Path) -> None:
    """Only a missing file, a link or a directory means "nobody holds it"; any other
    error is raised (taken as free, it would requeue a task whose wrapper may live)."""
    with pytest.raises(OSError) as raised:
        probe_lock(tmp_path / ("x" * 300))
    assert raised.value.errno == errno.ENAMETOOLONG


def test_a_lease_read_takes_the_whole_file_whatever_its_size_was_at_fstat() -> None:
    """The size from ``fstat`` is a hint: a file that grew since is read to its end (a
    pipe holding more than the hint stands in for it: no hook between the two calls)."""
    read_fd, write_fd = os.pipe()
    data = bytes(range(256)) * 80  # 20 KiB: more than the hint and its margin, fits a pipe
    os.write(write_fd, data)
    os.close(write_fd)
    try:
        assert leases_module._read_all(read_fd, 10) == data
    finally:
        os.close(read_fd)
