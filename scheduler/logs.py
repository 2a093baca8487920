"""Logging to stderr and to a daily file ``LOG_DIR/scheduler_YYYYMMDD.log``.

``LOG_FORMAT=json`` writes one JSON object per line: time, level, event, fields. Pass
structured fields with ``log.info("event", extra={"fields": {...}})``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TextIO

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
    """Appends to ``scheduler_YYYYMMDD.log`` (UTC date), switching files at midnight."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory
        self._day = ""
        self._stream: TextIO | None = None
        self._failing = False  #: said once that the file cannot be written

    def emit(self, record: logging.LogRecord) -> None:
        try:
            day = time.strftime("%Y%m%d", time.gmtime(record.created))
            if day != self._day or self._stream is None:
                self._stream = self._open(day)
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

    def _open(self, day: str) -> TextIO:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        path = self.directory / f"scheduler_{day}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._day = day
        return os.fdopen(fd, "a", encoding="utf-8")

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        super().close()


def setup_logging(level: str, fmt: str, log_dir: Path | None) -> None:
    """Configure the project logger once; safe to call again (replaces handlers)."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_dir is not None:
        handlers.append(DailyFileHandler(log_dir))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    for noisy in ("httpx", "httpcore"):  # one INFO line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
