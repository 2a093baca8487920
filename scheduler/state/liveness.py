"""Is a lease's owner alive? One pure rule (:func:`classify`) and the watchdog's kill.

:func:`classify` reads time only from its ``now`` argument and OS facts only from a
:class:`Probe`, so tests drive it with freezegun and fakes. psutil is imported only by
:class:`SystemProbe` and :func:`terminate_group`, when they run.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from scheduler.state.leases import FINISHING, MERGING, STARTING, Lease, LeaseStore

if TYPE_CHECKING:
    import psutil

PID_DEAD = "pid-dead"
PID_REUSED = "pid-reused"
HEARTBEAT_STALE = "heartbeat-stale"
RUNTIME_EXCEEDED = "runtime-exceeded"
SPAWN_TIMEOUT = "spawn-timeout"
ALIVE = None

#: Two readings of one process's start time agree within this many seconds.
START_TIME_TOLERANCE = 0.01
#: After SIGKILL, how long :func:`terminate_group` waits for the process to go.
KILL_WAIT_SEC = 5.0

watchdog_log = logging.getLogger("tinyscheduler.watchdog")


class Probe(Protocol):
    """The OS facts :func:`classify` needs."""

    def lock_held(self, task_id: str) -> bool:
        """True when some process holds the task's liveness lock."""
        ...

    def start_time(self, pid: int) -> float | None:
        """The process's start time (epoch seconds); None when it is gone or a zombie."""
        ...


class SystemProbe:
    """The real :class:`Probe`: flock probe through the store, process facts from psutil."""

    def __init__(self, store: LeaseStore) -> None:
        self.store = store

    def lock_held(self, task_id: str) -> bool:
        return self.store.is_held(task_id)

    def start_time(self, pid: int) -> float | None:
        return process_start_time(pid)


def process_start_time(pid: int) -> float | None:
    """Start time of ``pid`` per psutil, or None when there is no such (non-zombie) process."""
    import psutil

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def classify(
    lease: Lease,
    *,
    now: datetime,
    this_host: str,
    max_runtime_sec: float,
    spawn_timeout_sec: float,
    kill_grace_sec: float,
    probe: Probe,
    mono_now: float | None = None,
    boot_id: str | None = None,
) -> str | None:
    """Why ``lease`` is dead (a reason constant), or :data:`ALIVE` (None).

    - ``starting``: reclaimed after ``spawn_timeout_sec`` unless a wrapper holds the lock.
    - another host's lease: judged by its heartbeat only.
    - this host's lease: a free liveness lock sends us to the process; a pid that is gone
      is ``pid-dead``, one whose start time differs (or was never recorded) is
      ``pid-reused``. A held lock, or a matching process, go on to the time rules.
    - this host's ``finishing`` lease whose lock is held by its live wrapper: alive
      (the wrapper is recording the result; it is never killed for a slow source).
    - time rules: ``runtime-exceeded`` after max_runtime + kill_grace + the lease's
      heartbeat interval. The wrapper enforces MAX_RUNTIME itself (and reports the task
      as timed out); the watchdog is only the backstop, so it leaves the wrapper time to
      terminate its agent and report. Then ``heartbeat-stale`` when the heartbeat is
      older than the interval x multiplier *recorded in the lease*.

    Ages of this host's leases come from the monotonic clock when the lease recorded its
    readings in this boot (``mono_now``, ``boot_id``): a step of the wall clock neither
    kills a healthy run nor strands a crashed start. Other hosts' leases, and leases
    without readings, are judged by wall time.

    Limits are strict: a lease exactly at a limit is still alive.
    """
    age, heartbeat_age = _ages(lease, now, this_host, mono_now, boot_id)
    if lease.state == STARTING:
        if age > timedelta(seconds=spawn_timeout_sec) and not probe.lock_held(lease.task_id):
            return SPAWN_TIMEOUT
        return ALIVE

    stale_after = timedelta(seconds=lease.heartbeat_sec * lease.stale_multiplier)
    if lease.host != this_host:
        return HEARTBEAT_STALE if heartbeat_age > stale_after else ALIVE

    if not probe.lock_held(lease.task_id):
        if lease.pid is None:
            return PID_DEAD
        started = probe.start_time(lease.pid)
        if started is None:
            return PID_DEAD
        if (lease.pid_started_at is None
                or abs(started - lease.pid_started_at) > START_TIME_TOLERANCE):
            return PID_REUSED
    elif lease.state == FINISHING and _is_recorded_process(lease.pid, lease.pid_started_at,
                                                            probe):
        # Its agent has ended and the wrapper is recording the result (outbox first, then
        # the source, however slow): killing it could only lose that result.
        return ALIVE

    runtime_limit = timedelta(seconds=max_runtime_sec + kill_grace_sec + lease.heartbeat_sec)
    if age > runtime_limit and lease.state != MERGING:  # a merge has its own bounds
        return RUNTIME_EXCEEDED
    if heartbeat_age > stale_after:
        return HEARTBEAT_STALE
    return ALIVE


def _ages(lease: Lease, now: datetime, this_host: str, mono_now: float | None,
          boot_id: str | None) -> tuple[timedelta, timedelta]:
    """(age, heartbeat age): monotonic for this host's leases of this boot, else wall."""
    if (mono_now is not None and boot_id is not None and lease.host == this_host
            and lease.boot_id == boot_id and lease.started_mono is not None):
        last = lease.heartbeat_mono if lease.heartbeat_mono is not None else lease.started_mono
        return (timedelta(seconds=mono_now - lease.started_mono),
                timedelta(seconds=mono_now - last))
    return now - lease.started_at, now - lease.heartbeat


def _is_recorded_process(pid: int | None, started_at: float | None, probe: Probe) -> bool:
    if pid is None or started_at is None:
        return False
    started = probe.start_time(pid)
    return started is not None and abs(started - started_at) <= START_TIME_TOLERANCE


def lock_holders(path: str | os.PathLike) -> list[tuple[int, str]]:
    """The processes that hold (or share) the flock on ``path``: (pid, command line), from
    the open descriptors under ``/proc/*/fd`` (else the locker ``/proc/locks`` names).
    Linux only; empty when nothing is found. Costly (a scan of every process): for error
    messages only."""
    try:
        info = os.stat(path)
    except OSError:
        return []
    holders: set[int] = set()
    try:
        processes = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        processes = []
    for name in processes:
        fd_dir = f"/proc/{name}/fd"
        try:
            for fd in os.listdir(fd_dir):
                try:
                    target = os.stat(f"{fd_dir}/{fd}")
                except OSError:
                    continue
                if (target.st_dev, target.st_ino) == (info.st_dev, info.st_ino):
                    holders.add(int(name))
                    break
        except OSError:
            continue
    if not holders:  # descriptors not visible to us: the kernel's record of the locker
        key = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
        try:
            with open("/proc/locks", encoding="ascii", errors="replace") as locks:
                for line in locks:
                    fields = line.split()
                    if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == key \
                            and fields[4].isdigit():
                        holders.add(int(fields[4]))
        except OSError:
            pass
    found = [(pid, _command_of(pid)) for pid in sorted(holders) if pid != os.getpid()]
    return [(pid, command) for pid, command in found if command != "?"] or found


def _command_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            words = handle.read(4096).split(b"\0")
    except OSError:
        return "?"
    # one line whatever its arguments hold (a task title may have newlines): it goes into
    # a one-line error
    text = " ".join(w.decode(errors="replace") for w in words if w)
    return " ".join(text.split())[:200] or "?"


def describe_lock_holders(path: str | os.PathLike) -> str:
    """E.g. ``held by pid 42 (python agent.py --serve)``, for an error message."""
    holders = lock_holders(path)
    if not holders:
        return "held by a process that could not be identified"
    return "held by " + ", ".join(f"pid {pid} ({command})" for pid, command in holders)


def needs_kill(reason: str | None) -> bool:
    """True when the lease's process may still run and must be terminated."""
    return reason in (RUNTIME_EXCEEDED, HEARTBEAT_STALE)


# --- the watchdog's kill ----------------------------------------------------------------


def terminate_group(pid: int, started_at: float, grace_sec: float, *,
                    poll: float = 0.05) -> bool:
    """SIGTERM the process group of ``pid``, SIGKILL it after ``grace_sec``.

    Signals nothing unless ``pid`` still has start time ``started_at`` (returns False).
    Signals only ``pid`` itself if it does not lead its process group, or shares ours.
    The process need not be our child: it is never reaped here, a zombie counts as gone.
    Returns True when the process (and, for a group, every live member) is gone.
    """
    import psutil

    try:
        proc = psutil.Process(pid)
        created = proc.create_time()
    except psutil.NoSuchProcess:
        return True
    if abs(created - started_at) > START_TIME_TOLERANCE:
        watchdog_log.warning("pid %d started at %.2f, not %.2f: another process, not signalled",
                             pid, created, started_at)
        return False
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return True
    # The group is signalled only when the recorded process leads it (wrappers and agents
    # each start their own): a pid that joined another group (ours, or anyone's) is
    # signalled alone, never the group it happens to be in.
    alone = pgid != pid or pgid == os.getpgrp()
    if pgid != pid:
        watchdog_log.warning("pid %d does not lead its process group %d: signalling the "
                             "process only", pid, pgid)

    def send(signum: signal.Signals) -> None:
        try:
            if alone:
                watchdog_log.warning("sending %s to pid %d", signum.name, pid)
                os.kill(pid, signum)
            else:
                watchdog_log.warning("sending %s to process group %d", signum.name, pgid)
                os.killpg(pgid, signum)
        except ProcessLookupError:
            pass

    def gone() -> bool:
        if _process_running(proc):
            return False
        return alone or not _group_has_live_member(pgid)

    send(signal.SIGTERM)
    if _wait_until(gone, grace_sec, poll):
        return True
    send(signal.SIGKILL)
    done = _wait_until(gone, KILL_WAIT_SEC, poll)
    if not done:
        watchdog_log.error("pid %d still running %.0f s after SIGKILL", pid, KILL_WAIT_SEC)
    return done


def _process_running(proc: psutil.Process) -> bool:
    """True while ``proc`` exists, is the same process (not a reused pid) and no zombie."""
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _group_has_live_member(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    import psutil

    # killpg also succeeds for zombies; look for a member that still runs.
    for member in psutil.process_iter():
        try:
            if os.getpgid(member.pid) == pgid and member.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return False


def _wait_until(condition: Callable[[], bool], timeout: float, poll: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
