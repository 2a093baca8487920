"""Logs are bounded: the attempt log keeps head + marker + the latest output under
ATTEMPT_LOG_MAX_MB, daily scheduler logs are deleted after LOG_RETENTION_DAYS, and
metrics.jsonl is moved aside at METRICS_MAX_MB."""

from __future__ import annotations

import json
import os
import random
import re
import time

import pytest

from scheduler.logs import DailyFileHandler, remove_old_logs
from scheduler.state import records
from tests.test_wrapper import Rig, agent_command, make_rig  # noqa: F401 - a fixture
from wrapper.attemptlog import AttemptLog

MARKER = re.compile(rb"\n\[tinyscheduler\] \.\.\. +(\d+) bytes of output left out here "
                    rb"\(ATTEMPT_LOG_MAX_MB\) \.\.\.\n")
MiB = 1 << 20


def split(data: bytes) -> tuple[bytes, int, bytes]:
    """(head, bytes left out, tail) of a capped log."""
    match = MARKER.search(data)
    assert match is not None, "no marker"
    return data[:match.start()], int(match.group(1)), data[match.end():]


# --- the writer itself -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_the_log_never_exceeds_the_cap_and_keeps_the_head_and_the_newest_bytes(tmp_path,
                                                                                 seed):
    rng = random.Random(seed)
    cap = rng.choice([4096, 10_000, 65_536])
    log = AttemptLog(tmp_path / "attempt-1.log", cap)
    stream = bytearray()
    for index in range(400):
        size = rng.choice([1, 7, 100, 1000, 5000, 70_000])
        chunk = bytes(rng.randrange(32, 127) for _ in range(min(size, 64))) * (size // 64 + 1)
        chunk = chunk[:size]
        log.write(chunk)
        stream += chunk
        assert os.path.getsize(log.path) <= cap, (index, len(stream))
    log.close()
    data = (tmp_path / "attempt-1.log").read_bytes()
    head, left_out, tail = split(data)
    assert head == stream[:len(head)] and len(head) == cap // 4
    assert stream.endswith(tail)
    assert len(head) + left_out + len(tail) == len(stream)


def test_small_output_is_kept_whole_and_uncapped_logs_are_plain(tmp_path):
    capped = AttemptLog(tmp_path / "a.log", MiB)
    capped.write(b"hello\n")
    capped.close()
    assert (tmp_path / "a.log").read_bytes() == b"hello\n"
    plain = AttemptLog(tmp_path / "b.log", 0)
    for _ in range(100):
        plain.write(b"x" * 10_000)
    plain.close()
    assert os.path.getsize(tmp_path / "b.log") == 1_000_000


def test_a_rerun_of_a_full_log_starts_capped(tmp_path):
    path = tmp_path / "attempt-1.log"
    path.write_bytes(b"o" * 5000)
    path.chmod(0o600)
    log = AttemptLog(path, 4096)
    log.write(b"n" * 5000)
    log.close()
    data = path.read_bytes()
    assert len(data) <= 4096 + 5000 and data.endswith(b"n" * 1000)  # the old part stays


# --- through a real wrapper ------------------------------------------------------------------


def test_an_agent_writing_megabytes_leaves_a_capped_log_with_its_end(make_rig):  # noqa: F811
    rig = make_rig(ATTEMPT_LOG_MAX_MB=1)
    task = rig.attempt(rig.add(), "lines", "300000", "print", "THE END")
    assert task.status == "complete"
    data = rig.log_path(task.id).read_bytes()
    assert len(data) <= MiB
    head, left_out, tail = split(data)
    assert head.startswith(b"[tinyscheduler ") and b"argv " in head
    assert left_out > MiB
    lines = tail.decode().splitlines()
    assert lines[-3] == "THE END"
    assert "outcome succeeded, exit code 0" in lines[-2] and "reported succeeded" in lines[-1]
    assert lines[-4].endswith("299999")
    assert "THE END" in rig.summary(task.id)


def test_without_a_cap_the_agent_writes_the_file_directly(make_rig):  # noqa: F811
    rig = make_rig(ATTEMPT_LOG_MAX_MB=0)
    task = rig.attempt(rig.add(), "lines", "100000", "print", "THE END")
    data = rig.log_path(task.id).read_bytes()
    assert MARKER.search(data) is None and b"\nline 99999\n" in data and len(data) > MiB


def test_an_endless_writer_is_stopped_at_the_runtime_limit_and_its_log_stays_capped(
        make_rig):  # noqa: F811
    rig = make_rig(ATTEMPT_LOG_MAX_MB=1, MAX_RUNTIME_SEC=2, KILL_GRACE_SEC=1)
    task = rig.add()
    token = rig.prepare(task)
    assert rig.run(task.id, token, AGENT_COMMAND="yes tinyscheduler") == 0
    task = rig.tasks.get(task.id)
    assert task.last_error.startswith("attempt 1 timed_out")
    data = rig.log_path(task.id).read_bytes()
    assert len(data) <= MiB
    _head, left_out, tail = split(data)
    assert left_out > 0 and b"ran longer than 2 s" in tail


# --- scheduler logs and metrics ---------------------------------------------------------------


def test_daily_logs_older_than_the_retention_are_deleted(tmp_path):
    now = time.mktime((2026, 12, 10, 12, 0, 0, 0, 0, 0)) - time.timezone
    for day in ("20261130", "20261202", "20261203", "20261210"):
        (tmp_path / f"scheduler_{day}.log").write_text("x\n")
    (tmp_path / "scheduler_latest.log").write_text("not ours\n")
    (tmp_path / "tasks").mkdir()
    removed = remove_old_logs(tmp_path, 7, now)
    assert sorted(removed) == ["scheduler_20261130.log", "scheduler_20261202.log"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "scheduler_20261203.log", "scheduler_20261210.log", "scheduler_latest.log", "tasks"]


def test_opening_the_day_file_applies_the_retention_and_zero_keeps_everything(tmp_path):
    old = tmp_path / "scheduler_20000101.log"
    old.write_text("old\n")
    DailyFileHandler(tmp_path, 0).close()
    assert old.exists()
    handler = DailyFileHandler(tmp_path, 30)
    handler.close()
    assert not old.exists()
    today = time.strftime("%Y%m%d", time.gmtime())
    assert (tmp_path / f"scheduler_{today}.log").exists()


def test_metrics_are_moved_aside_at_the_cap(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for index in range(100):
        records.append_metrics(path, json.dumps({"pass": index, "pad": "x" * 80}), 1000)
        assert os.path.getsize(path) <= 1000 + 120
    rotated = tmp_path / "metrics.jsonl.1"
    assert rotated.exists() and os.path.getsize(rotated) <= 1000 + 120
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["pass"] == 99
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_a_pass_rotates_a_full_metrics_file(make_rig, tmp_path):  # noqa: F811
    from tests.test_reconciler import Scheduler

    (tmp_path / "base").mkdir()
    s = Scheduler(tmp_path / "base", {"a": "q"}, METRICS_MAX_MB=1)
    (s.state).mkdir(mode=0o700, exist_ok=True)
    big = s.state / "metrics.jsonl"
    big.write_bytes(b"{}\n" * (MiB // 3 + 1))
    big.chmod(0o600)
    s.run_once()
    assert (s.state / "metrics.jsonl.1").stat().st_size > MiB - 10
    assert len(big.read_text().splitlines()) == 1
