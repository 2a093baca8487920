"""Free space where workspaces are made (MIN_FREE_DISK_MB)."""

from __future__ import annotations

import os
from pathlib import Path


def free_mb(path: Path) -> int | None:
    """Free megabytes (for an unprivileged user) on the file system holding ``path`` (or its
    nearest existing parent); None when it cannot be measured."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        info = os.statvfs(probe)
    except OSError:
        return None
    return info.f_bavail * info.f_frsize // (1024 * 1024)


def shortage(path: Path, minimum_mb: int) -> str | None:
    """Why there is too little space at ``path``, or None when there is enough (or no
    minimum is set)."""
    if minimum_mb <= 0:
        return None
    free = free_mb(path)
    if free is None or free >= minimum_mb:
        return None
    return f"{free} MB free at {path}, below MIN_FREE_DISK_MB={minimum_mb}"
