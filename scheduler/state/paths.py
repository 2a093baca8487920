"""The state paths, and the check that each existing one is safe to use.

A state directory must be a real directory (never a symbolic link, which would be
followed to wherever it points), owned by the user running tinyscheduler, and writable
by nobody else. A state file of which there is one (the lock, the pause file, the pass
records, the task store, today's log) must be a regular file of that user. Commands
check them all before they touch anything (:func:`check_state_paths`); every later
creation or open goes through :mod:`scheduler.fsutil`, which checks again. (Files of
which there are many -- leases, outbox entries -- are judged one by one: moved aside
into ``corrupt/``, never followed.)
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from scheduler.errors import UnsafePath
from scheduler.fsutil import check_private_dir, describe_kind, ensure_private_dir

#: Directories created when first needed, not by ``validate-config --fix``.
ON_DEMAND = frozenset({"corrupt lease directory", "task log directory",
                       "corrupt outbox directory", "agent holds directory"})


def state_dirs(settings) -> dict[str, Path]:
    """Every directory tinyscheduler writes to, by what it is for (duplicates removed)."""
    wanted = {
        "state directory": settings.state_dir,
        "running directory": settings.running_dir,
        "corrupt lease directory": settings.running_dir / "corrupt",
        "log directory": settings.log_dir,
        "task log directory": settings.task_log_dir,
        "outbox directory": settings.outbox_dir,
        "corrupt outbox directory": settings.outbox_dir / "corrupt",
        "agent holds directory": settings.throttle_dir,
        "lock file directory": settings.lock_file.parent,
        "tasks database directory": settings.tasks_db.parent,
    }
    seen: set[Path] = set()
    unique = {}
    for label, path in wanted.items():
        if path not in seen:
            seen.add(path)
            unique[label] = path
    return unique


def state_files(settings) -> dict[str, Path]:
    """The single state files, by what they are for."""
    day = time.strftime("%Y%m%d", time.gmtime())
    return {
        "scheduler lock": settings.lock_file,
        "lease store mutex": settings.running_dir / ".store.lock",
        "scheduler lock holder": settings.lock_file.with_name(settings.lock_file.name
                                                              + ".holder"),
        "pause file": settings.pause_file,
        "last pass record": settings.last_pass_file,
        "metrics file": settings.metrics_file,
        "task store": settings.tasks_db,
        "task store journal": Path(f"{settings.tasks_db}-wal"),
        "task store shared memory": Path(f"{settings.tasks_db}-shm"),
        "scheduler log": settings.log_dir / f"scheduler_{day}.log",
    }


def problems(settings) -> list[tuple[str, Path, str | None]]:
    """(label, path, problem or None) for every state directory; None = fine or missing.
    Then a (label, path, problem) for each single state file that is not a regular file
    of this user."""
    found: list[tuple[str, Path, str | None]] = []
    for label, path in state_dirs(settings).items():
        if not os.path.lexists(path):
            found.append((label, path, None))
            continue
        try:
            check_private_dir(path)
        except UnsafePath as exc:
            found.append((label, path, str(exc)))
            continue
        found.append((label, path, None))
    for label, path in state_files(settings).items():
        problem = _file_problem(label, path)
        if problem is not None:
            found.append((label, path, problem))
    return found


def _file_problem(label: str, path: Path) -> str | None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{label} {path} cannot be examined: {exc}"
    if not stat.S_ISREG(info.st_mode):
        return (f"{label} {path} is {describe_kind(info)}, not a regular file; state files "
                "are never followed: move it away")
    if info.st_uid != os.geteuid():
        return (f"{label} {path} is owned by uid {info.st_uid}, not by this user "
                f"(uid {os.geteuid()}); fix its owner (chown)")
    return None


def check_state_paths(settings) -> None:
    """Raise :class:`UnsafePath` for the first existing state directory that is a link,
    not a directory, foreign-owned or writable by others, or single state file that is
    not a regular file of this user."""
    for _label, _path, problem in problems(settings):
        if problem is not None:
            raise UnsafePath(problem)


def prepare_state_dirs(settings) -> None:
    """Check every state directory, then create the ones a pass writes to (each 0700)."""
    check_state_paths(settings)
    for path in (settings.state_dir, settings.running_dir, settings.log_dir,
                 settings.task_log_dir, settings.outbox_dir, settings.lock_file.parent):
        ensure_private_dir(path)
