"""The scheduler log: LOG_FORMAT=json lines, the daily file when it turns unusable or the
disk is full, and the retention sweep leaving alone what is not a daily log."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

import pytest

from scheduler.cli import main
from scheduler.config.settings import PREFIX
from scheduler.logs import (
    DailyFileHandler,
    TextFormatter,
    append_event,
    get_logger,
    remove_old_logs,
    setup_logging,
)

DAY = 86_400


def day_name(epoch: float) -> str:
    return time.strftime("scheduler_%Y%m%d.log", time.gmtime(epoch))


def test_json_lines_carry_the_event_its_fields_and_a_traceback(tmp_path: Path, capsys):
    setup_logging("INFO", "json", tmp_path)
    log = get_logger("test")
    log.info("task spawned", extra={"fields": {"task": "7", "agent": "vaela", "path": tmp_path}})
    try:
        raise ValueError("bad lease")
    except ValueError:
        log.exception("pass failed")
    log.debug("not at INFO")

    lines = (tmp_path / day_name(time.time())).read_text().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "task spawned" and first["level"] == "INFO"
    assert first["fields"] == {"task": "7", "agent": "vaela", "path": str(tmp_path)}
    assert first["time"].endswith("Z") and "traceback" not in first
    assert second["level"] == "ERROR" and second["fields"] == {}
    assert second["traceback"].endswith("ValueError: bad lease")
    err = capsys.readouterr().err.splitlines()  # stderr gets the same JSON lines
    assert [json.loads(line)["event"] for line in err if line.startswith("{")] == \
        ["task spawned", "pass failed"]


def test_a_pass_with_log_format_json_writes_only_json_lines(tmp_path: Path, monkeypatch,
                                                           capsys):
    for key in list(os.environ):
        if key.startswith(PREFIX):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(f"{PREFIX}AGENT_COMMAND", "true")
    monkeypatch.setenv(f"{PREFIX}LOG_FORMAT", "json")
    assert main(["run", "--once"]) == 0  # an empty backlog: nothing is spawned
    capsys.readouterr()
    (path,) = (tmp_path / "state" / "logs").glob("scheduler_*.log")
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert entries and all(set(e) >= {"time", "level", "event", "fields"} for e in entries)
    assert any(e["event"].startswith("pass") for e in entries), entries


def test_a_day_file_that_cannot_be_opened_turns_file_logging_off_for_that_day(
        tmp_path: Path, capsys):
    handler = DailyFileHandler(tmp_path)
    handler.setFormatter(TextFormatter())
    tomorrow = time.time() + DAY
    os.mkfifo(tmp_path / day_name(tomorrow))  # never opened: it would block the pass

    def emit(message: str, at: float) -> None:
        record = logging.makeLogRecord({"msg": message, "levelname": "INFO",
                                        "levelno": logging.INFO})
        record.created = at
        handler.emit(record)

    emit("today", time.time())
    emit("tomorrow, first", tomorrow)
    emit("tomorrow, second", tomorrow)
    handler.close()
    assert (tmp_path / day_name(time.time())).read_text().endswith("INFO    today\n")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1  # said once, not per line
    assert err[0].startswith(f"tinyscheduler: log file unusable, file logging off for "
                             f"{day_name(tomorrow)[10:18]}: state file ")
    assert "is a FIFO, not a regular file" in err[0]


def test_a_full_disk_costs_the_file_lines_with_one_warning(tmp_path: Path, capsys):
    handler = DailyFileHandler(tmp_path)
    handler.setFormatter(TextFormatter())
    working = handler._stream
    handler._stream = open("/dev/full", "w")  # noqa: SIM115 - every write fails: ENOSPC
    record = logging.makeLogRecord({"msg": "lost", "levelname": "INFO", "levelno": 20})
    handler.emit(record)
    handler.emit(record)
    assert capsys.readouterr().err == (
        f"warning: the scheduler log in {tmp_path} cannot be written (No space left on "
        "device); logging to stderr only\n")
    with contextlib.suppress(OSError):  # the line still in its buffer fails once more
        handler._stream.close()
    handler._stream = working
    handler.emit(logging.makeLogRecord({"msg": "back", "levelname": "INFO", "levelno": 20}))
    handler.close()
    assert (tmp_path / day_name(time.time())).read_text().endswith("INFO    back\n")


def test_retention_leaves_other_files_and_a_directory_named_like_a_log(tmp_path: Path):
    now = time.time()
    old = tmp_path / day_name(now - 30 * DAY)
    old.write_text("old\n")
    odd = tmp_path / day_name(now - 40 * DAY)
    odd.mkdir()  # unlink fails on it: left, and the sweep goes on
    other = tmp_path / "scheduler_notes.log"
    other.write_text("mine\n")
    assert remove_old_logs(tmp_path, 7, now) == [old.name]
    assert odd.is_dir() and other.exists()
    assert remove_old_logs(tmp_path / "missing", 7, now) == []


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_append_event_writes_one_line_and_ignores_a_missing_directory(tmp_path: Path, fmt):
    append_event(tmp_path, fmt, logging.WARNING, "result kept in the outbox", {"task": "3"})
    (path,) = tmp_path.iterdir()
    line = path.read_text()
    assert line.count("\n") == 1 and (path.stat().st_mode & 0o777) == 0o600
    if fmt == "json":
        assert json.loads(line)["fields"] == {"task": "3"}
    else:
        assert line.rstrip().endswith("WARNING result kept in the outbox task=3")
    append_event(tmp_path / "gone", fmt, logging.INFO, "nowhere to go", {})
    assert not (tmp_path / "gone").exists()
