"""``run --daemon`` as a real process: wake-ups, freed slots, signals, systemd notify.

LOOP_INTERVAL_SEC is 60 throughout, so anything that happens within the (generous)
deadlines below can only have been driven by a wake-up, never by the interval.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess

import psutil
import pytest
from test_reconciler import Scheduler, wait_for
from test_reconciler import make_scheduler as make_scheduler  # noqa: F401 - the fixture

pytestmark = pytest.mark.processes

DEADLINE = 10.0


def start_daemon(s: Scheduler, *global_args: str, **extra: object) -> subprocess.Popen:
    """Start ``run --daemon``; output goes to files (an unread pipe could block it)."""
    out = open(s.base / "daemon.out", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            [s.argv()[0], *global_args, "--base-path", str(s.base), "run", "--daemon"],
            env=s.environ(**extra), cwd=s.base, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT)
    finally:
        out.close()
    s.children.append(proc)
    wait_for(lambda: last_pass_mode(s) == "daemon" or proc.poll() is not None,
             what="the daemon's first pass")
    assert proc.poll() is None, (s.base / "daemon.out").read_text()
    return proc


def last_pass_mode(s: Scheduler) -> str | None:
    try:
        return json.loads((s.state / "last-pass.json").read_text()).get("mode")
    except (OSError, ValueError):
        return None


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=DEADLINE)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_task_add_and_a_freed_slot_wake_the_daemon(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1}, LOOP_INTERVAL_SEC=60)
    daemon = start_daemon(s)

    first = s.add("first hold", "--queue", "dev")
    wait_for(lambda: s.started(first), DEADLINE, "the added task to start (wake-up)")
    second = s.add("second", "--queue", "dev")
    wait_for(lambda: s.statuses()[second] == "idle" and len(s.leases()) == 1, DEADLINE,
             "the daemon to see the second task without a free slot")
    assert not s.started(second)

    s.release(first)
    wait_for(lambda: s.statuses() == {first: "complete", second: "complete"}, DEADLINE,
             "the freed slot to be refilled (wrapper exit wake-up)")
    assert [e.task for e in s.events() if e.kind == "start"] == [first, second]
    assert stop(daemon) == 0


def test_sigterm_leaves_agents_running_and_a_new_daemon_adopts_them(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 2}, LOOP_INTERVAL_SEC=60)
    daemon = start_daemon(s)
    task_id = s.add("long hold", "--queue", "dev")
    lease = wait_for(lambda: s.leases().get(task_id) if s.leases().get(task_id)
                     and s.leases()[task_id].agent_pid else None, DEADLINE, "a running lease")

    assert stop(daemon) == 0

    assert alive(lease.pid) and alive(lease.agent_pid)
    assert "daemon stopped; running agents left alone" in s.log_text()
    assert not (s.state / "tinyscheduler.lock.holder").exists()
    once = s.run_once()  # the lock is free
    assert "another scheduler" not in once.stderr

    second = start_daemon(s)
    s.release(task_id)
    wait_for(lambda: s.statuses()[task_id] == "complete", DEADLINE, "the adopted run to finish")
    task = s.tasks()[task_id]
    assert task.attempts == 0 and task.assignee == "vaela"
    assert "reclaiming" not in s.log_text()
    assert [e.kind for e in s.events()] == ["start", "end"]
    assert stop(second) == 0


def test_sighup_rereads_the_configuration(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, LOOP_INTERVAL_SEC=60)
    env_file = s.base / "reload.env"
    env_file.write_text("TINYSCHEDULER_AGENT_LIMITS=vaela=1\n")
    daemon = start_daemon(s, "--env-file", str(env_file))
    ids = [s.add(f"task {i} hold", "--queue", "dev") for i in range(2)]
    wait_for(lambda: len(s.leases()) == 1, DEADLINE, "one run at limit 1")

    env_file.write_text("TINYSCHEDULER_AGENT_LIMITS=vaela=2\n")
    daemon.send_signal(signal.SIGHUP)

    wait_for(lambda: "configuration re-read" in s.log_text(), DEADLINE, "the reload")
    line = next(x for x in s.log_text().splitlines() if "configuration re-read" in x)
    assert "AGENT_LIMITS" in line and "vaela" in line and ": 2}" in line
    wait_for(lambda: all(s.started(i) for i in ids), DEADLINE, "the second slot to be used")
    s.release()
    assert stop(daemon) == 0


def test_sighup_with_an_invalid_configuration_keeps_the_old_one(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, LOOP_INTERVAL_SEC=60)
    env_file = s.base / "reload.env"
    env_file.write_text("TINYSCHEDULER_AGENT_LIMITS=vaela=1\n")
    daemon = start_daemon(s, "--env-file", str(env_file))
    env_file.write_text("TINYSCHEDULER_MAX_ATTEMPTS=never\n")
    daemon.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration invalid, keeping the old one" in s.log_text(), DEADLINE,
             "the refused reload")
    assert "TINYSCHEDULER_MAX_ATTEMPTS" in s.log_text()
    task_id = s.add("still works", "--queue", "dev")
    wait_for(lambda: s.statuses()[task_id] == "complete", DEADLINE, "a task to run")
    assert stop(daemon) == 0


def test_systemd_notify_messages(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1}, LOOP_INTERVAL_SEC=60)
    address = s.base / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        sock.settimeout(DEADLINE)
        daemon = start_daemon(s, NOTIFY_SOCKET=str(address))
        messages = [sock.recv(4096).decode()]
        s.add("wake me", "--queue", "dev")
        messages.append(sock.recv(4096).decode())
        assert stop(daemon) == 0
        sock.settimeout(0.5)
        try:
            while True:
                messages.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
    fields = [field for message in messages for field in message.split("\n")]
    assert fields[0] == "READY=1"
    assert "WATCHDOG=1" in fields
    assert any(f.startswith("STATUS=pass: ") for f in fields), fields
    assert fields[-1] == "STOPPING=1"


def test_a_failing_pass_is_logged_and_the_loop_goes_on(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1}, LOOP_INTERVAL_SEC=60)
    daemon = start_daemon(s)
    (s.state / "paused.json").write_text("{broken")
    task_id = s.add("after the fix", "--queue", "dev")
    wait_for(lambda: "pass failed" in s.log_text(), DEADLINE, "the failed pass in the log")
    assert "pause file" in s.log_text()
    assert s.statuses()[task_id] == "idle"
    assert daemon.poll() is None

    os.unlink(s.state / "paused.json")
    s.cli("resume")  # nudges the daemon
    wait_for(lambda: s.statuses()[task_id] == "complete", DEADLINE, "the loop to recover")
    assert stop(daemon) == 0


def test_a_daemon_started_while_the_lock_is_held_waits_for_it(make_scheduler):
    """Another scheduler holds the lock: the daemon says who, keeps waiting (a service
    that exited would stay down), and starts its passes once the lock is free."""
    from scheduler.state.lock import SchedulerLock

    s = make_scheduler({"vaela": "dev"}, {"vaela": 1}, LOOP_INTERVAL_SEC=60)
    s.state.mkdir(parents=True, exist_ok=True)
    other = SchedulerLock(s.state / "tinyscheduler.lock", "otherhost")
    assert other.try_acquire()
    try:
        out = open(s.base / "daemon.out", "ab")  # noqa: SIM115 - handed to the child
        try:
            daemon = subprocess.Popen(s.argv("run", "--daemon"), env=s.environ(), cwd=s.base,
                                      stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT)
        finally:
            out.close()
        s.children.append(daemon)
        wait_for(lambda: "waiting for it" in (s.base / "daemon.out").read_text()
                 or daemon.poll() is not None, DEADLINE, "the daemon to say it waits")
        assert daemon.poll() is None
        said = (s.base / "daemon.out").read_text()
        assert f"held by pid {os.getpid()} on otherhost" in said
        assert last_pass_mode(s) is None
    finally:
        other.release()
    wait_for(lambda: last_pass_mode(s) == "daemon", DEADLINE, "the daemon's first pass")
    assert stop(daemon) == 0
