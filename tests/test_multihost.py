"""Several scheduler hosts on one PostgreSQL, as real processes: a task added on one host
starts on another at once (LISTEN/NOTIFY), global limits hold across hosts, a dead host's
runs are taken over exactly once, and a fenced wrapper's late result changes nothing."""

from __future__ import annotations

import json
import signal
import time

import pytest
from multihost import Host
from test_daemon import start_daemon, stop
from test_reconciler import kill_leftovers, wait_for

from scheduler import clock

pytestmark = pytest.mark.processes

DEADLINE = 15.0


@pytest.fixture
def make_host(tmp_path, pg_url):
    made: list[Host] = []

    def make(name: str, agents: dict[str, str], limits: dict[str, int],
             **settings: object) -> Host:
        host = Host(tmp_path / name, pg_url, name, agents, limits, **settings)
        made.append(host)
        return host

    yield make
    kill_leftovers(tmp_path)
    for host in made:
        for child in host.children:
            if child.poll() is None:
                child.kill()
            child.communicate()


def listening(host: Host) -> bool:
    with host.store() as store:
        return bool(store.db.query(
            "SELECT 1 FROM pg_stat_activity WHERE query = 'LISTEN tinyscheduler_wake' "
            "AND datname = current_database()"))


def test_a_task_added_on_one_host_starts_on_another_within_a_second(make_host):
    adder = make_host("a", {"nobody": "elsewhere"}, {"nobody": 0}, LOOP_INTERVAL_SEC=60)
    runner = make_host("b", {"vaela": "dev"}, {"vaela": 1}, LOOP_INTERVAL_SEC=60)
    daemon = start_daemon(runner)
    wait_for(lambda: listening(runner), DEADLINE, "host b's daemon to LISTEN")
    proc = adder.cli("task", "add", "cross-host", "--queue", "dev", "--json")
    assert proc.returncode == 0, proc.stderr
    added = json.loads(proc.stdout)
    task, added_at = added["id"], clock.from_iso(added["created_at"]).timestamp()
    started = wait_for(lambda: runner.started(task), DEADLINE, "the task to start on host b")
    # from the add's commit (not the CLI's start-up) to the agent's first line
    latency = started[0].at - added_at
    assert latency < 1.0, f"add -> start across hosts took {latency:.3f} s"
    wait_for(lambda: adder.statuses()[task] == "complete", DEADLINE, "the task to complete")
    assert runner.runs() == []
    history = adder.history(task)
    assert any("on host b" in h["detail"] for h in history)
    assert stop(daemon) == 0


def test_global_limit_holds_across_hosts(make_host):
    hosts = [make_host(name, {"vaela": "dev"}, {"vaela": 3}, GLOBAL_LIMITS="vaela=2")
             for name in ("a", "b", "c")]
    ids = [hosts[0].add(f"held {i} hold", "--queue", "dev") for i in range(5)]
    for host in hosts:
        host.run_once()
    wait_for(lambda: sum(len(h.started(i)) for h in hosts for i in ids) == 2, DEADLINE,
             "two runs to start")
    assert len(hosts[0].runs()) == 2
    last = [json.loads((h.state / "last-pass.json").read_text()) for h in hosts]
    assert sum(p["spawned"] for p in last) == 2
    for host in hosts:
        host.release()
    deadline = time.monotonic() + DEADLINE
    while not hosts[0].all_done():
        assert time.monotonic() < deadline, "the backlog did not finish"
        for host in hosts:
            host.run_once(expect=None)
        wait_for(lambda: hosts[0].all_done() or not hosts[0].runs(), DEADLINE,
                 "the started runs to end")
    wait_for(lambda: hosts[0].all_done() and not hosts[0].runs(), 30,
             "every task to finish")


def test_a_dead_hosts_runs_are_taken_over_exactly_once_and_its_late_result_ignored(make_host):
    settings = {"HOST_TIMEOUT_SEC": 4, "HEARTBEAT_SEC": 1, "STALE_MULTIPLIER": 2}
    doomed = make_host("doomed", {"vaela": "dev"}, {"vaela": 1}, **settings)
    others = [make_host(n, {"vaela": "dev"}, {"vaela": 1}, **settings) for n in ("b", "c")]
    task = doomed.add("work hold", "--queue", "dev")
    doomed.run_once()
    first = wait_for(lambda: doomed.started(task), DEADLINE, "the first attempt")
    # The doomed host's wrapper loses its database: SIGSTOP freezes it (no renewals, no
    # result), as a host that is cut off or hung would.
    wrapper_pid = doomed.leases()[task].pid
    import os

    os.kill(wrapper_pid, signal.SIGSTOP)
    try:
        wait_for(lambda: any(h.run_once(expect=None) and h.started(task)
                             for h in others), 30, "another host to take the task over")
        taken = [h for h in others if h.started(task)]
        assert len(taken) == 1
        history = doomed.history(task)
        assert [h["detail"] for h in history].count(
            next(h["detail"] for h in history if "reclaimed: host doomed" in h["detail"])) == 1
        assert doomed.tasks()[task].attempts == 1
    finally:
        os.kill(wrapper_pid, signal.SIGCONT)
    # The frozen wrapper wakes up, finds its run gone (fenced), stops its agent and
    # reports nothing; the new attempt is untouched.
    wait_for(lambda: [e for e in doomed.events() if e.kind == "term" and e.task == task],
             DEADLINE, "the fenced agent to be stopped")
    assert doomed.tasks()[task].status == "working"
    taken[0].release()
    wait_for(lambda: doomed.tasks()[task].status == "complete", DEADLINE, "the new attempt")
    assert first[0].pid != taken[0].started(task)[0].pid
    wait_for(lambda: not doomed.runs(), DEADLINE, "no run rows left")


def test_outage_pass_exits_1_naming_the_server_and_results_are_delivered_once(
        make_host, pg_server):
    host = make_host("a", {"vaela": "dev"}, {"vaela": 1}, HEARTBEAT_SEC=1,
                     STALE_MULTIPLIER=10, HOST_TIMEOUT_SEC=30)
    task = host.add("outage hold", "--queue", "dev")
    host.run_once()
    wait_for(lambda: host.started(task), DEADLINE, "the agent to start")
    pg_server.stop()
    try:
        down = host.run_once(expect=1)
        assert "postgres postgresql://postgres@" in down.stdout + down.stderr
        last = json.loads((host.state / "last-pass.json").read_text())
        assert any("postgres postgresql://postgres@" in e for e in last["errors"])
        host.release(task)
        wait_for(lambda: list((host.state / "outbox").glob("*.json")) and not host.leases(),
                 DEADLINE, "the result to wait in the outbox and the wrapper to finish")
    finally:
        pg_server.start()
    host.run_once()
    assert host.statuses() == {task: "complete"}
    assert not list((host.state / "outbox").glob("*.json"))
    host.run_once()
    completes = [h for h in host.history(task) if h["to_status"] == "complete"]
    assert len(completes) == 1 and host.runs() == []
