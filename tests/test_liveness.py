"""Liveness rules (frozen time, fake probe) and real processes (locks, pids, signals)."""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
import pytest
from freezegun import freeze_time

from scheduler import clock
from scheduler.state.leases import FINISHING, MERGING, RUNNING, STARTING, Lease, LeaseStore
from scheduler.state.liveness import (
    ALIVE,
    HEARTBEAT_STALE,
    PID_DEAD,
    PID_REUSED,
    RUNTIME_EXCEEDED,
    SPAWN_TIMEOUT,
    SystemProbe,
    classify,
    needs_kill,
    terminate_group,
)

HOST = "host-a"
LIMITS = {"max_runtime_sec": 100, "spawn_timeout_sec": 30, "kill_grace_sec": 5}
MS = timedelta(milliseconds=1)


@dataclass
class FakeProbe:
    held: set[str] = field(default_factory=set)
    start_times: dict[int, float] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def lock_held(self, task_id: str) -> bool:
        self.calls.append(f"lock_held {task_id}")
        return task_id in self.held

    def start_time(self, pid: int) -> float | None:
        self.calls.append(f"start_time {pid}")
        return self.start_times.get(pid)


def lease_at(now, state: str = RUNNING, **changes: object) -> Lease:
    lease = Lease(task_id="t1", agent="worker", state=state, spawn_token="tok", started_at=now,
                  heartbeat=now, host=HOST, pid=4242, pid_started_at=1000.0,
                  heartbeat_sec=10, stale_multiplier=3)
    return replace(lease, **changes)


def judge(lease: Lease, probe: FakeProbe, **limits: float) -> str | None:
    return classify(lease, now=clock.now(), this_host=HOST, probe=probe, **(LIMITS | limits))


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --- time rules -------------------------------------------------------------------------


def test_heartbeat_stale_boundary_uses_the_recorded_interval() -> None:
    probe = FakeProbe(held={"t1"})
    with freeze_time("2025-01-31 12:00:00") as frozen:
        lease = lease_at(clock.now())  # 10 s x 3 recorded in the lease
        frozen.tick(timedelta(seconds=30))
        assert judge(lease, probe) is ALIVE
        frozen.tick(MS)
        assert judge(lease, probe) == HEARTBEAT_STALE
        # the same age is fine for a lease recorded with the default 15 s x 4
        assert judge(replace(lease, heartbeat_sec=15, stale_multiplier=4), probe) is ALIVE


def test_runtime_exceeded_boundary_leaves_the_wrapper_its_margin() -> None:
    probe = FakeProbe(held={"t1"})
    with freeze_time("2025-01-31 12:00:00") as frozen:
        started = clock.now()
        limit = timedelta(seconds=100 + 5 + 10)  # max runtime + kill grace + heartbeat_sec
        frozen.tick(limit)
        fresh = lease_at(started, heartbeat=clock.now())
        assert judge(fresh, probe) is ALIVE
        frozen.tick(MS)
        assert judge(fresh, probe) == RUNTIME_EXCEEDED
        assert judge(replace(fresh, state=FINISHING), probe) == RUNTIME_EXCEEDED
        # A merging lease has its own bounds (check timeout, lock wait): only its
        # heartbeat judges it.
        assert judge(replace(fresh, state=MERGING), probe) is ALIVE
        frozen.tick(timedelta(seconds=10 * 4))
        assert judge(replace(fresh, state=MERGING), probe) == HEARTBEAT_STALE


def test_spawn_timeout_boundary_and_a_live_wrapper() -> None:
    with freeze_time("2025-01-31 12:00:00") as frozen:
        lease = lease_at(clock.now(), state=STARTING, pid=None, pid_started_at=None)
        frozen.tick(timedelta(seconds=30))
        assert judge(lease, FakeProbe()) is ALIVE
        frozen.tick(MS)
        assert judge(lease, FakeProbe()) == SPAWN_TIMEOUT
        frozen.tick(timedelta(hours=5))
        assert judge(lease, FakeProbe(held={"t1"})) is ALIVE


def test_other_host_is_judged_by_heartbeat_only() -> None:
    probe = FakeProbe()
    with freeze_time("2025-01-31 12:00:00") as frozen:
        lease = lease_at(clock.now(), host="host-b", pid=1)
        frozen.tick(timedelta(hours=10))
        fresh = replace(lease, heartbeat=clock.now() - timedelta(seconds=30))
        assert judge(fresh, probe) is ALIVE  # far past max runtime, no lock, dead pid
        assert judge(replace(fresh, heartbeat=fresh.heartbeat - MS), probe) == HEARTBEAT_STALE
    assert probe.calls == []


# --- process rules (fake probe) -----------------------------------------------------------


def test_this_host_process_rules() -> None:
    with freeze_time("2025-01-31 12:00:00"):
        lease = lease_at(clock.now())
        assert judge(lease, FakeProbe(held={"t1"})) is ALIVE
        assert judge(lease, FakeProbe()) == PID_DEAD
        assert judge(replace(lease, pid=None), FakeProbe()) == PID_DEAD
        assert judge(lease, FakeProbe(start_times={4242: 1000.02})) == PID_REUSED
        assert judge(replace(lease, pid_started_at=None),
                     FakeProbe(start_times={4242: 1000.0})) == PID_REUSED
        assert judge(lease, FakeProbe(start_times={4242: 1000.01})) is ALIVE


def test_a_matching_process_without_the_lock_still_meets_the_time_rules() -> None:
    probe = FakeProbe(start_times={4242: 1000.0})
    with freeze_time("2025-01-31 12:00:00") as frozen:
        lease = lease_at(clock.now())
        frozen.tick(timedelta(seconds=31))
        assert judge(lease, probe) == HEARTBEAT_STALE


def test_needs_kill() -> None:
    assert needs_kill(RUNTIME_EXCEEDED) and needs_kill(HEARTBEAT_STALE)
    for reason in (PID_DEAD, PID_REUSED, SPAWN_TIMEOUT, ALIVE):
        assert not needs_kill(reason)


# --- real processes -----------------------------------------------------------------------

WRAPPER = """
import os, sys
from pathlib import Path
import psutil
from scheduler import clock
from scheduler.state.leases import LeaseStore
store = LeaseStore(Path(sys.argv[1]))
me = psutil.Process().create_time()
adopted = store.adopt("t1", "tok", os.getpid(), me, clock.now())
print("adopted" if adopted else "failed", flush=True)
sys.stdin.readline()
"""

WRAPPER_WITH_AGENT = """
import subprocess, sys
from pathlib import Path
from scheduler.state.leases import LeaseStore
lock = LeaseStore(Path(sys.argv[1])).liveness_lock("t1")
assert lock.acquire(2)
agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                         pass_fds=[lock.fileno()])
print(agent.pid, flush=True)
sys.stdin.readline()
"""


def system_judge(store: LeaseStore, lease: Lease) -> str | None:
    return classify(lease, now=clock.now(), this_host=HOST, probe=SystemProbe(store), **LIMITS)


@pytest.mark.processes
def test_live_wrapper_is_alive_and_dead_once_killed(tmp_path: Path, spawn_python) -> None:
    store = LeaseStore(tmp_path / "running")
    now = clock.now()
    store.create(Lease("t1", "worker", STARTING, "tok", now, now, HOST))
    wrapper = spawn_python(WRAPPER, str(store.running_dir))
    assert wrapper.stdout.readline().strip() == "adopted"
    lease = store.read("t1")
    assert lease.pid == wrapper.pid
    assert system_judge(store, lease) is ALIVE
    wrapper.kill()
    wrapper.wait()
    assert not store.is_held("t1")
    assert system_judge(store, lease) == PID_DEAD


@pytest.mark.processes
def test_live_pid_with_another_start_time_is_reused(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "running")
    mine = psutil.Process().create_time()
    lease = lease_at(clock.now(), pid=os.getpid(), pid_started_at=mine - 5)
    assert system_judge(store, lease) == PID_REUSED
    assert system_judge(store, replace(lease, pid_started_at=mine)) is ALIVE


@pytest.mark.processes
def test_zombie_has_no_start_time(tmp_path: Path, spawn_python) -> None:
    child = spawn_python("pass", stdin=None, stdout=None)
    wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE)
    assert SystemProbe(LeaseStore(tmp_path)).start_time(child.pid) is None
    child.wait()
    assert SystemProbe(LeaseStore(tmp_path)).start_time(child.pid) is None


@pytest.mark.processes
def test_agent_with_inherited_lock_keeps_it_after_the_wrapper_dies(tmp_path: Path,
                                                                   spawn_python) -> None:
    store = LeaseStore(tmp_path / "running")
    wrapper = spawn_python(WRAPPER_WITH_AGENT, str(store.running_dir))
    agent_pid = int(wrapper.stdout.readline())
    try:
        assert store.is_held("t1")
        wrapper.send_signal(signal.SIGKILL)
        wrapper.wait()
        assert psutil.pid_exists(agent_pid)
        assert store.is_held("t1")
    finally:
        try:
            os.kill(agent_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: not store.is_held("t1"))


# --- terminate_group ------------------------------------------------------------------------

SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"
STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")
LEADER_WITH_STUBBORN_MEMBER = (
    "import subprocess, sys, time\n"
    f"member = subprocess.Popen([sys.executable, '-c', {STUBBORN!r}], stdout=subprocess.PIPE)\n"
    "member.stdout.readline()\n"
    "print(member.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def start(spawn_python, code: str, **kwargs: object):
    child = spawn_python(code, stdin=None, **kwargs)
    child.stdout.readline()
    return child, psutil.Process(child.pid).create_time()


@pytest.mark.processes
def test_terminate_a_group_that_obeys_sigterm(spawn_python) -> None:
    child, started = start(spawn_python, SLEEPER, start_new_session=True)
    began = time.monotonic()
    assert terminate_group(child.pid, started, 60.0, poll=0.01) is True
    # done as soon as the group is gone, long before the grace period would end
    assert time.monotonic() - began < 30.0
    assert child.wait(timeout=5) == -signal.SIGTERM


@pytest.mark.processes
def test_terminate_a_group_that_ignores_sigterm(spawn_python) -> None:
    child, started = start(spawn_python, STUBBORN, start_new_session=True)
    began = time.monotonic()
    assert terminate_group(child.pid, started, 0.5, poll=0.01) is True
    assert time.monotonic() - began >= 0.5
    assert child.wait(timeout=5) == -signal.SIGKILL


@pytest.mark.processes
def test_terminate_kills_a_stubborn_member_after_the_leader_left(spawn_python) -> None:
    leader = spawn_python(LEADER_WITH_STUBBORN_MEMBER, stdin=None, start_new_session=True)
    member_pid = int(leader.stdout.readline())
    started = psutil.Process(leader.pid).create_time()
    try:
        assert terminate_group(leader.pid, started, 0.5, poll=0.01) is True
        assert leader.wait(timeout=5) == -signal.SIGTERM
        wait_for(lambda: not psutil.pid_exists(member_pid)
                 or psutil.Process(member_pid).status() == psutil.STATUS_ZOMBIE)
    finally:
        try:
            os.kill(member_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.processes
def test_terminate_signals_only_the_process_when_it_shares_our_group(spawn_python) -> None:
    child, started = start(spawn_python, SLEEPER)
    assert os.getpgid(child.pid) == os.getpgrp()
    assert terminate_group(child.pid, started, 5.0, poll=0.01) is True
    assert child.wait(timeout=5) == -signal.SIGTERM


@pytest.mark.processes
def test_identity_mismatch_is_never_signalled(spawn_python) -> None:
    child, started = start(spawn_python, SLEEPER, start_new_session=True)
    assert terminate_group(child.pid, started + 5, 0.2, poll=0.01) is False
    assert child.poll() is None
    assert psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE


def test_terminate_a_gone_process_is_done() -> None:
    assert terminate_group(2**22 + 12345, 0.0, 0.1) is True


MEMBER_OF_ANOTHER_GROUP = (
    "import subprocess, sys, time\n"
    f"member = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}], stdout=subprocess.PIPE)\n"
    "member.stdout.readline()\n"
    "print(member.pid, flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.mark.processes
def test_a_recorded_pid_that_does_not_lead_its_group_is_signalled_alone(spawn_python) -> None:
    """The recorded pid sits in a group led by another process (say, a reused pid, or a
    process that joined a group): the group's leader is never signalled."""
    leader = spawn_python(MEMBER_OF_ANOTHER_GROUP, stdin=None, start_new_session=True)
    member_pid = int(leader.stdout.readline())
    assert os.getpgid(member_pid) == leader.pid != member_pid
    started = psutil.Process(member_pid).create_time()
    assert terminate_group(member_pid, started, 5.0, poll=0.01) is True
    assert leader.poll() is None  # the leader (and its group) untouched


# --- clock steps ----------------------------------------------------------------------------


def mono_lease(state: str = RUNNING, *, started_mono: float, heartbeat_mono: float | None,
               wall_started, wall_heartbeat, host: str = HOST):
    return Lease(task_id="7", agent="a", state=state, spawn_token="t", host=host,
                 started_at=wall_started, heartbeat=wall_heartbeat, pid=100,
                 pid_started_at=1.0, heartbeat_sec=10, stale_multiplier=3,
                 boot_id="boot-1", started_mono=started_mono, heartbeat_mono=heartbeat_mono)


def judge_mono(lease, *, wall_now, mono_now, lock_held=True, boot_id="boot-1"):
    probe = FakeProbe(held={"7"} if lock_held else set(), start_times={100: 1.0})
    return classify(lease, now=wall_now, this_host=HOST, max_runtime_sec=3600,
                    spawn_timeout_sec=30, kill_grace_sec=5, probe=probe, mono_now=mono_now,
                    boot_id=boot_id)


def test_a_forward_clock_step_does_not_make_a_live_run_stale() -> None:
    """The wall clock jumps a day ahead: by wall time the heartbeat is a day old; by the
    monotonic clock it is 5 s old, and the run is alive."""
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    lease = mono_lease(started_mono=1000.0, heartbeat_mono=1055.0, wall_started=start,
                       wall_heartbeat=start + timedelta(seconds=55))
    day_later = start + timedelta(days=1, seconds=60)
    assert judge_mono(lease, wall_now=day_later, mono_now=1060.0) is None
    # the same lease judged by wall time alone (no monotonic reading) would be killed
    assert judge_mono(lease, wall_now=day_later, mono_now=None) == "runtime-exceeded"


def test_a_backward_clock_step_does_not_strand_a_crashed_start() -> None:
    """A `starting` lease whose spawner died; the wall clock went back an hour, so by wall
    time the lease is from the future. By the monotonic clock it is 60 s old: reclaimed."""
    start = datetime(2025, 1, 1, 12, tzinfo=timezone.utc)
    lease = mono_lease(STARTING, started_mono=500.0, heartbeat_mono=None,
                       wall_started=start, wall_heartbeat=start)
    hour_back = start - timedelta(hours=1) + timedelta(seconds=60)
    assert judge_mono(lease, wall_now=hour_back, mono_now=560.0, lock_held=False) == \
        "spawn-timeout"
    assert judge_mono(lease, wall_now=hour_back, mono_now=None, lock_held=False) is None


def test_monotonic_readings_of_another_boot_or_host_are_not_used() -> None:
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    lease = mono_lease(started_mono=1000.0, heartbeat_mono=1055.0, wall_started=start,
                       wall_heartbeat=start)
    later = start + timedelta(seconds=31)
    assert judge_mono(lease, wall_now=later, mono_now=1060.0, boot_id="boot-2") == \
        "heartbeat-stale"


def test_a_finishing_lease_without_a_recorded_process_gets_no_protection() -> None:
    """Only a finishing lease whose lock is held by the very process it records (pid and
    start time) is spared the time rules; one that records no process is judged by them."""
    probe = FakeProbe(held={"t1"}, start_times={4242: 1000.0})
    with freeze_time("2025-01-31 12:00:00") as frozen:
        recorded = lease_at(clock.now(), FINISHING)
        unrecorded = replace(recorded, pid=None)
        no_start = replace(recorded, pid_started_at=None)
        frozen.tick(timedelta(seconds=31))
        assert judge(recorded, probe) is ALIVE
        assert judge(unrecorded, probe) == HEARTBEAT_STALE
        assert judge(no_start, probe) == HEARTBEAT_STALE


def test_the_holders_of_a_missing_lock_file_cannot_be_named(tmp_path: Path) -> None:
    from scheduler.state.liveness import describe_lock_holders, lock_holders

    missing = tmp_path / "task_1.lock"
    assert lock_holders(missing) == []
    assert describe_lock_holders(missing) == "held by a process that could not be identified"


DETACHED = (
    "import os, subprocess, sys\n"
    f"child = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}], stdout=subprocess.PIPE,\n"
    "                         start_new_session=True)\n"
    "child.stdout.readline()\n"
    "print(child.pid, flush=True)\n"
    "os._exit(0)  # the sleeper is re-parented: not a child of the test process\n"
)


@pytest.mark.processes
def test_terminate_a_group_that_is_not_our_child(spawn_python) -> None:
    """Wrappers are double-forked and re-parented, so the watchdog never signals its own
    child: once the process is gone (reaped by its new parent), so is its group."""
    middle = spawn_python(DETACHED, stdin=None)
    pid = int(middle.stdout.readline())
    assert middle.wait(timeout=10) == 0
    try:
        started = psutil.Process(pid).create_time()
        assert psutil.Process(pid).ppid() != os.getpid()
        assert terminate_group(pid, started, 10.0, poll=0.01) is True
        assert not psutil.pid_exists(pid) or \
            psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


REAPED = (
    "import subprocess, sys\n"
    f"child = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}], stdout=subprocess.PIPE,\n"
    "                         start_new_session=True)\n"
    "child.stdout.readline()\n"
    "print(child.pid, flush=True)\n"
    "print(child.wait(), flush=True)  # reaped at once, as a wrapper reaps its agent\n"
)


@pytest.mark.processes
def test_terminate_a_group_whose_leader_its_parent_reaps(spawn_python) -> None:
    """An agent is its wrapper's child, not ours: the wrapper reaps it as soon as it dies,
    so neither the process nor its group exists any more (not even as a zombie)."""
    parent = spawn_python(REAPED, stdin=None)
    pid = int(parent.stdout.readline())
    try:
        started = psutil.Process(pid).create_time()
        assert terminate_group(pid, started, 10.0, poll=0.01) is True
        assert int(parent.stdout.readline()) == -signal.SIGTERM
        assert parent.wait(timeout=10) == 0
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # the group is gone
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


LOCK_HOLDER = (
    "import fcntl, sys\n"
    "handle = open(sys.argv[1], 'w')\n"
    "fcntl.flock(handle, fcntl.LOCK_EX)\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.mark.processes
@pytest.mark.parametrize("view", ["descriptors", "kernel lock table"])
def test_the_holder_of_a_lock_is_named_from_its_descriptors_or_the_kernel(
        tmp_path: Path, spawn_python, monkeypatch, view: str) -> None:
    """For the error about an unkillable run: who holds the liveness lock. Found from the
    processes' open descriptors, or, when those cannot be listed (another user's
    processes, without privileges), from the kernel's table of locks."""
    from scheduler.state.liveness import describe_lock_holders, lock_holders

    path = tmp_path / "task_1.lock"
    holder = spawn_python(LOCK_HOLDER, str(path))
    assert holder.stdout.readline().strip() == "locked"
    if view == "kernel lock table":
        real_listdir = os.listdir

        def no_descriptors(where="."):
            if str(where).endswith("/fd"):
                raise PermissionError(13, "Permission denied", str(where))
            return real_listdir(where)

        monkeypatch.setattr(os, "listdir", no_descriptors)
    found = lock_holders(path)
    assert [pid for pid, _command in found] == [holder.pid]
    command = found[0][1]  # its command line, on one line (the code has newlines)
    assert command.startswith(f"{sys.executable} -c import fcntl, sys handle = open(")
    assert "\n" not in command and len(command) <= 200
    assert describe_lock_holders(path) == f"held by pid {holder.pid} ({command})"
