"""Leases: one per task in flight, and the liveness lock that proves its wrapper alive.

:class:`LeaseStore` is the only code that knows a lease is a file (``task_<id>.json`` in
RUNNING_DIR). Writes are crash-safe: a lease is published whole (temp file, fsync, then
``link``/``rename``), so a reader sees the old or the new lease, never a torn one.

Compare-and-set operations (:meth:`LeaseStore.adopt`, :meth:`~LeaseStore.heartbeat`,
:meth:`~LeaseStore.delete`, :meth:`~LeaseStore.update`) run under a short store-wide mutex,
so a wrapper whose lease was reclaimed can never write it back over a newer one (fencing).

This module imports only the standard library (no psutil).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from scheduler import bounds, clock
from scheduler.errors import AlreadyLeased, LeaseError
from scheduler.fsutil import (
    FILE_MODE,
    SAFE_FLAGS,
    HeldFiles,
    atomic_write,
    describe_kind,
    discard,
    ensure_private_dir,
    fsync_dir,
    kernel_flock,
    open_private,
    replace_with,
    write_temp,
)
from scheduler.names import check_name, is_valid_name

STARTING, RUNNING, FINISHING = "starting", "running", "finishing"
#: The agent succeeded and its branch waits for (or is in) the merge into the target.
MERGING = "merging"
STATES = (STARTING, RUNNING, MERGING, FINISHING)
LEASE_VERSION = 1

#: How long :meth:`LeaseStore.adopt` waits for the liveness lock: the scheduler's probe
#: holds it for microseconds, never longer.
ADOPT_LOCK_WAIT_SEC = 2.0
#: How long a store operation waits for the store mutex before giving up.
MUTEX_WAIT_SEC = 10.0
#: How many descriptors of replaced lease files a store keeps before closing the oldest.
MAX_RETIRED = 16

LEASE_NAME = re.compile(r"task_(.+)\.json")
LOCK_NAME = re.compile(r"task_(.+)\.lock")
CORRUPT_DIR = "corrupt"
MUTEX_NAME = ".store.lock"

log = logging.getLogger("tinyscheduler.leases")

_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_TIME_FIELDS = ("started_at", "heartbeat")
_KNOWN_FIELDS = (
    "task_id", "agent", "state", "spawn_token", "started_at", "heartbeat", "host", "attempt",
    "queue", "recipe", "pid", "pid_started_at", "agent_pid", "agent_started_at",
    "scheduler_pid", "heartbeat_sec", "stale_multiplier", "metadata", "version",
    "boot_id", "started_mono", "heartbeat_mono",
)
_KNOWN_SET = frozenset(_KNOWN_FIELDS)


class LeaseDecodeError(LeaseError):
    """A lease document is not valid JSON or does not follow the lease schema."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


@dataclass(frozen=True)
class Lease:
    """One task in flight. Times are timezone-aware UTC. Change it with ``dataclasses.replace``."""

    task_id: str
    agent: str
    state: str
    spawn_token: str
    started_at: datetime
    heartbeat: datetime
    host: str
    attempt: int = 1
    queue: str | None = None
    recipe: str | None = None
    pid: int | None = None
    pid_started_at: float | None = None
    agent_pid: int | None = None
    agent_started_at: float | None = None
    scheduler_pid: int | None = None
    heartbeat_sec: int = 15
    stale_multiplier: int = 4
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Fields this version does not know, kept so a rewrite does not drop them.
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = LEASE_VERSION
    #: The host's boot and its monotonic clock at the start and the last heartbeat: this
    #: host judges its own leases by these, so a step of the wall clock changes nothing.
    boot_id: str | None = None
    started_mono: float | None = None
    heartbeat_mono: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON document: unknown fields first, then every known field."""
        data: dict[str, Any] = dict(self.extra)
        for name in _KNOWN_FIELDS:
            value = getattr(self, name)
            data[name] = clock.to_iso(value) if name in _TIME_FIELDS else value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lease:
        """Decode and validate; raise :class:`LeaseDecodeError` naming the bad field."""
        if not isinstance(data, dict):
            raise LeaseDecodeError(f"expected a JSON object, got {type(data).__name__}")
        values: dict[str, Any] = {}
        for name in ("task_id", "agent"):
            value = data.get(name)
            if not is_valid_name(value):
                raise _bad(name, value, "a name of 1-64 characters from A-Z a-z 0-9 _ . -")
            values[name] = value
        state = data.get("state")
        if state not in STATES:
            raise _bad("state", state, "one of " + ", ".join(STATES))
        values["state"] = state
        # Leases written before spawn tokens existed carry none; "" never matches a token.
        values["spawn_token"] = _str(data, "spawn_token", default="")
        for name in _TIME_FIELDS:
            values[name] = _time(data, name)
        values["host"] = _str(data, "host")
        if not values["host"]:
            raise _bad("host", "", "a non-empty string")
        values["attempt"] = _int(data, "attempt", 1, minimum=1)
        values["queue"] = _opt_str(data, "queue")
        values["recipe"] = _opt_str(data, "recipe")
        for name in ("pid", "agent_pid", "scheduler_pid"):
            values[name] = _opt_int(data, name)
        for name in ("pid_started_at", "agent_started_at"):
            values[name] = _opt_float(data, name)
        # the bounds the settings enforce (one table), so interval x multiplier stays a
        # valid timedelta and every lease a scheduler writes decodes
        values["heartbeat_sec"] = _int(data, "heartbeat_sec", 15,
                                       minimum=bounds.HEARTBEAT_SEC_BOUNDS.low,
                                       maximum=bounds.HEARTBEAT_SEC_BOUNDS.high)
        values["stale_multiplier"] = _int(data, "stale_multiplier", 4,
                                          minimum=bounds.STALE_MULTIPLIER_BOUNDS.low,
                                          maximum=bounds.STALE_MULTIPLIER_BOUNDS.high)
        metadata = data.get("metadata", {})
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict):
            raise _bad("metadata", metadata, "a JSON object")
        values["metadata"] = metadata
        values["version"] = _int(data, "version", LEASE_VERSION, minimum=1)
        values["boot_id"] = _opt_str(data, "boot_id")
        for name in ("started_mono", "heartbeat_mono"):
            values[name] = _opt_seconds(data, name)
        unknown = data.keys() - _KNOWN_SET
        values["extra"] = {k: data[k] for k in data if k in unknown} if unknown else {}
        return cls(**values)


# --- field decoders ---------------------------------------------------------------------


def _bad(name: str, value: object, accepted: str) -> LeaseDecodeError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return LeaseDecodeError(f"field {name!r} is {shown}; expected {accepted}", name)


def _str(data: dict[str, Any], name: str, default: str | None = None) -> str:
    value = data.get(name, default)
    if not isinstance(value, str):
        raise _bad(name, value, "a string")
    return value


def _opt_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise _bad(name, value, "a string or null")
    return value


def _int(data: dict[str, Any], name: str, default: int, *, minimum: int,
         maximum: int = 2**31) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise _bad(name, value, f"a whole number from {minimum} to {maximum}")
    return value


def _opt_int(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise _bad(name, value, "a process id >= 1 or null")
    return value


def _opt_float(data: dict[str, Any], name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise _bad(name, value, "a number of seconds since the epoch or null")
    return float(value)


def _opt_seconds(data: dict[str, Any], name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or value != value
            or not 0 <= value < 1e12):
        raise _bad(name, value, "a reading of the monotonic clock (seconds) or null")
    return float(value)


def _time(data: dict[str, Any], name: str) -> datetime:
    value = data.get(name)
    try:
        return clock.from_iso(value)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise _bad(name, value, "an ISO 8601 time such as 2025-01-31T12:00:00.000Z") from None


def _identity(info: os.stat_result) -> tuple[int, ...] | None:
    """What tells one version of a lease file from another without reading it: device,
    inode, size, change and modification times (a lease is never written in place; each
    write is a new file renamed over it). None for anything but a regular file, which is
    always read (and rejected) again. A reused inode with the same size and the same
    nanosecond times could still look the same; what the pass does with a lease it
    misjudged that way is safe: every reclaim is a compare-and-set on the file itself."""
    if not stat.S_ISREG(info.st_mode):
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _names_file(path: Path, fd: int) -> bool:
    """Does ``path`` still name the file open at ``fd``?"""
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def encode(lease: Lease) -> bytes:
    """The bytes of a lease file (compact JSON, sorted keys, one line)."""
    return (json.dumps(lease.to_json(), sort_keys=True, separators=(",", ":")) + "\n").encode()


# --- the liveness lock ------------------------------------------------------------------


class LivenessLock:
    """The wrapper's ``task_<id>.lock``: held for the wrapper's whole life, dropped by the
    kernel when every process sharing the locked descriptor has exited.

    A flock belongs to the open file description, so a child that inherits a duplicate of
    :meth:`fileno` keeps the lock alive if the wrapper dies first.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._lock = kernel_flock(self.path, self._remember_fd)

    def _remember_fd(self, fd: int) -> None:
        self._fd = fd

    def acquire(self, timeout: float) -> bool:
        """Try for up to ``timeout`` seconds (0 = one attempt). True when held."""
        ensure_private_dir(self.path.parent)
        return self._lock.acquire(timeout=timeout, poll_interval=0.005)

    def release(self) -> None:
        """Unlock and close if held. The unlock drops the flock for every process sharing
        the descriptor (children too); only exiting (closing) leaves it to the others."""
        if self._lock.is_locked:
            self._lock.release()
        self._fd = None

    def fileno(self) -> int | None:
        """The locked descriptor, or None when not held."""
        return self._fd if self._lock.is_locked else None

    @property
    def is_locked(self) -> bool:
        return bool(self._lock.is_locked)

    def __enter__(self) -> LivenessLock:
        if not self.acquire(ADOPT_LOCK_WAIT_SEC):
            raise LeaseError(f"liveness lock {self.path} is held by another process")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def probe_lock(path: str | Path) -> bool:
    """True when some process holds a flock on ``path``; False when free or missing.

    Uses fcntl directly: this is a one-shot test run once per lease per pass (~15 µs),
    where a full acquire/release costs more, too slow for 10,000 leases.
    """
    try:
        fd = os.open(path, os.O_RDWR | SAFE_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR):  # nobody can lock it (never followed)
            return False
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return True
        raise
    finally:
        os.close(fd)  # closing also drops the flock we may have taken
    return False


# --- the store --------------------------------------------------------------------------


class LeaseStore:
    """Leases of RUNNING_DIR. Safe to use from many processes and threads at once."""

    def __init__(self, running_dir: Path) -> None:
        self.running_dir = Path(running_dir)
        self._dir_str = str(self.running_dir)
        self._dir_ready = False
        #: What :meth:`list` decoded last time, by file name: (identity, lease). A file
        #: whose identity is unchanged is not read again (see :func:`_identity`).
        self._decoded: dict[str, tuple[tuple[int, ...], Lease]] = {}
        #: Descriptors of lease files this store replaced or removed, still open: see
        #: :meth:`close_retired`.
        self._retired = HeldFiles(MAX_RETIRED)

    # paths

    def _lease_path(self, task_id: str) -> Path:
        return self.running_dir / f"task_{check_name(task_id)}.json"

    def lock_path(self, task_id: str) -> Path:
        """Path of the task's liveness lock file."""
        return self.running_dir / f"task_{check_name(task_id)}.lock"

    def _ensure_dir(self) -> None:
        if not self._dir_ready:
            ensure_private_dir(self.running_dir)
            self._dir_ready = True

    @contextmanager
    def _mutex(self) -> Iterator[None]:
        """Serialise the commit step of compare-and-set operations across processes.

        A flock held only to check that a lease file is the one that was read and to
        rename (or unlink) it: tens of microseconds, the fsyncs happen before and after.
        Polled (from 0.1 ms, doubling to 2 ms) with a deadline, so a stopped process
        cannot hang a pass.
        """
        self._ensure_dir()
        fd = open_private(self.running_dir / MUTEX_NAME, os.O_RDWR)
        try:
            deadline = time.monotonic() + MUTEX_WAIT_SEC
            delay = 0.0001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LeaseError(
                            f"lease store {self.running_dir} is locked by another process for "
                            f"more than {MUTEX_WAIT_SEC:.0f} s"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.002)
            yield
        finally:
            os.close(fd)

    # reading

    def _load(self, path: str, *, quarantine: bool = True) -> Lease | None:
        """Read and decode one lease file; quarantine it when it is not a valid lease."""
        fd, lease = self._open_and_load(path, quarantine=quarantine)
        if fd is not None:
            os.close(fd)
        return lease

    def _open_and_load(self, path: str, *,
                       quarantine: bool = True) -> tuple[int | None, Lease | None]:
        """:meth:`_load`, also returning the file's descriptor, still open, when it held a
        valid lease (the caller closes it): while it is open, the file's inode cannot be
        reused, so "the path still names this inode" means "the file is unchanged"."""
        try:
            fd = os.open(path, _OPEN_READ)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._reject(quarantine, path,
                             "a symbolic link, not a lease file (not followed)", None)
                return None, None
            raise
        # The descriptor stays open until the verdict: while it is open the file's inode
        # cannot be reused, so the quarantine's identity check can never mistake a new
        # lease (created after this one was removed) for the bad file read here.
        lease = None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                self._reject(quarantine, path, "not a regular file", info)
                return None, None
            raw = _read_all(fd, info.st_size)
            try:
                lease = Lease.from_json(json.loads(raw))
            except (ValueError, RecursionError, LeaseDecodeError) as exc:  # JSON, UTF-8, schema
                reason = (exc.reason if isinstance(exc, LeaseDecodeError)
                          else f"invalid JSON: {exc}")
                self._reject(quarantine, path, reason, info)
                return None, None
            if os.path.basename(path) != f"task_{lease.task_id}.json":
                self._reject(quarantine, path, f"field 'task_id' is {lease.task_id!r}, which "
                             "does not match the file name", info)
                lease = None
                return None, None
        finally:
            if lease is None:
                os.close(fd)
        return fd, lease

    def read(self, task_id: str, *, quarantine: bool = True) -> Lease | None:
        """The task's lease, or None when there is none (or it was corrupt: quarantined,
        unless ``quarantine=False`` for a reader that changes nothing)."""
        return self._load(str(self._lease_path(task_id)), quarantine=quarantine)

    def list(self, *, quarantine: bool = True) -> list[Lease]:
        """Every valid lease, sorted by task id. One directory scan, one read per file;
        a bad file is quarantined and logged, never raised (``quarantine=False``, for a
        dry run: only logged, left where it is)."""
        leases: list[Lease] = []
        decoded: dict[str, tuple[tuple[int, ...], Lease]] = {}
        try:
            scan = os.scandir(self.running_dir)
        except FileNotFoundError:
            self._decoded = decoded
            return leases
        with scan:
            for entry in scan:
                match = LEASE_NAME.fullmatch(entry.name)
                if match is None or not is_valid_name(match.group(1)):
                    continue
                try:
                    lease = self._list_one(entry, decoded, quarantine)
                except OSError as exc:
                    log.warning("lease %s could not be read: %s", entry.path, exc)
                    continue
                if lease is not None:
                    leases.append(lease)
        self._decoded = decoded
        leases.sort(key=lambda lease: lease.task_id)
        return leases

    def _list_one(self, entry: os.DirEntry[str],
                  decoded: dict[str, tuple[tuple[int, ...], Lease]],
                  quarantine: bool) -> Lease | None:
        """One lease of a listing: the one decoded last time if its file is the same one
        (a regular file with the same identity), else read and decoded (or rejected)."""
        try:
            identity = _identity(entry.stat(follow_symlinks=False))
        except FileNotFoundError:
            return None
        known = self._decoded.get(entry.name)
        if identity is not None and known is not None and known[0] == identity:
            decoded[entry.name] = known
            return known[1]
        fd, lease = self._open_and_load(entry.path, quarantine=quarantine)
        if fd is None:
            return lease
        try:
            identity = _identity(os.fstat(fd))
        finally:
            os.close(fd)
        if identity is not None and lease is not None:
            decoded[entry.name] = (identity, lease)
        return lease

    def _reject(self, quarantine: bool, name: str, reason: str,
                info: os.stat_result | None) -> None:
        if quarantine:
            self._quarantine(name, reason, info)
        else:
            log.warning("corrupt lease %s left in place (dry run): %s", name, reason)

    def _quarantine(self, name: str, reason: str, info: os.stat_result | None) -> None:
        """Move a bad lease file to ``corrupt/<name>.<timestamp>`` with a ``.reason`` file."""
        path = Path(name)
        try:
            current = os.lstat(path)
        except FileNotFoundError:
            return
        if info is not None and (current.st_dev, current.st_ino) != (info.st_dev, info.st_ino):
            return  # replaced since we read it: the new file will be judged on its own
        corrupt = self.running_dir / CORRUPT_DIR
        ensure_private_dir(corrupt)
        stamp = clock.now().strftime("%Y%m%dT%H%M%S.%fZ")
        target = corrupt / f"{path.name}.{stamp}"
        suffix = 0
        while os.path.lexists(target):
            suffix += 1
            target = corrupt / f"{path.name}.{stamp}-{suffix}"
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return
        atomic_write(target.with_name(target.name + ".reason"),
                     f"{path.name}: {reason}\n".encode(), durable=False)
        log.warning("corrupt lease %s moved to %s: %s", path, target, reason)

    # writing

    def create(self, lease: Lease) -> None:
        """Publish a new lease; raise :class:`AlreadyLeased` if the task has one, and
        :class:`LeaseError` if something other than a lock file stands at its liveness
        lock's path (its wrapper could never take the lock: nothing is started)."""
        final = self._lease_path(lease.task_id)
        self._ensure_dir()
        self._check_lock_path(lease.task_id)
        tmp = self.running_dir / f".tmp-{final.name}.{os.getpid()}.{os.urandom(6).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     FILE_MODE)
        try:
            try:
                os.write(fd, encode(lease))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, final)  # atomic and exclusive: fails if any lease exists
            except FileExistsError:
                raise AlreadyLeased(
                    f"task {lease.task_id} is already leased (lease file {final} exists)"
                ) from None
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        fsync_dir(self.running_dir)

    def _check_lock_path(self, task_id: str) -> None:
        path = self.lock_path(task_id)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            kind = (f"owned by uid {info.st_uid}" if stat.S_ISREG(info.st_mode)
                    else describe_kind(info))
            raise LeaseError(f"liveness lock {path} is {kind}: it is never followed, so no "
                             "wrapper could hold it; task not started until it is removed")

    def update(self, lease: Lease) -> None:
        """Replace the task's lease atomically (unconditionally)."""
        path = self._lease_path(lease.task_id)
        with self._mutex():
            atomic_write(path, encode(lease))

    def _change(self, task_id: str,
                decide: Callable[[Lease | None], Lease | None], *,
                delete: bool = False) -> Lease | None:
        """Compare-and-set on one lease: ``decide(current)`` gives the lease to write
        (with ``delete``: the lease to remove), or None to leave the file as it is.

        The new file is written and fsynced before the store mutex is taken; under the
        mutex the rename (or unlink) happens only if the path still names the file that
        was read, whose descriptor is held open meanwhile (so its inode cannot have been
        reused); the directory is fsynced after. A lease that changed in between is read
        and decided again. Returns what ``decide`` gave when it was applied, else None.
        """
        path = self._lease_path(task_id)
        deadline = time.monotonic() + MUTEX_WAIT_SEC
        while True:
            fd, current = self._open_and_load(str(path))
            committed = False
            try:
                chosen = decide(current)
                if chosen is None or fd is None:
                    return None
                tmp = None if delete else write_temp(path, encode(chosen))
                try:
                    with self._mutex():
                        if _names_file(path, fd):
                            if tmp is None:
                                os.unlink(path)
                            else:
                                replace_with(tmp, path)
                                tmp = None
                            committed = True
                finally:
                    if tmp is not None:
                        discard(tmp)
            finally:
                if fd is not None and not committed:
                    os.close(fd)
            if committed:
                assert fd is not None
                self._retired.keep(fd)  # closed later: the file is freed then
                fsync_dir(self.running_dir)
                return chosen
            if time.monotonic() > deadline:
                raise LeaseError(f"lease of task {task_id} kept changing for more than "
                                 f"{MUTEX_WAIT_SEC:.0f} s")

    def close_retired(self) -> None:
        """Close the descriptors of the lease files this store replaced or removed. Each
        is the last reference to a file no longer in the directory, so closing it is when
        the file system frees the file (about a millisecond on some): callers do it when
        nothing waits on them (a wrapper once its agent runs and when it ends, the daemon
        after a pass) rather than on the way to starting or freeing a slot."""
        self._retired.close()

    def reown(self, expected: Lease, new_token: str, **changes: Any) -> Lease | None:
        """Give the lease a new spawn token (plus field ``changes``), only if it is still
        exactly as ``expected`` (same token, state, pid and heartbeat): the scheduler's
        fence before a reclaim. A wrapper that adopted or heartbeated meanwhile wins, and
        None is returned."""
        def decide(current: Lease | None) -> Lease | None:
            if current is None or (current.spawn_token, current.state, current.pid,
                                   current.heartbeat) != (
                    expected.spawn_token, expected.state, expected.pid, expected.heartbeat):
                return None
            return replace(current, spawn_token=new_token, **changes)

        return self._change(expected.task_id, decide)

    def adopt(self, task_id: str, token: str, pid: int, pid_started_at: float | None,
              now: datetime) -> tuple[Lease, LivenessLock] | None:
        """Take over a ``starting`` lease as its wrapper.

        Acquires the liveness lock (the scheduler's probe may hold it for a few µs), then,
        only if the lease is still ``starting`` with this spawn token, marks it ``running``
        with this process's identity. The caller keeps the lock for its whole life.
        Returns None (lock released) when the lease is gone or belongs to someone else.
        """
        lock = self.liveness_lock(task_id)
        deadline = time.monotonic() + ADOPT_LOCK_WAIT_SEC
        while not lock.acquire(0):
            current = self.read(task_id)
            if not _adoptable(current, token) or time.monotonic() > deadline:
                return None
            time.sleep(0.005)

        def decide(current: Lease | None) -> Lease | None:
            if current is None or not _adoptable(current, token):
                return None
            return replace(current, state=RUNNING, pid=pid, pid_started_at=pid_started_at,
                           heartbeat=_to_ms(now), **_mono_now(current))

        try:
            adopted = self._change(task_id, decide)
        except BaseException:
            lock.release()
            raise
        if adopted is None:
            lock.release()
            return None
        return adopted, lock

    def heartbeat(self, task_id: str, token: str, now: datetime,
                  **changes: Any) -> Lease | None:
        """Refresh the heartbeat (plus any field ``changes``) if the lease still carries
        ``token``; None when it is gone or names another owner (the caller was fenced)."""
        def decide(current: Lease | None) -> Lease | None:
            if current is None or not token or current.spawn_token != token:
                return None
            updated = replace(current, heartbeat=_to_ms(now), **{**_mono_now(current),
                                                                  **changes})
            if updated.task_id != task_id or updated.state not in STATES:
                raise LeaseError(f"heartbeat may not change task_id or set state "
                                 f"{updated.state!r} on task {task_id}")
            return updated

        return self._change(task_id, decide)

    def delete(self, task_id: str, token: str) -> bool:
        """Delete the lease only if it carries ``token``. True when deleted.
        The liveness lock file is left alone (see :meth:`remove_stale_lock_files`)."""
        def decide(current: Lease | None) -> Lease | None:
            if current is None or not token or current.spawn_token != token:
                return None
            return current

        return self._change(task_id, decide, delete=True) is not None

    # liveness locks

    def liveness_lock(self, task_id: str) -> LivenessLock:
        """A (not yet acquired) lock object for the task's ``task_<id>.lock``."""
        return LivenessLock(self.lock_path(task_id))

    def is_held(self, task_id: str) -> bool:
        """True when some process holds the task's liveness lock."""
        # a str path, not a Path: this runs once per lease per pass
        return probe_lock(os.path.join(self._dir_str, f"task_{check_name(task_id)}.lock"))

    def remove_stale_lock_files(self, live_task_ids: set[str]) -> int:
        """Remove ``task_<id>.lock`` files with no lease whose lock nobody holds.

        The file is unlinked while we hold its flock. A process that opened it just before
        would lock an unlinked inode; :class:`~scheduler.fsutil.KernelFlock` detects that
        (the path no longer names its file) and retries on a fresh file, so mutual
        exclusion holds.
        """
        removed = 0
        try:
            scan = os.scandir(self.running_dir)
        except FileNotFoundError:
            return 0
        with scan:
            names = [entry.name for entry in scan]
        for name in names:
            match = LOCK_NAME.fullmatch(name)
            if match is None:
                continue
            task_id = match.group(1)
            if not is_valid_name(task_id) or task_id in live_task_ids:
                continue
            if os.path.lexists(self.running_dir / f"task_{task_id}.json"):
                continue
            if _unlink_if_free(self.running_dir / name):
                removed += 1
        return removed


# --- spawn tokens -----------------------------------------------------------------------

#: Hex characters of a spawn token that name the scheduler that made it.
OWNER_CHARS = 8


def owner_tag(hostname: str, running_dir: Path) -> str:
    """The prefix of every spawn token this scheduler (host + lease directory) makes, so a
    pass can tell its own attempts in the source from another scheduler's."""
    import hashlib

    key = f"{hostname}\0{os.path.abspath(running_dir)}".encode()
    return hashlib.sha256(key).hexdigest()[:OWNER_CHARS]


def new_token(owner: str) -> str:
    """A fresh spawn token: the owner tag, then 16 random hex characters."""
    return owner + os.urandom(8).hex()


def is_owned(token: object, owner: str) -> bool:
    """True when ``token`` was made by the scheduler with this owner tag."""
    return (isinstance(token, str) and len(token) == OWNER_CHARS + 16
            and token.startswith(owner))


def _mono_now(lease: Lease) -> dict[str, Any]:
    """The heartbeat's monotonic reading, when the lease was started in this boot."""
    if lease.boot_id is not None and lease.boot_id == clock.boot_id():
        return {"heartbeat_mono": round(clock.monotonic(), 3)}
    return {}


def _to_ms(moment: datetime) -> datetime:
    """``moment`` as stored (millisecond precision), so a returned lease equals a re-read."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _adoptable(lease: Lease | None, token: str) -> bool:
    return (lease is not None and bool(token) and lease.state == STARTING
            and lease.spawn_token == token)


def _unlink_if_free(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDWR | SAFE_FLAGS)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False  # planted, not ours: left for the operator (spawns refuse it)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        info = os.fstat(fd)
        try:
            current = os.lstat(path)
        except FileNotFoundError:
            return False
        if (current.st_dev, current.st_ino) != (info.st_dev, info.st_ino):
            return False
        os.unlink(path)
        return True
    finally:
        os.close(fd)


def _read_all(fd: int, size_hint: int) -> bytes:
    want = max(size_hint, 0) + 4096
    first = os.read(fd, want)
    if len(first) < want:  # a short read of a regular file is its end
        return first
    chunks = [first]
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)
