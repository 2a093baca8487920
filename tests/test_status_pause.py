"""``status`` (table and JSON, health and exit code) and ``pause``/``resume``."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from test_reconciler import Scheduler, claim, wait_for, write_lease
from test_reconciler import make_scheduler as make_scheduler  # noqa: F401 - the fixture

from scheduler import clock
from scheduler.sources.base import Result
from scheduler.state import outbox

pytestmark = pytest.mark.processes


def status(s: Scheduler, *args: str):
    proc = s.cli("status", *args)
    return proc.returncode, proc.stdout, proc.stderr


def status_json(s: Scheduler) -> tuple[int, dict]:
    code, out, err = status(s, "--json")
    assert out, err
    return code, json.loads(out)


def rewrite_last_pass(s: Scheduler, **changes) -> None:
    path = s.state / "last-pass.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def running_lease(s: Scheduler, task_id: str):
    return wait_for(lambda: s.leases().get(task_id) if s.leases().get(task_id)
                    and s.leases()[task_id].agent_pid else None, what="a running lease")


def test_status_table_and_json(make_scheduler):
    s = make_scheduler({"vaela": "dev", "damien": "ops"}, {"vaela": 2, "damien": 1})
    task_id = s.add("long hold", "--queue", "dev")
    s.run_once()
    running_lease(s, task_id)
    outbox.write(s.state / "outbox", Result(task_id="99", agent="vaela", attempt=1,
                                            outcome="succeeded", token="t0k", summary="x"))

    code, report = status_json(s)

    assert code == 0 and report["healthy"] is True and report["problems"] == []
    assert report["agents"] == [
        {"agent": "vaela", "queue": "dev", "used": 1, "limit": 2},
        {"agent": "damien", "queue": "ops", "used": 0, "limit": 1},
    ]
    [row] = report["leases"]
    assert (row["task"], row["agent"], row["state"], row["attempt"]) == (
        task_id, "vaela", "running", 1)
    assert 0 <= row["age_sec"] < 30 and 0 <= row["heartbeat_age_sec"] < 30
    assert report["outbox_pending"] == 1
    assert report["paused"] == "not paused"
    last = report["last_pass"]
    assert last["mode"] == "once" and last["spawned"] == 1 and last["errors"] == []
    assert 0 <= last["age_sec"] < 30
    assert report["source"]["kind"] == "local" and report["source"]["ok"] is True

    code, text, _ = status(s)
    assert code == 0
    assert re.search(r"vaela\s+queue dev\s+1/2", text)
    assert re.search(r"damien\s+queue ops\s+0/1", text)
    assert "RUNNING (1)" in text
    assert re.search(rf"task {task_id}\s+vaela\s+running\s+pid \d+.*heartbeat.*attempt 1", text)
    assert "OUTBOX   1 result(s) waiting" in text
    assert "DISPATCH not paused" in text
    assert re.search(r"LAST PASS \S+ \(\d+ s ago, once\): 1 spawned", text)
    assert "SOURCE   local: ok" in text
    assert text.rstrip().endswith("healthy")
    s.release()


def test_status_is_unhealthy_after_errors_or_a_stale_daemon(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1}, LOOP_INTERVAL_SEC=10)
    code, _, err = status(s)
    assert code == 1  # no pass has run yet
    s.run_once()
    assert status(s)[0] == 0

    rewrite_last_pass(s, errors=["task 3: spawn failed: boom"])
    code, report = status_json(s)
    assert code == 1 and report["problems"] == ["last pass had 1 error(s)"]
    code, text, _ = status(s)
    assert code == 1 and "error: task 3: spawn failed: boom" in text
    assert "UNHEALTHY: last pass had 1 error(s)" in text

    old = clock.to_iso(clock.now() - timedelta(seconds=40))
    rewrite_last_pass(s, errors=[], mode="daemon", time=old)
    code, report = status_json(s)
    assert code == 1
    # the status process may start a few seconds after the file was written
    assert len(report["problems"]) == 1
    assert re.fullmatch(r"last daemon pass is (4\d|[5-9]\d) s old \(more than 3 x 10 s\)",
                        report["problems"][0]), report["problems"]

    rewrite_last_pass(s, mode="daemon", time=clock.to_iso(clock.now() - timedelta(seconds=15)))
    assert status(s)[0] == 0
    rewrite_last_pass(s, mode="once", time=old)  # a timer's pass may be old: still healthy
    assert status(s)[0] == 0


def test_status_names_a_failing_source(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1})
    s.run_once()
    proc = s.cli("status", "--json", TASK_SOURCE="tinytask", MCP_ENDPOINT="http://127.0.0.1:9")
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and report["source"]["ok"] is False
    assert "127.0.0.1:9" in report["source"]["detail"]
    assert any(p.startswith("task source unhealthy") for p in report["problems"])


def test_pause_everything_stops_dispatch_but_not_runs_or_reclaims(make_scheduler,
                                                                   spawn_python):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 3}, RETRY_BACKOFF_SEC=600,
                       HOSTNAME="vm-test-host")
    running = s.add("running hold", "--queue", "dev")
    s.run_once()
    running_lease(s, running)

    proc = s.cli("pause")
    assert proc.returncode == 0
    assert "all dispatch paused (running tasks continue; reclaims still happen)" in proc.stdout
    assert json.loads((s.state / "paused.json").read_text()) == {
        "everything": True, "agents": [], "queues": []}
    waiting = s.add("waits for resume", "--queue", "dev")
    orphan = s.add("orphan", "--queue", "dev")
    gone = spawn_python("pass")
    gone.wait()
    claim(s, orphan, "vaela", "tok-orphan")
    write_lease(s, orphan, spawn_token="tok-orphan", pid=gone.pid, pid_started_at=1.0)

    s.run_once()

    last = json.loads((s.state / "last-pass.json").read_text())
    assert last["paused"] == "all dispatch paused"
    assert last["spawned"] == 0 and last["reclaimed"] == {"pid-dead": 1}
    # the new task is skipped as paused; the requeued orphan waits out its retry backoff
    # (a pass shows the planner only ready tasks: those in backoff are not listed)
    assert last["skipped"] == {"paused": 1}
    assert s.statuses()[waiting] == "idle" and s.statuses()[orphan] == "idle"
    assert s.tasks()[orphan].attempts == 1 and s.tasks()[orphan].not_before is not None
    assert "DISPATCH all dispatch paused" in status(s)[1]
    s.release(running)
    wait_for(lambda: s.statuses()[running] == "complete", what="the running task to finish")

    proc = s.cli("resume")
    assert proc.returncode == 0 and "not paused" in proc.stdout
    assert json.loads((s.state / "paused.json").read_text())["everything"] is False
    s.run_once()
    wait_for(lambda: s.statuses()[waiting] == "complete", what="dispatch after resume")
    assert json.loads((s.state / "last-pass.json").read_text())["paused"] == "not paused"


def test_pause_one_agent_or_one_queue(make_scheduler):
    s = make_scheduler({"vaela": "dev", "damien": "dev", "olga": "ops"},
                       {"vaela": 5, "damien": 5, "olga": 5})
    assert s.cli("pause", "--agent", "vaela").returncode == 0
    assert s.cli("pause", "--queue", "ops").returncode == 0
    assert json.loads((s.state / "paused.json").read_text()) == {
        "everything": False, "agents": ["vaela"], "queues": ["ops"]}
    assert "paused: agent vaela, queue ops" in status(s)[1]
    dev = [s.add(f"dev {i}", "--queue", "dev") for i in range(3)]
    ops = s.add("ops task", "--queue", "ops")
    direct = s.add("for vaela", "--agent", "vaela")

    s.run_once()

    wait_for(lambda: all(s.statuses()[d] == "complete" for d in dev), what="dev tasks")
    assert {s.tasks()[d].assignee for d in dev} == {"damien"}
    assert s.statuses()[ops] == "idle" and s.statuses()[direct] == "idle"
    last = json.loads((s.state / "last-pass.json").read_text())
    assert last["paused"] == "paused: agent vaela, queue ops"
    assert {a["agent"]: a["paused"] for a in last["agents"]} == {
        "vaela": True, "damien": False, "olga": False}

    assert s.cli("resume", "--queue", "ops").returncode == 0
    s.run_once()
    wait_for(lambda: s.statuses()[ops] == "complete", what="the ops task after resume")
    assert s.statuses()[direct] == "idle"
    assert s.cli("resume", "--agent", "vaela").returncode == 0
    s.run_once()
    wait_for(lambda: s.statuses()[direct] == "complete", what="vaela's task after resume")
    assert s.cli("pause", "--agent", "../x").returncode == 2
    assert s.cli("pause", "--agent", "a", "--queue", "b").returncode == 2
