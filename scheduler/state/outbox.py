"""Results a wrapper could not deliver, kept on disk until a pass delivers them.

One JSON file per attempt, ``outbox/<task_id>-<token>.json``, written atomically.
Delivery goes through :meth:`TaskSource.report`, which ignores a result whose token was
already applied, so delivering the same file twice changes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import asdict
from pathlib import Path

from scheduler import clock
from scheduler.fsutil import atomic_write_json, ensure_private_dir, read_private
from scheduler.names import check_name
from scheduler.sources.base import Result

log = logging.getLogger("tinyscheduler.outbox")


def result_to_json(result: Result) -> dict:
    data = asdict(result)
    data["finished_at"] = clock.to_iso(result.finished_at) if result.finished_at else None
    return data


def result_from_json(data: dict) -> Result:
    """Decode an outbox entry; raises ValueError naming what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    fields = dict(data)
    try:
        check_name(fields.get("task_id"), "task id")
        check_name(fields.get("agent"), "agent name")
    except Exception as exc:
        raise ValueError(str(exc)) from None
    finished = fields.get("finished_at")
    fields["finished_at"] = clock.from_iso(finished) if finished else None
    try:
        return Result(**fields)
    except TypeError as exc:
        raise ValueError(f"unexpected fields: {exc}") from None


def path_for(outbox_dir: Path, task_id: str, token: str) -> Path:
    """Where the result of the attempt ``token`` of ``task_id`` is kept."""
    return outbox_dir / f"{check_name(task_id)}-{check_name(token, 'token')}.json"


def write(outbox_dir: Path, result: Result) -> Path:
    ensure_private_dir(outbox_dir)
    path = path_for(outbox_dir, result.task_id, result.token)
    atomic_write_json(path, result_to_json(result))
    return path


def pending(outbox_dir: Path) -> list[Path]:
    """Outbox files, oldest first; temp files skipped. Only regular files (by lstat): a
    symlink, FIFO or directory planted here is logged and left alone, never followed,
    opened or allowed to stop the others."""
    found: list[tuple[float, str]] = []
    try:
        scan = os.scandir(outbox_dir)
    except FileNotFoundError:
        return []
    with scan:
        for entry in scan:
            if not entry.name.endswith(".json") or entry.name.startswith("."):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(info.st_mode):
                log.warning("outbox entry %s is not a regular file; left alone", entry.path)
                continue
            found.append((info.st_mtime, entry.path))
    return [Path(path) for _, path in sorted(found)]


def load(path: Path) -> Result:
    """Read one entry; raises ValueError (bad content) or OSError."""
    try:
        return result_from_json(json.loads(read_private(path)))
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON at line {exc.lineno} column {exc.colno}") from None


def quarantine(path: Path, reason: str) -> Path:
    """Move an undeliverable entry aside (never delete a result) with its reason."""
    target_dir = path.parent / "corrupt"
    ensure_private_dir(target_dir)
    target = target_dir / path.name
    os.replace(path, target)
    (target_dir / (path.name + ".reason")).write_text(reason + "\n")
    return target
