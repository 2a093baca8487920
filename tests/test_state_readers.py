"""The read-only state readers (task logs for ``task log`` and the dashboard, the last
pass summary for ``status``): a missing, linked, truncated or damaged file gives an empty
answer or one clear error, never a traceback and never a file followed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scheduler.config.settings import load_settings
from scheduler.state import records, tasklog


def test_a_missing_or_linked_log_reads_as_nothing(tmp_path: Path) -> None:
    real = tmp_path / "real.log"
    real.write_bytes(b"secret\n")
    link = tmp_path / "attempt-1.log"
    link.symlink_to(real)
    for path in (tmp_path / "missing.log", link):
        assert tasklog.read_chunk(path, 0) is None
        assert tasklog.tail(path) == ""


def test_a_log_shorter_than_the_offset_is_read_from_its_start(tmp_path: Path) -> None:
    """The log was replaced by a shorter one (a rerun of the attempt): a follower that
    was further along starts again from the beginning instead of waiting forever."""
    path = tmp_path / "attempt-1.log"
    path.write_bytes(b"fresh start\n")
    assert tasklog.read_chunk(path, 500) == (b"fresh start\n", 12)


@pytest.mark.parametrize("content", [b"{broken", b"\xff\xfe", b'["a list"]',
                                     b'{"attempt": true}'])
def test_a_damaged_lease_has_no_running_attempt(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "task_7.json").write_bytes(content)
    assert tasklog.running_attempt(tmp_path, "7") is None
    assert (tmp_path / "task_7.json").read_bytes() == content  # read-only: left in place


def test_following_a_finished_attempt_yields_its_log_once_and_ends(tmp_path: Path) -> None:
    path = tasklog.attempt_path(tmp_path / "tasks", "7", 1)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"one\ntwo\n")
    naps: list[float] = []
    assert b"".join(tasklog.follow(tmp_path / "tasks", tmp_path / "running", "7", 1,
                                   sleep=naps.append)) == b"one\ntwo\n"
    assert naps == []  # no lease: the attempt has ended, nothing to wait for


def test_a_last_pass_file_that_cannot_be_used_is_one_clear_error(tmp_path: Path) -> None:
    settings = load_settings(environ={"TINYSCHEDULER_BASE_PATH": str(tmp_path)}, cwd=tmp_path)
    path = settings.last_pass_file
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path, 0o600)  # never opened for a blocking read
    with pytest.raises(ValueError, match=f"{path} is unreadable"):
        records.read_last_pass(settings)
    path.unlink()
    path.write_bytes(b" " * (records.MAX_LAST_PASS_BYTES + 1))
    path.chmod(0o600)
    limit = records.MAX_LAST_PASS_BYTES
    with pytest.raises(ValueError, match=f"{path} is larger than {limit} bytes"):
        records.read_last_pass(settings)


def test_a_pause_file_too_large_to_be_one_is_a_config_error(tmp_path: Path) -> None:
    from scheduler.errors import ConfigError
    from scheduler.state import pauses

    path = tmp_path / "pauses.json"
    path.write_bytes(b" " * (pauses.MAX_BYTES + 1))
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=f"pause file {path} is unreadable \\(larger than"):
        pauses.load(path)
    assert not pauses.load(tmp_path / "missing.json").any
    assert pauses.Pauses(queues=frozenset({"dev"})).any


def test_updating_the_task_file_of_a_task_without_one_writes_nothing(tmp_path: Path) -> None:
    from scheduler.state import taskfile

    taskfile.update(tmp_path, "7", workspace="/somewhere")
    assert not taskfile.path_for(tmp_path, "7").exists()


def test_the_wake_socket_wakes_on_a_nudge_and_times_out_without(tmp_path: Path) -> None:
    from scheduler.state import wake

    path = tmp_path / "wake.sock"
    waker = wake.WakeSocket(path)
    try:
        assert waker.wait(0) is False
        assert all(wake.nudge(path) for _ in range(3))
        assert waker.wait(5) is True  # every pending nudge drained at once
        assert waker.wait(0) is False
        assert (path.stat().st_mode & 0o777) == 0o600
    finally:
        path.unlink()  # removed under it: closing is still clean
        waker.close()
    assert wake.nudge(path) is False  # nobody listening: best effort, never an error


def test_an_outbox_entry_removed_while_the_outbox_is_listed_sorts_first(
        tmp_path: Path) -> None:
    """An entry delivered (and removed) by its wrapper between the directory scan and the
    look at its time is no error: it sorts first, and the pass finds it gone when it
    loads it."""
    from scheduler.state import outbox

    outbox_dir = tmp_path / "outbox"
    outbox_dir.mkdir()
    for name in ("1-a.json", "2-b.json"):
        (outbox_dir / name).write_text("{}")
    [first, second] = sorted(os.scandir(outbox_dir), key=lambda e: e.name)
    os.unlink(first.path)
    assert outbox._mtime(first) == 0.0
    assert outbox._mtime(second) == (outbox_dir / "2-b.json").stat().st_mtime
    assert outbox.pending(outbox_dir) == [outbox_dir / "2-b.json"]
