"""The daemon's fork server, as real processes: the daemon forks it once and never
itself per task; wrappers are its children, each in its own session, inheriting neither
the scheduler lock nor the task store; a wrapper whose task ended cleanly supervises the
next task in the same process, holding nothing of the ended one, and is retired when
idle; a server that dies is replaced; it goes with the daemon, leaving the agents
running."""

from __future__ import annotations

import os
import signal

import psutil
import pytest
from test_daemon import DEADLINE, alive, start_daemon, stop
from test_reconciler import make_scheduler as make_scheduler  # noqa: F401 - the fixture
from test_reconciler import wait_for
from test_wrapper import make_rig as make_rig  # noqa: F401 - the fixture
from test_wrapper import rig as rig  # noqa: F401 - the fixture

from scheduler.state.leases import LeaseStore
from wrapper.title import IDLE_TITLE

pytestmark = pytest.mark.processes


def servers(daemon_pid: int) -> list[psutil.Process]:
    """The daemon's children that are still running (its fork server, if any)."""
    return [child for child in psutil.Process(daemon_pid).children()
            if child.status() != psutil.STATUS_ZOMBIE]


def open_paths(pid: int) -> set[str]:
    paths = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            paths.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return paths


def running_lease(s, task_id: str):
    return wait_for(lambda: s.leases().get(task_id) if s.leases().get(task_id)
                    and s.leases()[task_id].agent_pid else None, DEADLINE, "a running lease")


def test_wrappers_are_forked_by_one_server_that_holds_nothing_of_the_daemon(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 2}, LOOP_INTERVAL_SEC=60)
    daemon = start_daemon(s)
    first = s.add("first hold", "--queue", "dev")
    lease = running_lease(s, first)
    [server] = servers(daemon.pid)
    assert psutil.Process(lease.pid).ppid() == server.pid
    assert os.getsid(lease.pid) == lease.pid  # the wrapper leads its own session
    assert os.getsid(server.pid) == server.pid
    held = open_paths(server.pid)
    assert not any("tinyscheduler.lock" in path or "tasks.db" in path for path in held), held

    s.release(first)
    second = s.add("second hold", "--queue", "dev")
    lease = running_lease(s, second)
    assert [p.pid for p in servers(daemon.pid)] == [server.pid]  # the same server again
    assert psutil.Process(lease.pid).ppid() == server.pid
    s.release()
    wait_for(lambda: s.all_done(), DEADLINE, "both tasks to complete")
    assert stop(daemon) == 0
    wait_for(lambda: not psutil.pid_exists(lease.pid), DEADLINE,
             "the idle wrapper to exit with the daemon and be reaped")


def idle_wrappers(server: psutil.Process) -> list[psutil.Process]:
    idle = []
    for child in server.children():
        try:
            if " ".join(part for part in child.cmdline() if part) == IDLE_TITLE:
                idle.append(child)
        except psutil.NoSuchProcess:  # it exited since the listing
            pass
    return idle


def test_a_wrapper_whose_task_ended_supervises_the_next_one_holding_nothing_of_it(
        make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1}, LOOP_INTERVAL_SEC=60)
    daemon = start_daemon(s)
    first = s.add("first hold", "--queue", "dev")
    wrapper = running_lease(s, first).pid
    s.release(first)
    wait_for(lambda: s.statuses()[first] == "complete", DEADLINE, "the first task")
    [server] = servers(daemon.pid)
    [idle] = wait_for(lambda: idle_wrappers(server), DEADLINE, "the wrapper to wait, idle")
    assert idle.pid == wrapper
    held = open_paths(wrapper)  # its channel to the server and /dev/null, nothing else
    channels = {path for path in held if path.startswith("socket:")}
    assert held - channels == {"/dev/null"} and len(channels) == 1, held
    assert not LeaseStore(s.running).is_held(first)

    second = s.add("second hold", "--queue", "dev")
    assert running_lease(s, second).pid == wrapper  # the same process, no new fork
    assert not LeaseStore(s.running).is_held(first)
    s.release(second)
    wait_for(lambda: s.statuses()[second] == "complete", DEADLINE, "the second task")
    # The result is recorded before the wrapper frees the slot and offers itself again.
    [again] = wait_for(lambda: idle_wrappers(server), DEADLINE, "the wrapper to be idle again")
    assert again.pid == wrapper
    assert stop(daemon) == 0
    wait_for(lambda: not alive(wrapper), DEADLINE, "the idle wrapper to go with the daemon")


def test_idle_wrappers_retire_after_warm_wrapper_sec_and_zero_means_one_task_each(
        make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1}, LOOP_INTERVAL_SEC=60)
    daemon = start_daemon(s, WARM_WRAPPER_SEC=1)
    first = s.add("first hold", "--queue", "dev")
    wrapper = running_lease(s, first).pid
    s.release(first)
    wait_for(lambda: s.statuses()[first] == "complete", DEADLINE, "the first task")
    wait_for(lambda: not alive(wrapper), DEADLINE, "the idle wrapper to retire")
    assert alive(daemon.pid)
    assert stop(daemon) == 0

    daemon = start_daemon(s, WARM_WRAPPER_SEC=0)
    second = s.add("second hold", "--queue", "dev")
    wrapper = running_lease(s, second).pid
    s.release(second)
    wait_for(lambda: not alive(wrapper), DEADLINE, "the wrapper to exit after its task")
    assert s.statuses()[second] == "complete"
    assert stop(daemon) == 0


def after_one_task(make_scheduler, limit: int):
    """A daemon that has run one task: (scheduler, daemon, its fork server)."""
    s = make_scheduler({"vaela": "dev"}, {"vaela": limit}, LOOP_INTERVAL_SEC=60)
    daemon = start_daemon(s)
    first = s.add("first", "--queue", "dev")
    wait_for(lambda: s.statuses()[first] == "complete", DEADLINE, "the first task")
    [server] = servers(daemon.pid)
    return s, daemon, server


def test_a_server_that_died_is_replaced_and_the_daemon_takes_it_with_it(make_scheduler):
    s, daemon, server = after_one_task(make_scheduler, 2)
    server.send_signal(signal.SIGKILL)
    wait_for(lambda: not alive(server.pid), DEADLINE, "the server to die")

    second = s.add("second hold", "--queue", "dev")
    lease = running_lease(s, second)
    [replacement] = servers(daemon.pid)
    assert replacement.pid != server.pid
    assert s.history(second)[-1]["to_status"] == "working"
    assert "could not start" not in s.log_text()

    assert stop(daemon) == 0
    replacement.wait(DEADLINE)  # the server ends with the daemon...
    assert alive(lease.pid) and alive(lease.agent_pid)  # ...the runs go on
    s.release()
    wait_for(lambda: s.statuses()[second] == "complete", DEADLINE, "the run to finish")
    wait_for(lambda: not alive(lease.pid), DEADLINE,
             "the wrapper, its server gone, to exit after its task")


def test_a_reload_starts_a_new_server(make_scheduler):
    s, daemon, server = after_one_task(make_scheduler, 1)

    daemon.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration re-read" in s.log_text(), DEADLINE, "the reload")
    server.wait(DEADLINE)  # the old server went with the old configuration
    second = s.add("second", "--queue", "dev")
    wait_for(lambda: s.statuses()[second] == "complete", DEADLINE, "a task after the reload")
    [replacement] = servers(daemon.pid)
    assert replacement.pid != server.pid
    assert stop(daemon) == 0


def test_a_fork_the_server_could_not_make_is_reported_at_the_next_pass(rig, monkeypatch):
    """The daemon does not wait for the server's answer; a fork that failed in the server
    (here: os.fork raising EAGAIN there, as at a process limit) is learnt at the next
    pass: the attempt is `launch_failed`, the task requeued, the lease dropped."""
    import errno

    from test_promises import REGISTRY

    from scheduler.reconcile.reconciler import Reconciler

    here, real_fork = os.getpid(), os.fork

    def fork_fails_in_the_server() -> int:
        if os.getpid() == here:
            return real_fork()  # the server itself is forked from here
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", fork_fails_in_the_server)
    task = rig.add()
    reconciler = Reconciler(rig.settings, REGISTRY, source=rig.tasks, mode="daemon")
    try:
        first = reconciler.run_pass().summary
        assert first.spawned == 1 and first.errors == []
        second = wait_for(lambda: reconciler.run_pass().summary.errors or None, DEADLINE,
                          "the failed fork to be reported")
        assert reconciler.run_pass().summary.errors == []  # an error of one pass only
    finally:
        reconciler.close()

    assert second == [f"task {task.id}: wrapper could not start: the wrapper could not be "
                      "forked: [Errno 11] Resource temporarily unavailable"]
    requeued = rig.tasks.get(task.id)
    assert requeued.status == "idle" and "launch_failed" in requeued.last_error
    assert rig.leases.read(task.id) is None


def test_a_wrapper_is_offered_again_only_when_its_task_left_nothing_in_it(rig):
    """The rule ``serve_tasks`` applies after each task: the lease gone or another
    process's, no descriptor left open, no thread running."""
    import threading

    from scheduler import clock
    from scheduler.reconcile.detach import _left_nothing, _open_descriptors
    from scheduler.state.leases import RUNNING, Lease

    keep = tuple(sorted(_open_descriptors() - {0, 1, 2}))  # pytest's own files
    assert _left_nothing(rig.settings, "7", keep)  # no lease

    def lease(pid: int) -> None:
        now = clock.now()
        rig.leases.create(Lease(task_id="7", agent="vaela", state=RUNNING, spawn_token="t",
                                started_at=now, heartbeat=now, host="here", pid=pid))
        rig.leases.close_retired()

    lease(os.getpid())  # its slot was never freed: this process must not live on
    assert not _left_nothing(rig.settings, "7", keep)
    assert rig.leases.delete("7", "t")
    rig.leases.close_retired()
    lease(os.getpid() + 1)  # reclaimed meanwhile and re-owned by another wrapper
    assert _left_nothing(rig.settings, "7", keep)

    lock = rig.leases.liveness_lock("7")
    assert lock.acquire(0)  # a descriptor left open, e.g. the ended task's liveness lock
    try:
        assert not _left_nothing(rig.settings, "7", keep)
    finally:
        lock.release()
    assert _left_nothing(rig.settings, "7", keep)

    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert not _left_nothing(rig.settings, "7", keep)
    finally:
        stop.set()
        thread.join()


def test_the_daemon_reads_answers_without_waiting_for_them(rig, monkeypatch):
    """A server that is slow to answer (here: stopped) neither holds the daemon's pass nor
    is taken for dead: reading the answers never waits, even on the send timeout."""
    from scheduler.reconcile import forkserver

    monkeypatch.setattr(forkserver, "SEND_TIMEOUT_SEC", 0.2)
    server = forkserver.ForkServer(rig.settings)
    server.prepare(rig.tasks)
    pid = server._pid
    assert pid is not None
    try:
        os.kill(pid, signal.SIGSTOP)
        server.launch("41", "no-such-token", "")
        assert server.failures() == []
        server.reap()
        assert server._pid == pid  # still its server, not closed for a late answer
        os.kill(pid, signal.SIGCONT)
        wait_for(lambda: server.failures() == [] and not server._waiting, DEADLINE,
                 "the answer to be read")
    finally:
        os.kill(pid, signal.SIGCONT)
        server.close()
