"""End-to-end passes through the ``tinyscheduler`` console script on the local store.

Every pass that may spawn runs as a real ``tinyscheduler run --once`` process (the
scheduler forks its wrappers, which must never happen inside pytest). The agent is a
small script written into the test's directory: it records ``start``/``end`` lines with
its task id and pid in ``agents.log``, and a task whose title contains ``hold`` waits
until ``release/<task id>`` (or ``release/all``) exists.

The helpers here (:class:`Scheduler`, :func:`wait_for`) are shared by the other
end-to-end test modules.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psutil
import pytest

from scheduler import clock
from scheduler.sources.base import SUCCEEDED, Result, RetryPolicy
from scheduler.sources.local import LocalStore
from scheduler.state.leases import RUNNING, STARTING, Lease, LeaseStore

pytestmark = pytest.mark.processes

CONSOLE_SCRIPT = Path(sys.executable).parent / "tinyscheduler"

AGENT_SCRIPT = r'''
import os, signal, sys, time
LOG = {log!r}
RELEASE = {release!r}
task, title = sys.argv[1], " ".join(sys.argv[2:])

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
if "hold" in title:
    mine, everyone = os.path.join(RELEASE, task), os.path.join(RELEASE, "all")
    while not (os.path.exists(mine) or os.path.exists(everyone)):
        time.sleep(0.02)
if "fail" in title:
    record("fail")
    sys.exit(3)
record("end")
'''


def wait_for(condition: Callable[[], object], timeout: float = 15.0, what: str = "condition",
             interval: float = 0.02):
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("TINYSCHEDULER_") and k != "NOTIFY_SOCKET"}


@dataclass
class Event:
    kind: str
    task: str
    pid: int
    at: float
    attempt: str


class Scheduler:
    """A base directory with agents, settings and a recording agent, driven via the CLI."""

    def __init__(self, base: Path, agents: dict[str, str] | None = None,
                 limits: dict[str, int] | None = None, **settings: object) -> None:
        self.base = base
        self.state = base / "state"
        self.running = self.state / "running"
        self.agent_log = base / "agents.log"
        self.release_dir = base / "release"
        self.release_dir.mkdir(exist_ok=True)
        self.children: list[subprocess.Popen] = []
        script = base / "agent.py"
        script.write_text(AGENT_SCRIPT.format(log=str(self.agent_log),
                                              release=str(self.release_dir)))
        if agents is not None:
            (base / "agent-control.json").write_text(json.dumps(
                [{"agentName": name, "agentType": queue} for name, queue in agents.items()]))
        self.settings: dict[str, str] = {
            "AGENT_COMMAND": f"{shlex.quote(sys.executable)} -S {shlex.quote(str(script))} "
                             "{task_id} {title}",
            "HEARTBEAT_SEC": "1",
            "KILL_GRACE_SEC": "1",
            "RETRY_BACKOFF_SEC": "0",
            "TASK_SOURCE": "local",
        }
        if limits:
            self.settings["AGENT_LIMITS"] = ",".join(f"{k}={v}" for k, v in limits.items())
        self.settings.update({k: str(v) for k, v in settings.items()})

    # --- running the CLI --------------------------------------------------------------

    def environ(self, **extra: object) -> dict[str, str]:
        env = clean_environ()
        env.update({f"TINYSCHEDULER_{k}": v for k, v in self.settings.items()})
        for key, value in extra.items():
            name = key if key.isupper() and not key.startswith("_") else key.upper()
            full = name if name.startswith(("TINYSCHEDULER_", "NOTIFY_SOCKET")) \
                else f"TINYSCHEDULER_{name}"
            if value is None:
                env.pop(full, None)
            else:
                env[full] = str(value)
        return env

    def argv(self, *args: str) -> list[str]:
        return [str(CONSOLE_SCRIPT), "--base-path", str(self.base), *args]

    def cli(self, *args: str, timeout: float = 60, env: dict | None = None,
            **extra: object) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), env=env or self.environ(**extra),
                              cwd=self.base, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def popen(self, *args: str, env: dict | None = None, **extra: object) -> subprocess.Popen:
        child = subprocess.Popen(self.argv(*args), env=env or self.environ(**extra),
                                 cwd=self.base, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.children.append(child)
        return child

    def run_once(self, *args: str, expect: int | None = 0, **extra: object):
        proc = self.cli("run", "--once", *args, **extra)
        if expect is not None:
            assert proc.returncode == expect, (proc.returncode, proc.stdout, proc.stderr)
        return proc

    def add(self, title: str, *options: str) -> str:
        proc = self.cli("task", "add", title, *options, "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["id"]

    # --- looking at the state ---------------------------------------------------------

    @contextmanager
    def store(self) -> Iterator[LocalStore]:
        opened = LocalStore(self.state / "tasks.db")
        try:
            yield opened
        finally:
            opened.close()

    def tasks(self) -> dict:
        with self.store() as store:
            return {t.id: t for t in store.list_tasks()}

    def statuses(self) -> dict[str, str]:
        return {task_id: t.status for task_id, t in self.tasks().items()}

    def history(self, task_id: str) -> list[dict]:
        with self.store() as store:
            return store.history(task_id)

    def leases(self) -> dict[str, Lease]:
        return {lease.task_id: lease for lease in LeaseStore(self.running).list()}

    def events(self) -> list[Event]:
        try:
            text = self.agent_log.read_text()
        except FileNotFoundError:
            return []
        events = []
        for line in text.splitlines():
            kind, task, pid, at, attempt = line.split()
            events.append(Event(kind, task, int(pid), float(at), attempt))
        return events

    def started(self, task_id: str) -> list[Event]:
        return [e for e in self.events() if e.kind == "start" and e.task == task_id]

    def release(self, task_id: str = "all") -> None:
        (self.release_dir / task_id).touch()

    def log_text(self) -> str:
        return "".join(p.read_text() for p in sorted((self.state / "logs").glob("scheduler_*")))

    def all_done(self, status: str = "complete") -> bool:
        return all(s == status for s in self.statuses().values())

    def pass_until(self, condition: Callable[[], bool], timeout: float = 30.0,
                   what: str = "the backlog to finish", **extra: object) -> int:
        """Run passes (a short poll between) until ``condition``; returns the pass count."""
        passes = 0
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.run_once(expect=None, **extra)
            passes += 1
            end = time.monotonic() + 0.3
            while time.monotonic() < end and not condition():
                time.sleep(0.02)
        return passes


def kill_leftovers(base: Path) -> None:
    """SIGKILL every process started for this test (wrappers, agents, schedulers): its
    command line names the base directory, or it runs in it (a wrapper's title names
    only its task and agent)."""
    needle = str(base)
    mine = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            cwd = proc.info["cwd"] or ""
            if proc.pid != os.getpid() and (
                    any(needle in part for part in proc.info["cmdline"] or ())
                    or cwd == needle or cwd.startswith(needle + os.sep)):
                mine.append(proc)
        except (psutil.Error, TypeError):
            continue
    for proc in mine:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(mine, timeout=5)


@pytest.fixture
def make_scheduler(tmp_path):
    made: list[Scheduler] = []

    def make(*args, **kwargs) -> Scheduler:
        scheduler = Scheduler(tmp_path, *args, **kwargs)
        made.append(scheduler)
        return scheduler

    yield make
    kill_leftovers(tmp_path)
    for scheduler in made:
        for child in scheduler.children:
            if child.poll() is None:
                child.kill()
            child.communicate()


def history_moves(history: list[dict], from_status: str, to_status: str) -> list[dict]:
    return [h for h in history if (h["from_status"], h["to_status"]) == (from_status, to_status)]


# --- README examples --------------------------------------------------------------------


def test_queue_balancing_fills_free_slots_across_the_pool(make_scheduler):
    s = make_scheduler({"vaela": "dev", "damien": "dev"}, {"vaela": 3, "damien": 2})
    long_one = s.add("long hold", "--agent", "vaela")
    s.run_once()
    wait_for(lambda: s.started(long_one), what="vaela's long task to start")
    ids = [s.add(f"dev task {i} hold", "--queue", "dev") for i in range(5)]

    s.run_once()

    tasks = s.tasks()
    working = [t for t in tasks.values() if t.status == "working"]
    assert sorted(t.assignee for t in working if t.id in ids).count("damien") == 2
    assert [t.assignee for t in working if t.id in ids].count("vaela") == 2
    assert [tasks[i].status for i in ids].count("idle") == 1
    assert tasks[long_one].status == "working" and tasks[long_one].assignee == "vaela"
    leases = s.leases()
    assert sorted(leases) == sorted(t.id for t in working)
    last = json.loads((s.state / "last-pass.json").read_text())
    loads = {a["agent"]: (a["used"], a["limit"], a["planned"]) for a in last["agents"]}
    assert loads == {"vaela": (1, 3, 2), "damien": (0, 2, 2)}
    assert last["skipped"] == {"no-slot": 1}
    s.release()
    wait_for(lambda: not s.leases(), what="all runs to finish")


def test_seed_example_runs_in_blocker_order(make_scheduler):
    s = make_scheduler({"solo": "dev"}, {"solo": 1})
    t1 = s.add("Task 1", "--queue", "dev", "--priority", "0")
    t2 = s.add("Task 2", "--queue", "dev", "--blocked-by", t1)
    t3 = s.add("Task 3", "--queue", "dev", "--priority", "5")
    t4 = s.add("Task 4", "--queue", "dev", "--blocked-by", t2)

    plan = json.loads(s.run_once("--dry-run", "--json").stdout)["plan"]
    assert [p["task"] for p in plan["spawns"]] == [t1]
    skips = {p["task"]: p for p in plan["skips"]}
    assert skips[t2]["kind"] == "blocked" and t1 in skips[t2]["reason"]
    assert skips[t4]["kind"] == "blocked"
    assert skips[t3]["kind"] == "no-slot"

    first = s.run_once("--json")
    assert json.loads(first.stdout)["summary"]["spawned"] == 1
    assert s.statuses()[t1] in ("working", "complete")

    s.pass_until(s.all_done)

    def at(task_id: str, to_status: str) -> str:
        return history_moves(s.history(task_id), "working" if to_status == "complete"
                             else "idle", to_status)[-1]["at"]

    order = sorted((t1, t2, t3, t4), key=lambda t: at(t, "working"))
    assert order == [t1, t2, t3, t4]
    assert at(t1, "complete") <= at(t2, "working")
    assert at(t2, "complete") <= at(t4, "working")
    assert [e.task for e in s.events() if e.kind == "start"] == [t1, t2, t3, t4]


# --- dry run ----------------------------------------------------------------------------


#: SQLite's own transient files: opening a WAL database creates them, closing removes them.
SQLITE_TRANSIENT = ("-wal", "-shm")


def snapshot(base: Path) -> dict[str, tuple]:
    """Every file (path, size, mtime) and directory under ``base``. Directory mtimes are
    left out: SQLite creates and removes its -wal/-shm files next to the database on every
    open and close, which touches the directory and nothing else."""
    files: dict[str, tuple] = {}
    for path in sorted(base.rglob("*")):
        if path.name.endswith(SQLITE_TRANSIENT) or path.name.startswith("agents.log"):
            continue
        info = path.lstat()
        key = str(path.relative_to(base))
        files[key] = ("dir",) if path.is_dir() else (info.st_size, info.st_mtime_ns)
    return files


def dump_db(path: Path, scratch: Path) -> list[str]:
    """The database's content, read from a copy so reading it touches nothing."""
    scratch.mkdir(exist_ok=True)
    for suffix in ("", "-wal"):
        source = Path(f"{path}{suffix}")
        target = scratch / f"copy.db{suffix}"
        target.unlink(missing_ok=True)
        if source.exists():
            target.write_bytes(source.read_bytes())
    conn = sqlite3.connect(scratch / "copy.db")
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def write_lease(s: Scheduler, task_id: str, **fields) -> Lease:
    now = clock.now()
    values = dict(task_id=task_id, agent="vaela", state=RUNNING, spawn_token=f"tok{task_id}",
                  started_at=now, heartbeat=now, host="vm-test-host", attempt=1, queue="dev",
                  heartbeat_sec=1, stale_multiplier=4)
    values.update(fields)
    lease = Lease(**values)
    LeaseStore(s.running).create(lease)
    return lease


def claim(s: Scheduler, task_id: str, agent: str, token: str) -> None:
    with s.store() as store:
        store.claim(task_id, agent, token)


def test_dry_run_prints_the_plan_and_changes_nothing(make_scheduler, spawn_python):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 2}, HOSTNAME="vm-test-host")
    gone = spawn_python("pass")
    gone.wait()
    ids = [s.add(f"task {i}", "--queue", "dev") for i in range(4)]
    blocked = s.add("waits", "--queue", "dev", "--blocked-by", ids[0])
    (s.state / "running").mkdir(mode=0o700, exist_ok=True)
    claim(s, ids[0], "vaela", "tok-dead")
    write_lease(s, ids[0], spawn_token="tok-dead", pid=gone.pid, pid_started_at=1.0)
    s.run_once("--dry-run", expect=0)  # a first dry run: the store is opened once already
    scratch = s.base.parent / f"{s.base.name}-scratch"
    before_db, before_files = dump_db(s.state / "tasks.db", scratch), snapshot(s.base)

    proc = s.run_once("--dry-run", "--json")

    assert snapshot(s.base) == before_files
    assert dump_db(s.state / "tasks.db", scratch) == before_db
    data = json.loads(proc.stdout)
    plan = data["plan"]
    assert plan["reclaims"] == [{"task": ids[0], "agent": "vaela", "reason": "pid-dead"}]
    assert [p["task"] for p in plan["spawns"]] == ids[1:3]
    kinds = {p["task"]: p["kind"] for p in plan["skips"]}
    assert kinds == {ids[3]: "no-slot", blocked: "blocked"}  # ids[0] is working: not idle
    assert plan["agents"] == [{"agent": "vaela", "queue": "dev", "used": 0, "limit": 2,
                               "planned": 2, "paused": False}]
    assert data["summary"]["dry_run"] is True and data["summary"]["spawned"] == 2
    assert not s.agent_log.exists()
    text = s.run_once("--dry-run").stdout
    assert "DRY RUN: nothing was changed" in text and "would spawn 2" in text
    assert snapshot(s.base) == before_files


# --- exit codes -------------------------------------------------------------------------


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_exit_codes_clean_source_error_config_error(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1})
    assert s.run_once().returncode == 0

    port = closed_port()
    endpoint = f"http://127.0.0.1:{port}"
    failed = s.run_once(expect=1, TASK_SOURCE="tinytask", MCP_ENDPOINT=endpoint)
    assert f"127.0.0.1:{port}" in failed.stderr
    assert re.search(r"connect|refused", failed.stderr, re.IGNORECASE), failed.stderr
    last = json.loads((s.state / "last-pass.json").read_text())
    assert last["errors"] and last["source"] == "tinytask"

    bad = s.run_once(expect=2, HEARTBEAT_SEC="often")
    assert "TINYSCHEDULER_HEARTBEAT_SEC" in bad.stderr and "'often'" in bad.stderr
    (s.base / "agent-control.json").write_text("[{]")
    broken = s.run_once(expect=2)
    assert "agent control file" in broken.stderr


def test_lock_held_reports_the_holder_and_exits_0(make_scheduler, spawn_python):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1}, HOSTNAME="lockhost")
    s.add("would run", "--queue", "dev")
    holder = spawn_python(
        "import sys\n"
        "from scheduler.state.lock import SchedulerLock\n"
        f"lock = SchedulerLock(__import__('pathlib').Path({str(s.state)!r}) / "
        "'tinyscheduler.lock', 'lockhost')\n"
        "assert lock.try_acquire()\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n")
    assert holder.stdout.readline().strip() == "held"

    proc = s.run_once(expect=0)

    assert re.search(rf"held by pid {holder.pid} on lockhost since \d{{4}}-\d\d-\d\dT",
                     proc.stderr), proc.stderr
    assert s.statuses() == {"1": "idle"}
    holder.stdin.close()
    holder.wait(timeout=10)
    s.run_once()
    wait_for(lambda: s.all_done(), what="the task to complete once the lock is free")


def test_ten_concurrent_passes_never_spawn_a_task_twice(make_scheduler):
    s = make_scheduler({"vaela": "dev", "damien": "dev"}, {"vaela": 4, "damien": 4})
    ids = [s.add(f"task {i}", "--queue", "dev") for i in range(12)]
    env = s.environ()
    procs = [s.popen("run", "--once", env=env) for _ in range(10)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 10, outputs
    held = [err for _, err in outputs if "another scheduler is reconciling" in err]
    for err in held:
        assert re.search(r"held by (pid \d+ on \S+ since \S+|an unknown process)", err), err

    s.pass_until(s.all_done)

    for task_id in ids:
        claims = history_moves(s.history(task_id), "idle", "working")
        assert len(claims) == 1, (task_id, s.history(task_id))
    starts = [e.task for e in s.events() if e.kind == "start"]
    assert sorted(starts, key=int) == ids


# --- lease reclaim ----------------------------------------------------------------------


def test_dead_leases_are_reclaimed_live_ones_left_alone(make_scheduler, spawn_python):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 10}, HOSTNAME="vm-test-host",
                       RETRY_BACKOFF_SEC=600, SPAWN_TIMEOUT_SEC=1)
    ids = [s.add(f"task {name}", "--queue", "dev")
           for name in ("dead", "reused", "stale", "starting", "live", "garbage")]
    dead, reused, stale, starting, live, garbage = ids
    s.running.mkdir(parents=True, mode=0o700, exist_ok=True)
    hour_ago = clock.now() - timedelta(hours=1)

    gone = spawn_python("import time; time.sleep(60)")
    gone_started = psutil.Process(gone.pid).create_time()
    gone.kill()
    gone.wait()
    sleeper = spawn_python("import time; time.sleep(60)")
    holder = spawn_python(
        "import sys\n"
        "from scheduler.state.leases import LeaseStore\n"
        f"lock = LeaseStore(__import__('pathlib').Path({str(s.running)!r}))"
        f".liveness_lock({live!r})\n"
        "assert lock.acquire(0)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n")
    assert holder.stdout.readline().strip() == "locked"

    for task_id in (dead, reused, stale, starting, live):
        claim(s, task_id, "vaela", f"tok{task_id}")
    write_lease(s, dead, pid=gone.pid, pid_started_at=gone_started)
    write_lease(s, reused, pid=sleeper.pid,
                pid_started_at=psutil.Process(sleeper.pid).create_time() - 1000)
    write_lease(s, stale, host="otherhost", heartbeat=hour_ago, started_at=hour_ago,
                pid=4242, pid_started_at=1.0)
    write_lease(s, starting, state=STARTING, started_at=hour_ago, heartbeat=hour_ago)
    write_lease(s, live, pid=holder.pid, pid_started_at=psutil.Process(holder.pid).create_time(),
                heartbeat_sec=15)
    (s.running / f"task_{garbage}.json").write_text("{not json")

    proc = s.run_once(expect=0)

    log = proc.stderr
    for task_id, reason in ((dead, "pid-dead"), (reused, "pid-reused"),
                            (stale, "heartbeat-stale"), (starting, "spawn-timeout")):
        assert re.search(rf"reclaiming lease task={task_id} .*reason={reason}", log), log
    for task_id, reason in ((dead, "pid-dead"), (reused, "pid-reused"),
                            (stale, "heartbeat-stale")):
        task = s.tasks()[task_id]
        assert (task.status, task.attempts) == ("idle", 1), task  # a reclaim is an attempt
        assert f"reclaimed: {reason}" in (task.last_error or "")
    # A lease still `starting` means its agent never ran: requeued without counting an
    # attempt or a backoff, so the same pass runs it again.
    wait_for(lambda: s.statuses()[starting] == "complete", what="the never-started task to run")
    assert s.tasks()[starting].attempts == 0
    assert re.search(rf"reclaiming lease task={live}\b", log) is None
    # The garbage file's task was never leased: it ran in the same pass.
    wait_for(lambda: s.statuses()[garbage] == "complete", what="the unleased task to run")
    wait_for(lambda: sorted(s.leases()) == [live], what="only the live lease to remain")
    assert s.tasks()[live].status == "working"
    assert sleeper.poll() is None  # a reused pid is never signalled
    corrupt = list((s.running / "corrupt").glob(f"task_{garbage}.json.*"))
    assert any(p.name.endswith(".reason") for p in corrupt)
    assert not (s.running / f"task_{garbage}.json").exists()
    assert "corrupt lease" in s.log_text()
    last = json.loads((s.state / "last-pass.json").read_text())
    assert last["reclaimed"] == {"pid-dead": 1, "pid-reused": 1, "heartbeat-stale": 1,
                                 "spawn-timeout": 1}
    assert last["errors"] == []

    holder.stdin.close()
    holder.wait(timeout=10)


# --- both sides reconciled --------------------------------------------------------------


@pytest.mark.parametrize("change", ["cancelled", "complete"])
def test_a_run_the_source_no_longer_wants_is_stopped(make_scheduler, change):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1})
    task_id = s.add("long hold", "--queue", "dev")
    s.run_once()
    lease = wait_for(lambda: (s.leases().get(task_id) if s.leases().get(task_id)
                              and s.leases()[task_id].agent_pid else None),
                     what="the agent to be recorded in the lease")
    wait_for(lambda: s.started(task_id), what="the agent to start")
    with s.store() as store:
        if change == "cancelled":
            store.cancel(task_id, detail="changed my mind")
        else:
            store.report(Result(task_id=task_id, agent="vaela", attempt=1, outcome=SUCCEEDED,
                                token=lease.spawn_token, summary="done elsewhere"),
                         RetryPolicy(3, 0))
    history_before = s.history(task_id)

    proc = s.run_once()

    assert "stopping run the source no longer wants" in proc.stderr
    assert json.loads((s.state / "last-pass.json").read_text())["stopped"] == 1
    wait_for(lambda: not s.leases(), what="the wrapper to stop and drop its lease")
    wait_for(lambda: not psutil.pid_exists(lease.agent_pid)
             or psutil.Process(lease.agent_pid).status() == psutil.STATUS_ZOMBIE,
             what="the agent to be stopped")
    assert [e.kind for e in s.events()] == ["start", "term"]
    assert s.statuses()[task_id] == change
    assert s.history(task_id) == history_before  # the wrapper's report was ignored
    log = (s.state / "logs" / "tasks" / task_id / "attempt-1.log").read_text()
    assert "ignored" in log


# --- one bad task -----------------------------------------------------------------------


def test_a_task_that_cannot_launch_does_not_stop_the_others(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 2}, RETRY_BACKOFF_SEC=600)
    s.settings["AGENT_COMMAND"] += " {recipe_path}"
    (s.base / "recipes").mkdir()
    (s.base / "recipes" / "good.yaml").write_text("title: good\n")
    good = [s.add(f"good {i}", "--queue", "dev", "--recipe", "good.yaml") for i in range(3)]
    bad = s.add("bad", "--queue", "dev", "--recipe", "missing.yaml", "--priority", "9")

    s.pass_until(lambda: all(s.statuses()[g] == "complete" for g in good)
                 and s.tasks()[bad].attempts == 1)

    task = s.tasks()[bad]
    assert (task.status, task.attempts) == ("idle", 1)
    assert "launch_failed" in task.last_error
    requeued = history_moves(s.history(bad), "working", "idle")
    assert len(requeued) == 1 and "recipe 'missing.yaml' not found" in requeued[0]["detail"]
    assert {e.task for e in s.events() if e.kind == "end"} == set(good)


def test_agent_failure_is_requeued_then_parked(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1}, MAX_ATTEMPTS=2)
    task_id = s.add("will fail", "--queue", "dev")
    s.pass_until(lambda: s.statuses()[task_id] == "failed")
    task = s.tasks()[task_id]
    assert task.attempts == 2 and "exit code 3" in task.last_error
    assert len(s.started(task_id)) == 2


def test_sigkilled_wrapper_is_reclaimed_as_pid_dead(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1}, RETRY_BACKOFF_SEC=600)
    task_id = s.add("long hold", "--queue", "dev")
    s.run_once()
    lease = wait_for(lambda: s.leases().get(task_id) if s.leases().get(task_id)
                     and s.leases()[task_id].agent_pid else None, what="a running lease")
    wait_for(lambda: s.started(task_id), what="the agent to start")
    os.kill(lease.agent_pid, signal.SIGKILL)
    os.kill(lease.pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(lease.pid)
             or psutil.Process(lease.pid).status() == psutil.STATUS_ZOMBIE,
             what="the wrapper to die")

    proc = s.run_once()

    assert re.search(rf"reclaiming lease task={task_id} .*reason=pid-dead", proc.stderr)
    assert (s.tasks()[task_id].status, s.tasks()[task_id].attempts) == ("idle", 1)
    assert not s.leases()
