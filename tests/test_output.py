"""Output that used to mislead: a failed task's reason, the task list's columns, times in
skip reasons, and the wrapper's process title in ``ps``."""

from __future__ import annotations

import json
import shlex
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from test_reconciler import Scheduler, wait_for
from test_reconciler import make_scheduler as make_scheduler  # noqa: F401 - the fixture

from scheduler.config.registry import Agent, Registry
from scheduler.reconcile.planner import plan
from scheduler.sources.base import Result, RetryPolicy, Task
from scheduler.sources.local import LocalStore

FAILING_AGENT = ("import sys; print('cloning the repository', flush=True); "
                 "print('error: ANTHROPIC_API_KEY is not set', file=sys.stderr); sys.exit(3)")


@pytest.mark.processes
def test_a_failed_task_says_why_once_with_the_agents_last_output(make_scheduler):
    s: Scheduler = make_scheduler(
        {"vaela": "dev"}, {"vaela": 1}, MAX_ATTEMPTS=1,
        AGENT_COMMAND=f"{shlex.quote(sys.executable)} -S -c {shlex.quote(FAILING_AGENT)}")
    task_id = s.add("needs a key", "--queue", "dev")
    s.run_once()
    wait_for(lambda: s.statuses().get(task_id) == "failed", what="the task to park")

    shown = s.cli("task", "show", task_id)
    assert shown.returncode == 0, shown.stderr
    last_error = next(line for line in shown.stdout.splitlines()
                      if line.startswith("  last error"))
    assert last_error.split(None, 2)[2] == \
        "attempt 1 failed, exit code 3: error: ANTHROPIC_API_KEY is not set"
    result = shown.stdout.split("  result", 1)[1].split("history:", 1)[0]
    assert "failed: exit code 3" in result and "log " in result
    assert "cloning the repository" in result and "ANTHROPIC_API_KEY is not set" in result
    data = json.loads(s.cli("task", "show", task_id, "--json").stdout)
    assert "ANTHROPIC_API_KEY is not set" in data["result_summary"]


def test_last_error_states_each_fact_once(tmp_path):
    store = LocalStore(tmp_path / "tasks.db")
    task_id = store.add_task("t", queue="dev").id
    store.claim(task_id, "vaela", "tok")
    summary = ("failed: exit code 3, 0.2 s, attempt 1, host vm, log /x/attempt-1.log\n"
               "--- last output ---\nstep one\nerror: no network")
    store.report(Result(task_id=task_id, agent="vaela", attempt=1, outcome="failed",
                        token="tok", summary=summary, exit_code=3),
                 RetryPolicy(max_attempts=3, backoff_sec=0))
    got = store.get(task_id)
    assert got.last_error == "attempt 1 failed, exit code 3: error: no network"
    assert store.details(task_id)["result_summary"] == summary
    store.close()


def test_task_list_shows_runs_and_only_open_blockers(tmp_path, monkeypatch, capsys):
    from scheduler.cli import main

    monkeypatch.chdir(tmp_path)
    for key in [k for k in __import__("os").environ if k.startswith("TINYSCHEDULER_")]:
        monkeypatch.delenv(key)
    store = LocalStore(tmp_path / "state" / "tasks.db")
    done = store.add_task("done first time", queue="dev").id
    open_one = store.add_task("still open", queue="dev").id
    waiting = store.add_task("waits", queue="dev", blocked_by=[done, open_one]).id
    store.claim(done, "vaela", "tok")
    store.report(Result(task_id=done, agent="vaela", attempt=1, outcome="succeeded",
                        token="tok", summary="ok", exit_code=0),
                 RetryPolicy(max_attempts=3, backoff_sec=0))
    store.close()

    assert main(["task", "list"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert rows["ID"][5:7] == ["RUNS", "BLOCKED"]
    assert rows[done][1] == "complete" and rows[done][5] == "1"
    assert rows[open_one][5] == "0"
    assert rows[waiting][6] == open_one  # the complete blocker is not listed


def test_a_backoff_skip_reason_ends_in_z_like_every_other_time():
    now = datetime(2026, 12, 2, 20, 0, tzinfo=timezone.utc)
    later = now + timedelta(seconds=9, microseconds=128000)
    result = plan([], [Task(id="1", title="t", queue="dev", not_before=later)],
                  Registry((Agent("vaela", "dev", 1),), legacy=False), now)
    assert result.skips[0].reason == "retry backoff until 2026-12-02T20:00:09.128Z"


@pytest.mark.processes
@pytest.mark.parametrize("spawn_mode", ["fork", "exec"])
def test_ps_shows_a_wrapper_as_a_wrapper(make_scheduler, spawn_mode):
    s: Scheduler = make_scheduler({"vaela": "dev"}, {"vaela": 1}, SPAWN_MODE=spawn_mode)
    task_id = s.add("hold on", "--queue", "dev")
    s.run_once()
    lease = wait_for(lambda: s.leases().get(task_id) if s.leases().get(task_id)
                     and s.leases()[task_id].agent_pid else None, what="a running lease")
    proc = Path(f"/proc/{lease.pid}")
    cmdline = wait_for(lambda: (proc / "cmdline").read_bytes().replace(b"\0", b" ").strip()
                       .decode() if b"wrapper task" in (proc / "cmdline").read_bytes() else None,
                       what="the wrapper's title")
    assert cmdline == f"tinyscheduler-wrapper task {task_id} vaela"
    assert (proc / "comm").read_text().strip() == "tinyscheduler-w"
    s.release()
    wait_for(lambda: s.statuses().get(task_id) == "complete", what="the task to finish")
