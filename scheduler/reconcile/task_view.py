"""One task as a document: what ``task show --json`` prints and the dashboard's
``/api/v1/tasks/ID`` returns (local store)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from scheduler.sources.base import task_to_dict
from scheduler.workspace import record


def task_document(settings, store, task_id: str) -> dict[str, Any]:
    """The task's fields, its workspace, the store's details, its blockers, the tasks it
    blocks and its history. Raises ``TaskNotFound``."""
    found = store.get(task_id)
    details = store.details(task_id)
    history = store.history(task_id)
    blocking_ids = store.blocking(task_id)
    related = store.current([*found.blocked_by, *blocking_ids])
    kept = record.read(settings.task_log_dir, found.id)
    data = task_to_dict(found)
    data.update(
        workspace=asdict(kept) if kept else None,
        **details,
        blockers=[brief(i, related.get(i)) for i in found.blocked_by],
        blocking=[brief(i, related.get(i)) for i in blocking_ids],
        history=history,
    )
    return data


def brief(task_id: str, other: Any) -> dict[str, Any]:
    if other is None:
        return {"id": task_id, "status": None, "title": None}
    return {"id": task_id, "status": other.status, "title": other.title}
