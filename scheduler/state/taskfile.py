"""The task file: the task's fields, written by the scheduler at spawn for the wrapper and
the agent (``TINYSCHEDULER_TASK_FILE``), read back by the wrapper.

Both sides import this module; it is the one place the format is defined.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scheduler import clock
from scheduler.fsutil import atomic_write_json, ensure_private_dir, read_private
from scheduler.sources.base import Task

FILE_NAME = "task.json"
#: The most of a task file that is read back.
MAX_BYTES = 16_000_000


def path_for(task_log_dir: Path, task_id: str) -> Path:
    """Where the task file of a (validated) task id lives."""
    return task_log_dir / task_id / FILE_NAME


def write(task_log_dir: Path, task: Task) -> Path:
    """Write the task's fields for the agent; called at spawn."""
    path = path_for(task_log_dir, task.id)
    ensure_private_dir(path.parent)
    data = {
        "id": task.id, "title": task.title, "description": task.description,
        "queue": task.queue, "assignee": task.assignee, "priority": task.priority,
        "created_at": clock.to_iso(task.created_at) if task.created_at else None,
        "blocked_by": list(task.blocked_by), "recipe": task.recipe,
        "attempts": task.attempts, "tags": list(task.tags), "last_error": task.last_error,
    }
    atomic_write_json(path, data, durable=False)
    return path


def read(task_log_dir: Path, task_id: str) -> dict[str, Any]:
    """The task file's fields, or an empty mapping when it is missing or unreadable."""
    try:
        data = json.loads(read_private(path_for(task_log_dir, task_id), MAX_BYTES))
    except (OSError, ValueError, RecursionError):  # a link or FIFO is never followed
        return {}
    return data if isinstance(data, dict) else {}


def update(task_log_dir: Path, task_id: str, **fields: Any) -> None:
    """Add ``fields`` to the task file (the wrapper records the workspace and branch)."""
    data = read(task_log_dir, task_id)
    if not data:
        return
    data.update(fields)
    atomic_write_json(path_for(task_log_dir, task_id), data, durable=False)
