"""Private directories and files: created 0700/0600 whatever the umask, never followed.

Every state path goes through here. Directories are created level by level, each 0700;
an existing state directory must be a real directory (not a symbolic link) owned by this
user and writable by nobody else, or :class:`~scheduler.errors.UnsafePath` says why (exit
code 2). Files are opened with ``O_NOFOLLOW`` and ``O_NONBLOCK`` (a FIFO planted at the
path can neither redirect nor hang a reader or writer), must be regular files of this
user, and are created 0600; an existing one with another mode is set to 0600 through
its descriptor.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from scheduler.errors import UnsafePath

#: Mode of every directory and file this project creates.
DIR_MODE = 0o700
FILE_MODE = 0o600

#: Flags added to every open of a state file: never follow a symbolic link at the last
#: component, never block on a FIFO, never take a terminal as controlling terminal.
SAFE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


# --- directories ----------------------------------------------------------------------------


def ensure_private_dir(path: Path) -> bool:
    """Create ``path`` and every missing parent 0700 (the umask does not matter), or check
    that the existing directory is private. True when it was created.

    Raises :class:`UnsafePath` when ``path`` is a symbolic link, not a directory, owned
    by another user, or writable by group or others."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        _make_dirs(Path(path))
        return True
    check_private_dir(path, info)
    return False


def check_private_dir(path: Path, info: os.stat_result | None = None) -> None:
    """Raise :class:`UnsafePath` unless ``path`` is a directory (not a link) of this user
    that nobody else can write to. A missing path is left to the caller."""
    if info is None:
        info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePath(f"state directory {path} is a symbolic link; state paths are never "
                         "followed: point the setting at the real directory, or replace "
                         f"the link with a directory (mkdir -m 700 {path})")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(f"state directory {path} exists but is not a directory "
                         f"({describe_kind(info)}); move it away")
    _check_owner_and_mode(path, info, "state directory", "700")


def _make_dirs(path: Path) -> None:
    missing = []
    level = path
    while not os.path.lexists(level):
        missing.append(level)
        if level.parent == level:
            break
        level = level.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:  # another process of ours made it first: judged below
            pass
        _tighten_dir(directory)


def _tighten_dir(path: Path) -> None:
    """0700 exactly, through a descriptor (a link swapped in is refused, not followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            check_private_dir(path)  # raises, naming what stands there
        raise
    try:
        info = os.fstat(fd)
        if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != DIR_MODE:
            os.fchmod(fd, DIR_MODE)
            info = os.fstat(fd)
        _check_owner_and_mode(path, info, "state directory", "700")
    finally:
        os.close(fd)


def _check_owner_and_mode(path: Path, info: os.stat_result, what: str, mode: str) -> None:
    uid = os.geteuid()
    if info.st_uid != uid:
        raise UnsafePath(f"{what} {path} is owned by uid {info.st_uid}, not by this user "
                         f"(uid {uid}); fix its owner (chown) or configure another path")
    if info.st_mode & 0o022:
        raise UnsafePath(f"{what} {path} is writable by group or others (mode "
                         f"{stat.S_IMODE(info.st_mode):04o}); fix it: chmod {mode} {path}")


def describe_kind(info: os.stat_result) -> str:
    """E.g. "a symbolic link", "a FIFO", "a directory", for error messages."""
    mode = info.st_mode
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a regular file"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- files ----------------------------------------------------------------------------------


def open_private(path: Path | str, flags: int, *, create: bool = True) -> int:
    """Open a state file without following a link or blocking on a FIFO; a descriptor.

    ``flags`` is the access mode plus e.g. ``O_APPEND``; ``O_CREAT`` is added when
    ``create`` (the file is then made 0600). The file must be a regular file of this user;
    a looser mode on an existing one is tightened to 0600 through the descriptor. Raises
    :class:`UnsafePath` (an ``OSError``) naming what stands at ``path``, FileNotFoundError
    when it is missing and not created."""
    all_flags = flags | SAFE_FLAGS | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, all_flags, FILE_MODE)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EWOULDBLOCK):
            raise _unsafe_file(path) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath(f"state file {path} is {describe_kind(info)}, not a regular file; "
                             "move it away")
        if info.st_uid != os.geteuid():
            _check_owner_and_mode(Path(path), info, "state file", "600")
        if stat.S_IMODE(info.st_mode) != FILE_MODE:  # the umask's doing, or an old file
            os.fchmod(fd, FILE_MODE)
        if (flags & os.O_NONBLOCK) == 0:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unsafe_file(path: Path | str) -> UnsafePath:
    try:
        kind = describe_kind(os.lstat(path))
    except OSError:
        kind = "not a regular file"
    return UnsafePath(f"state file {path} is {kind}, not a regular file; it is never "
                      "followed or opened: move it away")


def read_private(path: Path | str, limit: int | None = None) -> bytes:
    """The content of a state file (at most ``limit`` bytes), never through a link, never
    blocking on a FIFO. Raises FileNotFoundError, :class:`UnsafePath` or OSError."""
    fd = open_private(path, os.O_RDONLY, create=False)
    try:
        chunks = []
        remaining = limit if limit is not None else -1
        while remaining != 0:
            chunk = os.read(fd, 65536 if remaining < 0 else min(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            if remaining > 0:
                remaining -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically: temp file in the same directory, write,
    flush, fsync, rename, fsync the directory. Readers see the old or the new file, never
    a torn one; a link at ``path`` is replaced, never followed. The temp name starts with
    ``.tmp-`` so directory scans can skip it; it is unique per call (pid plus a random
    suffix), so threads and processes never share one."""
    tmp = write_temp(path, data, durable=durable)
    try:
        replace_with(tmp, path)
    except BaseException:
        discard(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def write_temp(path: Path, data: bytes, *, durable: bool = True) -> Path:
    """The first half of :func:`atomic_write`: ``data`` in a new private temp file next to
    ``path`` (fsynced when ``durable``); its path. The caller renames or discards it."""
    tmp = path.parent / f".tmp-{path.name}.{os.getpid()}.{os.urandom(6).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            if stat.S_IMODE(os.fstat(handle.fileno()).st_mode) != FILE_MODE:
                os.fchmod(handle.fileno(), FILE_MODE)  # a umask like 0o277 took bits away
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
    except BaseException:
        discard(tmp)
        raise
    return tmp


def replace_with(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` over ``path`` (a directory there is :class:`UnsafePath`)."""
    try:
        os.replace(tmp, path)
    except IsADirectoryError:
        raise UnsafePath(f"state file {path} is a directory, not a regular file; "
                         "move it away") from None


def discard(tmp: Path) -> None:
    """Remove a temp file that will not be renamed (gone already is fine)."""
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


class HeldFiles:
    """Descriptors of files already replaced or removed, kept open so that the file
    system frees them when :meth:`close` is called, off the caller's way: freeing a file
    (its last reference going) costs about a millisecond on some file systems. Beyond
    ``limit`` descriptors the oldest is closed at once."""

    def __init__(self, limit: int = 16) -> None:
        self.limit = limit
        self._fds: list[int] = []

    def keep(self, fd: int) -> None:
        self._fds.append(fd)
        while len(self._fds) > self.limit:
            os.close(self._fds.pop(0))

    def unlink(self, path: Path) -> None:
        """Remove ``path`` now (gone already is fine), holding it open until
        :meth:`close` (a link, FIFO or directory there is removed, or refused, without
        being held)."""
        try:
            self.keep(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                              | os.O_CLOEXEC))
        except OSError:
            pass
        Path(path).unlink(missing_ok=True)

    def close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)


def atomic_write_json(path: Path, value: object, *, durable: bool = True) -> None:
    atomic_write(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode(),
                 durable=durable)


def append_private(path: Path, data: bytes) -> None:
    """Append ``data`` to a private state file (created 0600), never through a link."""
    fd = open_private(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


# --- kernel locks ---------------------------------------------------------------------------


class KernelFlock:
    """An exclusive flock on a private lock file, dropped by the kernel when every process
    sharing the descriptor has exited (SIGKILL and OOM included). The file is created 0600
    and kept on release; it is opened without following a link (a link, FIFO or directory
    at the path is :class:`UnsafePath`). If the file is unlinked and recreated while we
    wait (stale lock cleanup), the lock is taken on the file that is at the path now."""

    def __init__(self, path: Path, on_acquired: Callable[[int], None] | None = None) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._on_acquired = on_acquired

    @property
    def is_locked(self) -> bool:
        return self._fd is not None

    def fileno(self) -> int | None:
        return self._fd

    def acquire(self, timeout: float = 0.0, poll_interval: float = 0.005) -> bool:
        """Try for up to ``timeout`` seconds (0 = one attempt). True when held."""
        if self._fd is not None:
            return True
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            fd = open_private(self.path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
            except BaseException:
                os.close(fd)
                raise
            else:
                if _still_at(self.path, fd):
                    self._fd = fd
                    if self._on_acquired is not None:
                        self._on_acquired(fd)
                    return True
                os.close(fd)  # unlinked under us: lock the file that is there now
                continue
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_interval)

    def release(self) -> None:
        """Unlock and close (the file stays)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


def _still_at(path: Path, fd: int) -> bool:
    info = os.fstat(fd)
    try:
        current = os.lstat(path)
    except FileNotFoundError:
        return False
    return info.st_nlink > 0 and (current.st_dev, current.st_ino) == (info.st_dev, info.st_ino)


def kernel_flock(path: Path, on_acquired: Callable[[int], None] | None = None) -> KernelFlock:
    """The kernel lock on ``path`` used by the scheduler lock and the liveness locks."""
    return KernelFlock(path, on_acquired)
