"""``task log`` (with ``--follow``), the additions to ``status`` (titles, runtimes, log
paths, the backlog, ``--watch``) and the scheduler log's outcome and start-up lines, on
real passes, wrappers and agents."""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_reconciler import Scheduler, alive, wait_for
from test_reconciler import make_scheduler as make_scheduler  # noqa: F401 - the fixture

pytestmark = pytest.mark.processes

FAKE_AGENT = Path(__file__).with_name("fake_agent.py")


def stepped_agent(s: Scheduler) -> None:
    """An agent that prints ``first``, waits for ``go1``, prints ``second``, waits for
    ``go2`` and succeeds (task titles play no part)."""
    steps = ["print", "first line", "wait", str(s.base / "go1"), "print", "second line",
             "wait", str(s.base / "go2")]
    s.settings["AGENT_COMMAND"] = " ".join(shlex.quote(p) for p in (
        sys.executable, "-S", str(FAKE_AGENT), *steps))


class Reader:
    """Collects a child's stdout without blocking, so a test can wait for a line while
    the child keeps running."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.fd = proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.data = b""

    def pump(self) -> bytes:
        while select.select([self.fd], [], [], 0)[0]:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                break
            self.data += chunk
        return self.data

    def wait_for(self, needle: bytes, what: str) -> None:
        wait_for(lambda: needle in self.pump(), what=what)


def start_with_sigint_ignored(s: Scheduler, *args: str) -> subprocess.Popen:
    """The CLI started the way a script's background job starts it: with SIGINT ignored
    (inherited across exec, so Python leaves it ignored unless the command says
    otherwise)."""
    ignore = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
              "os.execv(sys.argv[1], sys.argv[1:])")
    child = subprocess.Popen([sys.executable, "-c", ignore, *s.argv(*args)], env=s.environ(),
                             cwd=s.base, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    s.children.append(child)
    return child


def log_lines(s: Scheduler) -> list[str]:
    return s.log_text().splitlines()


def test_task_log_follow_streams_lines_and_exits_with_the_outcome(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1})
    stepped_agent(s)
    task_id = s.add("streamed <b>task</b>", "--queue", "dev")
    s.run_once()
    log = s.state / "logs" / "tasks" / task_id / "attempt-1.log"
    wait_for(lambda: log.exists() and "first line" in log.read_text(), what="the first line")

    follower = subprocess.Popen(s.argv("task", "log", task_id, "--follow"), env=s.environ(),
                                cwd=s.base, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    s.children.append(follower)
    out = Reader(follower)
    out.wait_for(b"first line", "the follower to print the first line")
    assert follower.poll() is None
    (s.base / "go1").touch()
    out.wait_for(b"second line", "the follower to print a line written after it started")
    assert follower.poll() is None, "the attempt is still running: follow goes on"
    (s.base / "go2").touch()

    follower.wait(timeout=30)
    rest = follower.stdout.read()
    text = (out.data + rest).decode()
    assert follower.returncode == 0
    assert text.index("first line") < text.index("second line")
    assert re.search(r"outcome succeeded, exit code 0", text)
    err = follower.stderr.read().decode()
    assert re.search(rf"attempt 1 of task {task_id} ended: outcome succeeded, exit code 0",
                     err), err

    # Without --follow: the whole log at once; --attempt picks one; errors exit 2.
    plain = s.cli("task", "log", task_id)
    assert plain.returncode == 0 and plain.stdout == log.read_text()
    assert s.cli("task", "log", task_id, "--attempt", "1").stdout == plain.stdout
    missing = s.cli("task", "log", task_id, "--attempt", "7")
    assert missing.returncode == 2
    assert f"task {task_id} has no log for attempt 7 (attempts with a log: 1)" in missing.stderr
    none = s.cli("task", "log", "999")
    assert none.returncode == 2 and "task 999 has no attempt log" in none.stderr
    bad = s.cli("task", "log", "../etc")
    assert bad.returncode == 2 and "invalid task id '../etc'" in bad.stderr
    finished = s.cli("task", "log", task_id, "--follow")
    assert finished.returncode == 0 and finished.stdout == plain.stdout
    assert "ended: outcome succeeded" in finished.stderr


def test_status_shows_running_tasks_backlog_and_watch(make_scheduler):
    s = make_scheduler({"vaela": "dev", "damien": "ops"}, {"vaela": 1, "damien": 1},
                       RETRY_BACKOFF_SEC="3600", MAX_ATTEMPTS="2")
    long_title = "a running task with a rather long title that gets shortened hold"
    running = s.add(long_title, "--queue", "dev")
    s.run_once()
    wait_for(lambda: s.started(running), what="the task to start")
    blocker = s.add("waits in line", "--queue", "dev")
    s.add("blocked one", "--queue", "dev", "--blocked-by", blocker)
    failing = s.add("fail once", "--queue", "ops")
    s.run_once()
    wait_for(lambda: s.tasks()[failing].status == "idle" and s.tasks()[failing].attempts == 1,
             what="the failing task to be requeued with a backoff")
    parked = s.add("fail for good", "--agent", "damien")
    with s.store() as store:  # park it the way the scheduler does after MAX_ATTEMPTS
        store.claim(parked, "damien", "tok")
        from scheduler.sources.base import Result, RetryPolicy
        store.report(Result(task_id=parked, agent="damien", attempt=1, outcome="failed",
                            token="tok", summary="failed"), RetryPolicy(1, 0))

    proc = s.cli("status", "--json")
    report = json.loads(proc.stdout)
    [row] = report["leases"]
    assert row["title"] == long_title
    assert row["log"] == str(s.state / "logs" / "tasks" / running / "attempt-1.log")
    assert report["backlog"] == {
        "-": {"ready": 0, "blocked": 0, "backoff": 0, "working": 0, "parked": 1,
              "complete": 0, "cancelled": 0},
        "dev": {"ready": 1, "blocked": 1, "backoff": 0, "working": 1, "parked": 0,
                "complete": 0, "cancelled": 0},
        "ops": {"ready": 0, "blocked": 0, "backoff": 1, "working": 0, "parked": 0,
                "complete": 0, "cancelled": 0},
    }
    text = s.cli("status").stdout
    assert re.search(rf"task {running}\s+vaela\s+running\s+pid \d+\s+runtime\s+[\d.]+s\s+"
                     r"heartbeat\s+[\d.]+s ago\s+attempt 1\s+a running task with a rather "
                     r"long tit\.\.\.", text), text
    assert f"    log {row['log']}" in text
    assert re.search(r"BACKLOG\s+queue\s+ready\s+blocked\s+backoff\s+working\s+parked", text)
    assert re.search(r"dev\s+1\s+1\s+0\s+1\s+0", text)
    assert re.search(r"ops\s+0\s+0\s+1\s+0\s+0", text)

    both = s.cli("status", "--watch", "--json")
    assert both.returncode == 2 and "give --watch or --json, not both" in both.stderr
    for signum in (signal.SIGINT, signal.SIGTERM):
        watcher = start_with_sigint_ignored(s, "status", "--watch")
        out = Reader(watcher)
        wait_for(lambda out=out: out.pump().count(b"\x1b[H\x1b[2J") >= 2, what="two redraws")
        assert b"BACKLOG" in out.data
        watcher.send_signal(signum)
        # ends at once (a redraw in progress is cut short); the margin is for a loaded
        # machine measuring coverage, where the interpreter's exit alone takes seconds
        assert watcher.wait(timeout=30) == 0, (signum, watcher.stderr.read())
    s.release()
    wait_for(lambda: not s.leases(), what="the running task to end")


def test_scheduler_log_has_start_up_and_outcome_lines(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 2}, RETRY_BACKOFF_SEC="3600")
    good = s.add("works", "--queue", "dev")
    bad = s.add("fail here", "--queue", "dev")
    s.run_once()
    wait_for(lambda: s.statuses()[good] == "complete" and s.tasks()[bad].attempts == 1,
             what="both attempts to end")
    wait_for(lambda: len(outcomes(s)) == 2, what="two outcome records")

    lines = log_lines(s)
    start = [line for line in lines if "scheduler starting (once)" in line]
    assert start and "source=local" in start[0] and "agents=vaela=2" in start[0] \
        and "interval_sec=60" in start[0]
    ok = [line for line in lines if f"task {good} succeeded" in line]
    assert ok and " INFO " in ok[0] and f"task={good}" in ok[0] and "agent=vaela" in ok[0] \
        and "attempt=1" in ok[0] and "outcome=succeeded" in ok[0] and "duration_sec=" in ok[0]
    failed = [line for line in lines if f"task {bad} failed" in line]
    assert failed and " WARNING " in failed[0] and "action=requeued" in failed[0]
    by_task = {entry["task"]: entry for entry in outcomes(s)}
    assert by_task[good]["outcome"] == "succeeded" and by_task[good]["action"] == "complete"
    assert by_task[bad]["outcome"] == "failed" and by_task[bad]["agent"] == "vaela"
    assert oct((s.state / "outcomes.jsonl").stat().st_mode & 0o777) == "0o600"


def outcomes(s: Scheduler) -> list[dict]:
    try:
        text = (s.state / "outcomes.jsonl").read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines()]


def test_reclaimed_attempts_get_an_outcome_line_too(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1}, RETRY_BACKOFF_SEC="3600")
    task_id = s.add("hold until killed", "--queue", "dev")
    s.run_once()
    lease = wait_for(lambda: (s.leases().get(task_id) if s.leases().get(task_id)
                              and s.leases()[task_id].agent_pid else None), what="a lease")
    for pid in (lease.agent_pid, lease.pid):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(lease.agent_pid) and not alive(lease.pid),
             what="the wrapper and agent to die")
    s.pass_until(lambda: s.tasks()[task_id].status == "idle", what="the reclaim")
    [entry] = outcomes(s)
    assert (entry["task"], entry["outcome"], entry["action"]) == (task_id, "reclaimed",
                                                                  "requeued")
    assert any(f"task {task_id} reclaimed" in line and "outcome=reclaimed" in line
               for line in log_lines(s))
    time.sleep(0)
