"""Long multi-host runs on PostgreSQL (``make chaos``; not part of ``make test``):

- three hosts in daemon mode, 300 short tasks, random kill -9 of whole hosts and of
  single wrappers, hosts restarted: no task runs twice at once (the agents check it
  themselves with a lock per task), every task completes, the global limit is never
  exceeded (from the agents' own start/end records), no run rows are left;
- a partition: one host reaches the database through a proxy that the test cuts; the
  other host takes its run over after HOST_TIMEOUT_SEC, the cut-off host stops its agent,
  and its late result is rejected by the fencing token;
- PostgreSQL restarted while a daemon runs 50 tasks: nothing lost, nothing duplicated.

Each prints its figures (``-s`` shows them).
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import psutil
import pytest
from multihost import Host
from netproxy import Proxy
from test_daemon import start_daemon, stop
from test_reconciler import kill_leftovers, wait_for

pytestmark = [pytest.mark.processes, pytest.mark.chaos]

CHAOS_AGENT = r'''
import fcntl, os, random, signal, sys, time
log, locks, host, task = sys.argv[1:5]
agent = os.environ.get("TINYSCHEDULER_AGENT", "?")

def record(kind):
    line = "%s %s %s %s %d %.6f\n" % (kind, task, agent, host, os.getpid(), time.time())
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, line.encode())
    os.close(fd)

signal.signal(signal.SIGTERM, lambda *_: (record("term"), os._exit(143)))
lock = os.open(os.path.join(locks, task), os.O_RDWR | os.O_CREAT, 0o600)
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    record("overlap")
    fcntl.flock(lock, fcntl.LOCK_EX)
record("start")
hold = os.path.join(locks, "hold-" + task)
deadline = time.time() + random.uniform(0.05, 0.3)
while time.time() < deadline or os.path.exists(hold):
    time.sleep(0.02)
record("end")
'''


class ChaosHost(Host):
    def __init__(self, root: Path, url: str, name: str, **settings: object) -> None:
        base = root / name
        base.mkdir(parents=True, exist_ok=True)
        script = base / "chaos_agent.py"
        script.write_text(CHAOS_AGENT)
        command = " ".join(shlex.quote(p) for p in (
            sys.executable, "-S", str(script), str(root / "agents.log"), str(root / "locks"),
            name)) + " {task_id}"
        defaults: dict[str, object] = {"AGENT_COMMAND": command}
        defaults.update(settings)
        super().__init__(base, url, name, {"vaela": "dev", "damien": "dev"},
                         {"vaela": 2, "damien": 2}, **defaults)
        self.daemon = None

    def start(self) -> None:
        self.daemon = start_daemon(self)

    def processes(self) -> list[psutil.Process]:
        needle = str(self.base) + "/"
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if proc.pid != os.getpid() and any(
                        needle in part or part == str(self.base)
                        for part in proc.info["cmdline"] or ()):
                    found.append(proc)
            except (psutil.Error, TypeError):
                continue
        return found

    def kill_all(self) -> int:
        procs = self.processes()
        for proc in procs:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=5)
        if self.daemon is not None:
            self.daemon.wait(timeout=5)
        return len(procs)


def read_events(path: Path) -> list[tuple]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    events = []
    for line in text.splitlines():
        kind, task, agent, host, pid, at = line.split()
        events.append((kind, task, agent, host, int(pid), float(at)))
    return events


def max_concurrency(events: list[tuple], host_kills: dict[str, list[float]],
                    end_of_test: float) -> dict[str, int]:
    """Per agent, the most runs at once, from the agents' own records. A run without an
    end record ended when its host was killed, or at the latest when the next attempt of
    its task took the task's lock (it was dead by then)."""
    ends = {(e[1], e[4]): e[5] for e in events if e[0] in ("end", "term")}
    starts = sorted((e for e in events if e[0] == "start"), key=lambda e: e[5])
    next_start: dict[tuple, float] = {}
    last_by_task: dict[str, tuple] = {}
    for e in starts:
        previous = last_by_task.get(e[1])
        if previous is not None:
            next_start[(previous[1], previous[4])] = e[5]
        last_by_task[e[1]] = e
    points = []
    for _, task, agent, host, pid, at in starts:
        end = ends.get((task, pid))
        if end is None:
            kills = [k for k in host_kills.get(host, []) if k >= at]
            end = min([*kills[:1], next_start.get((task, pid), end_of_test)])
        points += [(at, 1, agent), (end, -1, agent)]
    running: Counter = Counter()
    most: dict[str, int] = defaultdict(int)
    for _, delta, agent in sorted(points, key=lambda p: (p[0], p[1])):
        running[agent] += delta
        most[agent] = max(most[agent], running[agent])
    return dict(most)


@pytest.fixture
def chaos_root(tmp_path):
    (tmp_path / "locks").mkdir()
    yield tmp_path
    kill_leftovers(tmp_path)


def test_three_hosts_300_tasks_with_kill_9(chaos_root, pg_url):
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "14")))
    settings = {"LOOP_INTERVAL_SEC": 2, "HEARTBEAT_SEC": 1, "STALE_MULTIPLIER": 2,
                "HOST_TIMEOUT_SEC": 4, "SPAWN_TIMEOUT_SEC": 5, "MAX_ATTEMPTS": 50,
                "KILL_GRACE_SEC": 1, "GLOBAL_LIMITS": "vaela=3,damien=2"}
    hosts = [ChaosHost(chaos_root, pg_url, name, **settings) for name in ("h1", "h2", "h3")]
    backlog = chaos_root / "backlog.json"
    backlog.write_text(json.dumps([{"title": f"chaos {i}", "queue": "dev"}
                                   for i in range(300)]))
    assert hosts[0].cli("task", "import", str(backlog)).returncode == 0
    started = time.time()
    for host in hosts:
        host.start()
    host_kills: dict[str, list[float]] = defaultdict(list)
    kills = Counter()
    deadline = time.monotonic() + 900
    chaos_until = time.monotonic() + 60
    log = chaos_root / "agents.log"
    while True:
        statuses = Counter(hosts[0].statuses().values())
        if statuses.get("complete") == 300:
            break
        assert time.monotonic() < deadline, f"backlog did not finish: {statuses}"
        if time.monotonic() < chaos_until:
            victim = rng.choice(hosts)
            if rng.random() < 0.35:
                host_kills[victim.name].append(time.time())
                victim.kill_all()
                kills["host"] += 1
                # Often back at once (its own pass reclaims its dead runs), sometimes
                # only after HOST_TIMEOUT_SEC (the other hosts take its runs over).
                time.sleep(rng.choice((rng.uniform(0.5, 2.0), rng.uniform(5.0, 7.0))))
                victim.start()
            else:
                leases = list(victim.leases().values())
                pids = [lease.pid for lease in leases if lease.pid]
                if pids:
                    try:
                        os.kill(rng.choice(pids), signal.SIGKILL)
                        kills["wrapper"] += 1
                    except ProcessLookupError:
                        pass
            time.sleep(rng.uniform(0.5, 2.5))
        else:
            time.sleep(0.5)
    elapsed = time.time() - started
    wait_for(lambda: not hosts[0].runs(), 30, "every run row to go")
    for host in hosts:
        assert stop(host.daemon) == 0
    events = read_events(log)
    overlaps = [e for e in events if e[0] == "overlap"]
    most = max_concurrency(events, host_kills, time.time())
    reclaims = Counter()
    with hosts[0].store() as store:
        for task in store.list_tasks():
            for entry in store.history(task.id):
                if entry["detail"].startswith("reclaimed:"):
                    reclaims["host dead" if "silent" in entry["detail"] else "local"] += 1
    starts = sum(1 for e in events if e[0] == "start")
    print(f"\nchaos: 300 tasks on 3 hosts in {elapsed:.1f} s; kills {dict(kills)}; "
          f"agent starts {starts}; reclaims {dict(reclaims)}; max concurrency {most} "
          f"(global limits vaela=3, damien=2); overlaps {len(overlaps)}")
    assert overlaps == []
    assert most.get("vaela", 0) <= 3 and most.get("damien", 0) <= 2, most
    assert hosts[0].runs() == []
    assert Counter(hosts[0].statuses().values()) == {"complete": 300}


def test_partition_cut_off_host_stops_and_its_late_result_is_rejected(
        chaos_root, pg_server, pg_url):
    proxy = Proxy(str(pg_server.socket_dir / ".s.PGSQL.5432"))
    try:
        dbname = pg_url.split("/")[3].split("?")[0]
        settings = {"HEARTBEAT_SEC": 1, "STALE_MULTIPLIER": 2, "HOST_TIMEOUT_SEC": 5,
                    "KILL_GRACE_SEC": 1}
        cut_off = ChaosHost(chaos_root, f"postgresql://postgres@127.0.0.1:{proxy.port}/"
                            f"{dbname}", "cut", **settings)
        other = ChaosHost(chaos_root, pg_url, "other", **settings)
        task = cut_off.add("partitioned", "--queue", "dev")
        (chaos_root / "locks" / f"hold-{task}").touch()
        cut_off.run_once()
        log = chaos_root / "agents.log"
        wait_for(lambda: [e for e in read_events(log) if e[0] == "start"], 15, "a start")
        cut_at = time.monotonic()
        proxy.cut()
        wait_for(lambda: [e for e in read_events(log) if e[0] == "term" and e[3] == "cut"],
                 20, "the cut-off host to stop its agent")
        stopped_after = time.monotonic() - cut_at
        wait_for(lambda: list((cut_off.state / "outbox").glob("*.json")), 15,
                 "its result to wait in the outbox")
        wait_for(lambda: other.run_once(expect=None) and [
            e for e in read_events(log) if e[0] == "start" and e[3] == "other"], 30,
            "the other host to take the task over")
        taken_after = time.monotonic() - cut_at
        proxy.restore()
        cut_off.run_once()  # delivers the late result: rejected by the token
        assert not list((cut_off.state / "outbox").glob("*.json"))
        with other.store() as store:
            task_now = store.get(task)
            history = store.history(task)
        assert task_now.status == "working" and task_now.attempts == 1
        assert not any(h["detail"].startswith("stalled") for h in history)
        assert (cut_off.runs()[0][1]) == "other"
        (chaos_root / "locks" / f"hold-{task}").unlink()
        wait_for(lambda: other.run_once(expect=None) and
                 other.statuses()[task] == "complete", 30, "the new attempt to finish")
        assert [e[0] for e in read_events(log) if e[0] == "overlap"] == []
        print(f"\npartition: agent stopped {stopped_after:.1f} s after the cut "
              f"(window 2 s), task taken over after {taken_after:.1f} s "
              f"(HOST_TIMEOUT_SEC 5); late result rejected")
    finally:
        proxy.close()


def test_postgres_restart_during_a_run_of_50_tasks(chaos_root, pg_server, pg_url):
    host = ChaosHost(chaos_root, pg_url, "solo", LOOP_INTERVAL_SEC=2, HEARTBEAT_SEC=1,
                     STALE_MULTIPLIER=6, HOST_TIMEOUT_SEC=30)
    backlog = chaos_root / "backlog.json"
    backlog.write_text(json.dumps([{"title": f"t{i}", "queue": "dev"} for i in range(50)]))
    assert host.cli("task", "import", str(backlog)).returncode == 0
    host.start()
    log = chaos_root / "agents.log"
    wait_for(lambda: sum(e[0] == "end" for e in read_events(log)) >= 10, 60, "10 tasks done")
    restarted = time.monotonic()
    pg_server.restart()
    restart_sec = time.monotonic() - restarted
    wait_for(lambda: host.all_done() and len(host.statuses()) == 50, 120,
             "every task to complete after the restart")
    assert stop(host.daemon) == 0
    events = read_events(log)
    starts = Counter(e[1] for e in events if e[0] == "start")
    with host.store() as store:
        completes = Counter(
            t.id for t in store.list_tasks()
            for h in store.history(t.id) if h["to_status"] == "complete")
    print(f"\nrestart: PostgreSQL down {restart_sec:.1f} s; 50 tasks complete, "
          f"{sum(starts.values())} agent starts, outbox "
          f"{len(list((host.state / 'outbox').glob('*.json')))}")
    assert set(starts.values()) == {1} and len(starts) == 50
    assert set(completes.values()) == {1} and len(completes) == 50
    assert host.runs() == []
