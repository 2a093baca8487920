"""Private directories and crash-safe file writes, shared by leases, outbox and state files."""

from __future__ import annotations

import json
import os
from pathlib import Path

#: Mode of every directory and file this project creates.
DIR_MODE = 0o700
FILE_MODE = 0o600


def ensure_private_dir(path: Path) -> bool:
    """Create ``path`` (and parents) 0700 if missing. Returns True when it was created."""
    if path.is_dir():
        return False
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)
    return True


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically: temp file in the same directory, write,
    flush, fsync, rename, fsync the directory. Readers see the old or the new file, never
    a torn one. The temp name starts with ``.tmp-`` so directory scans can skip it; it is
    unique per call (pid plus a random suffix), so threads and processes never share one."""
    tmp = path.parent / f".tmp-{path.name}.{os.getpid()}.{os.urandom(6).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_json(path: Path, value: object, *, durable: bool = True) -> None:
    atomic_write(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode(),
                 durable=durable)


def read_private(path: Path) -> bytes:
    """Read a state file without following a symlink at its final component, and without
    hanging on a FIFO or device planted in its place (OSError: not a regular file)."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        return handle.read()


def kernel_flock(path: Path, on_acquired):
    """A filelock ``UnixFileLock`` on ``path`` that the kernel drops when its holder dies:
    flock only (never a soft lock, which would be deleted on release and go stale on a
    crash), per object (not a per-path singleton, not thread-local), the file kept and
    created 0600. ``on_acquired(fd)`` receives the locked descriptor."""
    from filelock import UnixFileLock  # only the commands that lock pay for the import

    return UnixFileLock(path, mode=FILE_MODE, thread_local=False, is_singleton=False,
                        fallback_to_soft=False, preserve_lock_file=True,
                        on_acquired=on_acquired)
