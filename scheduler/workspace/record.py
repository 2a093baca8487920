"""The workspace record: what the wrapper made for a task and in which state it is.

One small JSON file per task beside its logs (``logs/tasks/<id>/workspace.json``), written
atomically. A workspace is usable only once its record says ``ready`` for that path: a
directory without one is half-made (a crash during creation) and is repaired, never used.
The record keeps the base commit of a worktree so a later merge can tell "no changes".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from scheduler import clock
from scheduler.fsutil import atomic_write_json, ensure_private_dir, read_private
from scheduler.names import check_name

FILE_NAME = "workspace.json"
#: Record states.
CREATING, READY, REMOVED = "creating", "ready", "removed"


@dataclass(frozen=True)
class Record:
    task_id: str
    mode: str  #: worktree | directory
    path: str
    state: str = CREATING
    branch: str | None = None
    base_commit: str | None = None
    target_branch: str | None = None
    repo_dir: str | None = None
    after_create_done: bool = False
    attempt: int = 0  #: the last attempt that used it
    outcome: str | None = None  #: how that attempt ended
    created_at: str = ""
    updated_at: str = ""
    note: str = ""  #: why it was kept, or what cleanup left
    #: The agent succeeded and its branch is being merged: a crash leaves this set, and
    #: the next attempt finishes the merge instead of running the agent again.
    merging: bool = False

    def changed(self, **fields: object) -> Record:
        return replace(self, **fields, updated_at=clock.to_iso(clock.now()))  # type: ignore[arg-type]


def path_for(task_log_dir: Path, task_id: str) -> Path:
    return task_log_dir / check_name(task_id) / FILE_NAME


def read(task_log_dir: Path, task_id: str) -> Record | None:
    """The task's record, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads(read_private(path_for(task_log_dir, task_id)))
        known = {name: data[name] for name in Record.__dataclass_fields__ if name in data}
        return Record(**known)
    except (OSError, ValueError, TypeError):
        return None


def write(task_log_dir: Path, record: Record) -> Record:
    path = path_for(task_log_dir, record.task_id)
    ensure_private_dir(path.parent)
    if not record.created_at:
        record = replace(record, created_at=clock.to_iso(clock.now()))
    if not record.updated_at:
        record = replace(record, updated_at=record.created_at)
    atomic_write_json(path, asdict(record))
    return record


def all_records(task_log_dir: Path) -> list[Record]:
    """Every task's record, in task-id order."""
    found = []
    try:
        entries = sorted(task_log_dir.iterdir())
    except OSError:
        return []
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            record = read(task_log_dir, entry.name) if _valid(entry.name) else None
            if record is not None:
                found.append(record)
    return found


def _valid(name: str) -> bool:
    from scheduler.names import is_valid_name

    return is_valid_name(name)
