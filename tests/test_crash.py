"""Crash safety: a scheduler SIGKILLed anywhere in the spawn protocol loses nothing and
never runs a task twice at once.

The test hook ``_TINYSCHEDULER_TEST_HOOK_CRASH_AT=<point>`` makes the scheduler SIGKILL
itself at that point; the randomized test SIGKILLs ``run --once`` processes from outside
at random moments.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import time
from collections import defaultdict
from dataclasses import replace
from datetime import timedelta

import pytest
from test_reconciler import Scheduler, history_moves, wait_for
from test_reconciler import make_scheduler as make_scheduler  # noqa: F401 - the fixture

from scheduler import clock, faults
from scheduler.state.leases import LeaseStore

pytestmark = pytest.mark.processes


def crash_pass(s: Scheduler, point: str) -> None:
    env = s.environ()
    env[faults.CRASH_AT_VARIABLE] = point
    proc = s.cli("run", "--once", env=env)
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr)


def assert_each_task_ran_once(s: Scheduler, ids: list[str]) -> None:
    assert s.statuses() == {task_id: "complete" for task_id in ids}
    events = s.events()
    for task_id in ids:
        starts = [e for e in events if e.kind == "start" and e.task == task_id]
        ends = [e for e in events if e.kind == "end" and e.task == task_id]
        assert len(ends) == 1, (task_id, events)
        assert len(starts) == 1, (task_id, events)


@pytest.mark.parametrize("point", faults.POINTS)
def test_a_crash_at_each_point_of_the_protocol_loses_nothing(make_scheduler, point):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 2}, SPAWN_TIMEOUT_SEC=1)
    ids = [s.add(f"task {i}", "--queue", "dev") for i in range(3)]
    if point == "after-reclaim-report":
        # Something to reclaim first: a spawn abandoned right after its claim.
        crash_pass(s, "after-claim")
        [lease] = s.leases().values()
        assert lease.state == "starting"
        # as if the spawn was abandoned an hour ago: older than SPAWN_TIMEOUT_SEC
        hour_ago = clock.now() - timedelta(hours=1)
        LeaseStore(s.running).update(replace(
            lease, started_at=hour_ago, heartbeat=hour_ago,
            started_mono=None if lease.started_mono is None else lease.started_mono - 3600,
            heartbeat_mono=None if lease.heartbeat_mono is None else lease.heartbeat_mono - 3600))
    crash_pass(s, point)
    if point == "after-reclaim-report":
        # The requeue was reported but the lease is still there: it is reclaimed again
        # (the second report is ignored) and the task runs once.
        assert len(s.leases()) == 1
    elif point in ("after-lease", "after-claim"):
        assert [lease.state for lease in s.leases().values()] == ["starting"]

    s.pass_until(s.all_done, timeout=30)

    assert_each_task_ran_once(s, ids)
    wait_for(lambda: not s.leases(), what="every lease to be dropped")
    crashed = ids[0]
    history = s.history(crashed)
    if point in ("after-claim", "after-reclaim-report"):
        assert len(history_moves(history, "idle", "working")) == 2
    else:
        assert len(history_moves(history, "idle", "working")) == 1
    # A spawn abandoned by a crashed scheduler never ran its agent: no attempt is counted.
    assert s.tasks()[crashed].attempts == 0


def overlaps(events) -> list[tuple]:
    """Pairs of runs of one task whose [start, end] intervals overlap."""
    runs: dict[str, dict[int, list[float]]] = defaultdict(dict)
    for e in events:
        if e.kind == "start":
            runs[e.task][e.pid] = [e.at, float("inf")]
        elif e.kind in ("end", "term", "fail"):
            runs[e.task][e.pid][1] = e.at
    bad = []
    for task_id, by_pid in runs.items():
        spans = sorted(by_pid.values())
        for (s1, e1), (s2, e2) in zip(spans, spans[1:], strict=False):
            if s2 < e1:
                bad.append((task_id, (s1, e1), (s2, e2)))
    return bad


TASKS = int(os.environ.get("CRASH_TEST_TASKS", "60"))


def test_random_sigkills_of_the_scheduler_lose_nothing(make_scheduler):
    # A scheduler killed between claim and spawn costs the task an attempt (the reclaim
    # counts as one), so a task can be parked after a few unlucky kills: allow plenty.
    s = make_scheduler({"vaela": "dev", "damien": "dev"}, {"vaela": 3, "damien": 3},
                       SPAWN_TIMEOUT_SEC=1, MAX_ATTEMPTS=100)
    spec = [{"title": f"task {i}", "queue": "dev"} for i in range(TASKS)]
    (s.base / "backlog.json").write_text(json.dumps(spec))
    assert s.cli("task", "import", str(s.base / "backlog.json")).returncode == 0
    rng = random.Random(1234)
    env = s.environ()
    kills = 0
    # Kill moments are drawn within the time a whole pass takes on this machine (measured
    # on the passes left alone), so about as many kills land mid-pass on a slow machine as
    # on a fast one. Passes go on until the backlog is done *and* enough kills landed.
    durations = [0.25]
    deadline = time.monotonic() + max(90, TASKS * 1.5)
    while not s.all_done() or kills < 10:
        assert time.monotonic() < deadline, (kills, [
            (t.id, t.status, s.history(t.id), s.leases().get(t.id),
             [e for e in s.events() if e.task == t.id])
            for t in s.tasks().values() if t.status != "complete"])
        began = time.monotonic()
        proc = s.popen("run", "--once", env=env)
        if rng.random() < 0.75:
            time.sleep(rng.uniform(0.0, 0.9) * statistics.median(durations))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate(timeout=30)
        else:
            proc.communicate(timeout=30)
            durations.append(time.monotonic() - began)
        time.sleep(0.05)

    events = s.events()
    assert overlaps(events) == []
    ends = defaultdict(int)
    for e in events:
        if e.kind == "end":
            ends[e.task] += 1
    assert set(ends) == {str(i) for i in range(1, TASKS + 1)}
    for task_id, count in ends.items():
        # A task completes once; a second successful run would mean it was run twice.
        assert count == 1, (task_id, [e for e in events if e.task == task_id])
