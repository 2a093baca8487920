"""Logging to stderr and to a daily file ``LOG_DIR/scheduler_YYYYMMDD.log``.

``LOG_FORMAT=json`` writes one JSON object per line: time, level, event, fields. Pass
structured fields with ``log.info("event", extra={"fields": {...}})``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import TextIO

from scheduler.fsutil import open_private

LOGGER_NAME = "tinyscheduler"


def get_logger(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


def _utc(record: logging.LogRecord) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {}
        extra = "".join(f" {key}={_short(value)}" for key, value in fields.items())
        line = f"{_utc(record)} {record.levelname:<7} {record.getMessage()}{extra}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": _utc(record),
            "level": record.levelname,
            "event": record.getMessage(),
            "fields": getattr(record, "fields", None) or {},
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if (" " in text or not text) else text


class DailyFileHandler(logging.Handler):
    """Appends to ``scheduler_YYYYMMDD.log`` (UTC date), switching files at midnight and
    then deleting daily files older than ``retention_days`` (0 = keep them all).

    The first file is opened at once, so an unusable one (a link, a FIFO) stops the
    command with a clear error; one that turns unusable later costs that day's file
    lines, with one line on stderr saying why, never the pass."""

    def __init__(self, directory: Path, retention_days: int = 0) -> None:
        super().__init__()
        self.directory = directory
        self.retention_days = retention_days
        self._day = ""
        self._stream: TextIO | None = None
        self._failing = False  #: said once that the file cannot be written
        self._open(_day_of(time.time()))

    def emit(self, record: logging.LogRecord) -> None:
        day = _day_of(record.created)
        if day != self._day:
            try:
                self._open(day)
            except OSError as exc:
                print(f"tinyscheduler: log file unusable, file logging off for {day}: {exc}",
                      file=sys.stderr)
                return
        if self._stream is None:
            return
        try:
            self._stream.write(self.format(record) + "\n")
            self._stream.flush()
            self._failing = False
        except OSError as exc:  # a full or read-only disk: one line, not a traceback
            if not self._failing:
                sys.stderr.write(f"warning: the scheduler log in {self.directory} cannot be "
                                 f"written ({exc.strerror or exc}); logging to stderr only\n")
                self._failing = True
        except Exception:
            self.handleError(record)

    def _open(self, day: str) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._day = day
        path = self.directory / f"scheduler_{day}.log"
        fd = open_private(path, os.O_WRONLY | os.O_APPEND)  # never through a link
        self._stream = os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace")
        if self.retention_days:
            remove_old_logs(self.directory, self.retention_days, time.time())

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        super().close()


#: Daily scheduler log files: ``scheduler_YYYYMMDD.log``.
DAILY_NAME = re.compile(r"scheduler_(\d{8})\.log")


def _day_of(epoch: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(epoch))


def remove_old_logs(directory: Path, retention_days: int, now: float) -> list[str]:
    """Delete daily scheduler logs dated more than ``retention_days`` days before ``now``
    (by the date in the name; today's file is day 0). Returns the names deleted."""
    oldest_kept = _day_of(now - retention_days * 86_400)
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = DAILY_NAME.fullmatch(name)
        if match is not None and match.group(1) < oldest_kept:
            try:
                os.unlink(directory / name)  # unlink never follows a link
                removed.append(name)
            except OSError:
                pass
    return removed


def setup_logging(level: str, fmt: str, log_dir: Path | None,
                  retention_days: int = 0) -> None:
    """Configure the project logger once; safe to call again (replaces handlers)."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_dir is not None:
        handlers.append(DailyFileHandler(log_dir, retention_days))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    for noisy in ("httpx", "httpcore"):  # one INFO line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)


def append_event(log_dir: Path, fmt: str, level: int, message: str, fields: dict) -> None:
    """Write one line to today's scheduler log from a process that has no logging set up
    (a wrapper): formatted like the scheduler's own lines, in one ``O_APPEND`` write so it
    never interleaves with them. Failures are ignored: a log line never fails an attempt."""
    record = logging.makeLogRecord({
        "name": LOGGER_NAME, "levelno": level, "levelname": logging.getLevelName(level),
        "msg": message, "args": None, "fields": fields,
    })
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    day = time.strftime("%Y%m%d", time.gmtime(record.created))
    try:
        fd = os.open(log_dir / f"scheduler_{day}.log",
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (formatter.format(record) + "\n").encode())
        finally:
            os.close(fd)
    except OSError:
        pass
