"""What every workspace mode shares: the workspace, the attempt's context, the error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.errors import TinySchedulerError
from scheduler.names import check_name
from scheduler.workspace.process import Tick


class WorkspaceError(TinySchedulerError):
    """The workspace could not be made or used: the attempt ends ``launch_failed``."""


class LowDisk(WorkspaceError):
    """Too little free disk for a new workspace: the attempt is given back unstarted."""


@dataclass(frozen=True)
class Workspace:
    """A task's prepared workspace."""

    task_id: str
    mode: str  #: worktree | directory
    path: Path
    branch: str | None = None  #: worktree mode
    base_commit: str | None = None  #: worktree mode: the target's commit it started from
    created: bool = False  #: made by this attempt (after_create is due)


@dataclass
class Context:
    """One attempt as the workspace code sees it."""

    settings: Any
    task_id: str
    attempt: int
    title: str = ""
    log_write: Callable[[bytes], None] | None = None  #: hook output: the attempt log
    tick: Tick | None = None  #: called every HEARTBEAT_SEC during long steps
    note: Callable[[str], None] = field(default=lambda _text: None)

    @property
    def tick_every(self) -> float:
        return float(self.settings.heartbeat_sec)


def workspace_path(settings: Any, task_id: str) -> Path:
    """``WORKSPACES_DIR/task-<id>``, built only from a validated task id."""
    return settings.workspaces_dir / f"task-{check_name(task_id)}"


def aside_path(settings: Any, kind: str, task_id: str, label: str) -> Path:
    """Where a workspace that may hold work is moved instead of deleted
    (``WORKSPACES_DIR/.kept/task-<id>-<label>``)."""
    return settings.workspaces_dir / f".{kind}" / f"task-{check_name(task_id)}-{label}"
