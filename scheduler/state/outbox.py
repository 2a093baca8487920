"""Results a wrapper could not deliver, kept on disk until a pass delivers them.

One JSON file per attempt, ``outbox/<task_id>-<token>.json``, written atomically.
Delivery goes through :meth:`TaskSource.report`, which ignores a result whose token was
already applied, so delivering the same file twice changes nothing.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from scheduler import clock
from scheduler.fsutil import atomic_write, atomic_write_json, ensure_private_dir, read_private
from scheduler.names import check_name
from scheduler.sources.base import Result

log = logging.getLogger("tinyscheduler.outbox")
#: An outbox entry larger than this is not a result (results carry a capped summary).
MAX_ENTRY_BYTES = 1_000_000


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
    """Outbox files, oldest first; temp files skipped. Entries are judged by ``lstat``
    (a link, even a dangling one, or a FIFO is listed and then refused by :func:`load`,
    so the pass quarantines it; it is never followed or opened)."""
    try:
        entries = [e for e in os.scandir(outbox_dir)
                   if e.name.endswith(".json") and not e.name.startswith(".")]
    except FileNotFoundError:
        return []
    return [Path(e.path) for e in sorted(entries, key=_mtime)]


def _mtime(entry: os.DirEntry) -> float:
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return 0.0


def load(path: Path) -> Result:
    """Read one entry; raises ValueError (bad content) or OSError (unreadable, or not a
    regular file: :class:`~scheduler.errors.UnsafePath`)."""
    data = read_private(path, MAX_ENTRY_BYTES + 1)
    if len(data) > MAX_ENTRY_BYTES:
        raise ValueError(f"larger than {MAX_ENTRY_BYTES} bytes")
    try:
        return result_from_json(json.loads(data))
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON at line {exc.lineno} column {exc.colno}") from None
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"not a JSON document ({type(exc).__name__})") from None


def quarantine(path: Path, reason: str) -> Path:
    """Move an undeliverable entry aside (never delete a result) with its reason."""
    target_dir = path.parent / "corrupt"
    ensure_private_dir(target_dir)
    target = target_dir / path.name
    os.replace(path, target)
    atomic_write(target_dir / (path.name + ".reason"), (reason + "\n").encode(), durable=False)
    return target
