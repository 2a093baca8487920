"""The long chaos run (``make chaos``; not part of ``make test``).

Schedulers (``run --once``), wrappers and agents are SIGKILLed at random moments while a
backlog flows through, on the local store and on a fake TinyTask server that also loses
answers now and then. Until CHAOS_KILLS kill events per source (default 500) have
happened, the backlog is topped up; then passes run undisturbed until it drains.

Checked at the end: every task complete, no two runs of one task overlapped, nothing
left behind (no lease, no outbox entry, no task stranded in working). The figures are
printed (run with ``-s``) and written to ``chaos-<source>.json`` in the test directory.
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

import psutil
import pytest
from fake_tinytask import FakeTinyTask
from test_reconciler import Scheduler, kill_leftovers

from scheduler.state.leases import LeaseStore

pytestmark = [pytest.mark.processes, pytest.mark.chaos]

KILLS = int(os.environ.get("CHAOS_KILLS", "500"))
SEED = int(os.environ.get("CHAOS_SEED", "20261202"))
BATCH = 24

CHAOS_AGENT = r'''
import os, random, signal, sys, time
LOG = {log!r}
task = sys.argv[1]

def record(kind):
    line = "%s %s %d %.6f %s\n" % (kind, task, os.getpid(), time.time(),
                                   os.environ.get("TINYSCHEDULER_ATTEMPT", "?"))
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, line.encode())
    os.close(fd)

def on_term(signum, frame):
    record("term")
    os._exit(143)

signal.signal(signal.SIGTERM, on_term)
record("start")
time.sleep(random.uniform(0.0, 0.4))
record("end")
'''


def overlaps(events) -> list[tuple]:
    """Pairs of runs of one task whose [start, end] intervals overlap; an agent's end is
    its own end/term/fail record, or the moment the test saw it killed."""
    runs: dict[str, dict[int, list[float]]] = defaultdict(dict)
    for e in events:
        if e.kind == "start":
            runs[e.task][e.pid] = [e.at, float("inf")]
        elif e.kind in ("end", "term", "fail", "killed") and e.pid in runs[e.task]:
            span = runs[e.task][e.pid]
            span[1] = min(span[1], e.at)
    bad = []
    for task_id, by_pid in runs.items():
        spans = sorted(by_pid.values())
        for (s1, e1), (s2, e2) in zip(spans, spans[1:], strict=False):
            if s2 < e1:
                bad.append((task_id, (s1, e1), (s2, e2)))
    return bad


class Chaos:
    """One source's run: a scheduler directory, a backlog and the kills."""

    def __init__(self, s: Scheduler, source: str, fake: FakeTinyTask | None) -> None:
        self.s, self.source, self.fake = s, source, fake
        self.rng = random.Random(f"{SEED}-{source}")
        self.kills: Counter[str] = Counter()
        self.passes = 0
        self.added = 0
        script = s.base / "chaos_agent.py"
        script.write_text(CHAOS_AGENT.format(log=str(s.agent_log)))
        s.settings["AGENT_COMMAND"] = (f"{shlex.quote(sys.executable)} -S "
                                       f"{shlex.quote(str(script))} {{task_id}}")
        self.env = s.environ()

    # the backlog

    def statuses(self) -> dict[str, str]:
        if self.fake is not None:
            return {str(n): t["status"] for n, t in list(self.fake.tasks.items())}
        return self.s.statuses()

    def top_up(self) -> None:
        if sum(1 for status in self.statuses().values() if status != "complete") >= BATCH:
            return
        if self.fake is not None:
            for _ in range(BATCH):
                self.fake.add_task(f"chaos {self.added}", queue="dev")
                self.added += 1
            return
        spec = [{"title": f"chaos {self.added + i}", "queue": "dev"} for i in range(BATCH)]
        path = self.s.base / "batch.json"
        path.write_text(json.dumps(spec))
        assert self.s.cli("task", "import", str(path)).returncode == 0
        self.added += BATCH

    # the kills

    def one_pass(self, *, kill: bool) -> None:
        proc = self.s.popen("run", "--once", env=self.env)
        if kill and self.rng.random() < 0.5:
            time.sleep(self.rng.uniform(0.0, 0.3))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                self.kills["scheduler"] += 1
        proc.communicate(timeout=120)
        self.s.children.remove(proc)
        self.passes += 1

    def kill_runs(self) -> None:
        for lease in LeaseStore(self.s.running).list(quarantine=False):
            roll = self.rng.random()
            if roll < 0.12:
                self._kill(lease.pid, lease.pid_started_at, "wrapper")
            elif roll < 0.24 and self._kill(lease.agent_pid, lease.agent_started_at, "agent"):
                # a SIGKILLed agent records no end: the test records it once it is gone
                line = f"killed {lease.task_id} {lease.agent_pid} {time.time():.6f} ?\n"
                with open(self.s.agent_log, "a", encoding="ascii") as log:
                    log.write(line)

    def _kill(self, pid: int | None, started: float | None, kind: str) -> bool:
        if not pid or not started:
            return False
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - started) > 0.01:
                return False  # not the recorded process (never signal a reused pid)
            proc.kill()
            self._wait_dead(proc)
        except psutil.Error:
            return False
        self.kills[kind] += 1
        return True

    def _wait_dead(self, proc: psutil.Process) -> None:
        """Return once a killed process is gone (reaped)."""
        proc.wait(timeout=10)

    def lose_answers(self) -> None:
        if self.fake is not None and self.rng.random() < 0.05:
            self.fake.lose_next(1, method=self.rng.choice(["PATCH", "POST", "GET"]))
            self.kills["lost answer"] += 1

    # the run

    def run(self) -> dict:
        began = time.monotonic()
        while sum(self.kills.values()) < KILLS:
            self.top_up()
            self.lose_answers()
            self.one_pass(kill=True)
            self.kill_runs()
        chaos_sec = time.monotonic() - began
        drain_deadline = time.monotonic() + 600
        while not self.drained():
            assert time.monotonic() < drain_deadline, self.leftovers()
            self.one_pass(kill=False)
            time.sleep(0.1)
        return self.figures(chaos_sec, time.monotonic() - began)

    def drained(self) -> bool:
        return (all(status == "complete" for status in self.statuses().values())
                and not LeaseStore(self.s.running).list(quarantine=False)
                and not list((self.s.state / "outbox").glob("*.json")))

    def leftovers(self) -> dict:
        return {"not complete": {k: v for k, v in self.statuses().items() if v != "complete"},
                "leases": [lease.task_id for lease in LeaseStore(self.s.running).list()],
                "outbox": [p.name for p in (self.s.state / "outbox").glob("*.json")]}

    def figures(self, chaos_sec: float, total_sec: float) -> dict:
        events = self.s.events()
        ends: defaultdict[str, int] = defaultdict(int)
        for event in events:
            if event.kind == "end":
                ends[event.task] += 1
        status = json.loads(self.s.cli("status", "--json").stdout)
        return {
            "source": self.source, "seed": SEED, "kills": dict(self.kills),
            "kill_events": sum(self.kills.values()), "passes": self.passes,
            "tasks": len(self.statuses()), "agent_starts": sum(
                1 for e in events if e.kind == "start"),
            "tasks_that_succeeded_more_than_once": sum(1 for n in ends.values() if n > 1),
            "overlapping_runs": len(overlaps(events)),
            "stranded_after": len(status.get("stranded", [])),
            "chaos_sec": round(chaos_sec, 1), "total_sec": round(total_sec, 1),
            "tasks_missing_a_success": sorted(set(self.statuses()) - set(ends)),
        }


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("source", ["local", "tinytask"])
def test_chaos(tmp_path, source):
    fake = FakeTinyTask().start() if source == "tinytask" else None
    settings = dict(SPAWN_TIMEOUT_SEC=1, MAX_ATTEMPTS=1000, HEARTBEAT_SEC=1,
                    STALE_MULTIPLIER=2, KILL_GRACE_SEC=1, RETRY_BACKOFF_SEC=0)
    if fake is not None:
        settings.update(TASK_SOURCE="tinytask", MCP_ENDPOINT=fake.url)
    s = Scheduler(tmp_path, {"vaela": "dev", "damien": "dev"}, {"vaela": 3, "damien": 3},
                  **settings)
    try:
        figures = Chaos(s, source, fake).run()
    finally:
        kill_leftovers(tmp_path)
        if fake is not None:
            fake.close()
    (tmp_path / f"chaos-{source}.json").write_text(json.dumps(figures, indent=1))
    print(f"\nchaos figures: {json.dumps(figures)}")
    assert figures["kill_events"] >= KILLS
    assert figures["overlapping_runs"] == 0
    assert figures["stranded_after"] == 0
    assert figures["tasks_missing_a_success"] == []
