"""The wrapper end to end: real wrapper processes (``python -m wrapper.main``) supervising
real agent processes (``tests/fake_agent.py``), with the lease store and the task source
checked from outside, the way the scheduler sees them.

Each attempt is set up the way the reconciler's spawn does it, without the scheduler: claim
the task, create a ``starting`` lease with a spawn token, write the task file, start the
wrapper with ``--lease`` and ``--token``.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
from fake_tinytask import FakeTinyTask

from scheduler import clock
from scheduler.config.registry import Agent, Registry
from scheduler.config.settings import PREFIX, load_settings
from scheduler.reconcile.launcher import ForkLauncher
from scheduler.reconcile.reconciler import Reconciler
from scheduler.sources.base import (
    CANCELLED,
    COMPLETE,
    FAILED,
    IDLE,
    WORKING,
    Result,
    RetryPolicy,
    Task,
)
from scheduler.sources.local import LocalStore
from scheduler.state import taskfile
from scheduler.state.leases import RUNNING, STARTING, Lease, LeaseStore
from wrapper.supervisor import Supervisor

pytestmark = pytest.mark.processes

PY = sys.executable
FAKE_AGENT = Path(__file__).with_name("fake_agent.py")
AGENT = "worker"
HOST = "testhost"
#: A generous bound for one wrapper run that should end by itself.
RUN_TIMEOUT = 20.0


def agent_command(*steps: str, extra: str = "") -> str:
    """AGENT_COMMAND running the fake agent with these steps (plus raw template text)."""
    return " ".join(filter(None, [shlex.join([PY, str(FAKE_AGENT), *steps]), extra]))


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.01)


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (exited; a zombie nobody reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def read_pid(path: Path) -> int:
    wait_for(path.exists, what=f"{path.name} to be written")
    return int(path.read_text())


class NoLaunch:
    """A launcher for in-process passes that must not start anything."""

    def __init__(self) -> None:
        self.launched: list[str] = []

    def launch(self, task_id: str, token: str, lease_path: str) -> int:
        self.launched.append(task_id)
        raise OSError("this test starts no wrapper")

    def reap(self) -> None:
        return None

    def prepare(self, source) -> None:
        source.before_fork()

    def close(self) -> None:
        return None


class Rig:
    """One state directory, its local task store and lease store, and wrapper runs."""

    def __init__(self, root: Path, **values: object) -> None:
        self.root = root
        self.values: dict[str, str] = {
            "BASE_PATH": str(root), "TASK_SOURCE": "local", "HOSTNAME": HOST,
            "HEARTBEAT_SEC": "1", "STALE_MULTIPLIER": "2", "KILL_GRACE_SEC": "1",
            "MAX_RUNTIME_SEC": "60", "MAX_ATTEMPTS": "3", "RETRY_BACKOFF_SEC": "10",
            "SPAWN_TIMEOUT_SEC": "30", "AGENT_COMMAND": agent_command("exit", "0"),
        }
        self.values.update({name: str(value) for name, value in values.items()})
        self.settings = load_settings(environ=self.environ(), cwd=root)
        self.tasks = LocalStore(self.settings.tasks_db)
        self.leases = LeaseStore(self.settings.running_dir)
        self.wrappers: list[subprocess.Popen] = []
        self.strays: list[psutil.Process] = []

    def environ(self, **values: object) -> dict[str, str]:
        merged = dict(self.values)
        merged.update({name: str(value) for name, value in values.items()})
        return {PREFIX + name: value for name, value in merged.items()}

    def path(self, name: str) -> Path:
        return self.root / name

    def lease_path(self, task_id: str) -> Path:
        return self.settings.running_dir / f"task_{task_id}.json"

    def log_path(self, task_id: str, attempt: int = 1) -> Path:
        return self.settings.task_log_dir / task_id / f"attempt-{attempt}.log"

    def add(self, title: str = "A task", **fields: object) -> Task:
        fields.setdefault("assignee", AGENT)
        return self.tasks.add_task(title, **fields)  # type: ignore[arg-type]

    def prepare(self, task: Task, *, claim: Callable[[str, str, str], None] | None = None,
                **lease_fields: object) -> str:
        """What the reconciler's spawn does before starting the wrapper; the spawn token."""
        token = secrets.token_hex(8)
        (claim or self.tasks.claim)(task.id, AGENT, token)
        now = clock.now()
        lease = Lease(
            task_id=task.id, agent=AGENT, state=STARTING, spawn_token=token, started_at=now,
            heartbeat=now, host=HOST, attempt=task.attempts + 1, queue=task.queue,
            recipe=task.recipe, scheduler_pid=os.getpid(),
            heartbeat_sec=self.settings.heartbeat_sec,
            stale_multiplier=self.settings.stale_multiplier,
        )
        self.leases.create(replace(lease, **lease_fields))
        taskfile.write(self.settings.task_log_dir, task)
        return token

    def spawn(self, task_id: str, token: str, **values: object) -> subprocess.Popen:
        """Start the wrapper as a fresh process, detached like the exec launcher does."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
        env.update(self.environ(**values))
        number = len(self.wrappers)
        with open(self.path(f"wrapper-{number}.err"), "wb") as err:
            child = subprocess.Popen(
                [PY, "-m", "wrapper.main", "--lease", str(self.lease_path(task_id)),
                 "--token", token],
                env=env, cwd=self.root, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                start_new_session=True)
        self.wrappers.append(child)
        return child

    def fork_wrapper(self, task_id: str, token: str) -> int:
        """Start the wrapper the default way, forked from this process; its pid.

        This process's SQLite connection is closed first: a forked child that opens the
        database while it carries SQLite's state for a connection of its parent (whose
        descriptors the launcher closed) gets its locking wrong."""
        self.tasks.close()
        return ForkLauncher(self.settings).launch(task_id, token, str(self.lease_path(task_id)))

    def run(self, task_id: str, token: str, **values: object) -> int:
        """One whole wrapper run; its exit code (its stderr must be empty)."""
        child = self.spawn(task_id, token, **values)
        code = child.wait(RUN_TIMEOUT)
        errors = self.path(f"wrapper-{len(self.wrappers) - 1}.err").read_text()
        assert errors == "", errors
        return code

    def attempt(self, task: Task, *steps: str, **values: object) -> Task:
        """Prepare, run the fake agent with ``steps`` to the end; the task afterwards."""
        token = self.prepare(task)
        assert self.run(task.id, token, AGENT_COMMAND=agent_command(*steps), **values) == 0
        return self.tasks.get(task.id)

    def summary(self, task_id: str) -> str:
        return self.tasks.history(task_id)[-1]["detail"]

    def track(self, pid: int) -> int:
        """Kill this process at teardown if a failing test left it running."""
        try:
            self.strays.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
        return pid

    def close(self) -> None:
        for child in self.wrappers:
            if child.poll() is None:
                child.kill()
            child.wait()
        for proc in self.strays:
            try:
                if proc.is_running():  # compares the start time: never a reused pid
                    proc.kill()
            except psutil.NoSuchProcess:
                pass
        self.tasks.close()


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(**values: object) -> Rig:
        rig = Rig(tmp_path, **values)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


@pytest.fixture
def rig(make_rig) -> Rig:
    return make_rig()


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def history_after_claim(rig: Rig, task_id: str) -> list[dict]:
    rows = rig.tasks.history(task_id)
    claims = [i for i, row in enumerate(rows) if row["to_status"] == WORKING]
    return rows[claims[-1] + 1:]


# --- outcomes -----------------------------------------------------------------------------


def test_success_completes_the_task_with_a_summary_and_an_attempt_log(rig: Rig) -> None:
    task = rig.add("Say hello")
    long = "x" * 3000
    started = clock.now()
    done = rig.attempt(task, "lines", "5", "print", long, "print", long, "print", "all done")
    assert done.status == COMPLETE

    log = rig.log_path(task.id)
    summary = rig.tasks.details(task.id)["result_summary"]
    assert summary.startswith("succeeded: exit code 0, ")
    for part in ("attempt 1", f"host {HOST}", f"log {log}", "--- last output ---", "all done"):
        assert part in summary
    assert len(summary.encode()) <= 4096
    assert summary == rig.summary(task.id)  # the history row carries the same text

    lines = log_lines(log)
    assert f"task {task.id} agent {AGENT} attempt 1 host {HOST}" in lines[0]
    argv = json.loads(lines[1].split("] argv ", 1)[1])
    assert argv[:2] == [PY, str(FAKE_AGENT)] and argv[-1] == "all done"
    assert "] started " in lines[2]
    assert clock.from_iso(lines[2].rsplit(" ", 1)[1]) >= started.replace(microsecond=0)
    assert lines[3:8] == [f"line {n}" for n in range(5)]
    footer = [line for line in lines if "] outcome " in line]
    assert len(footer) == 1 and "outcome succeeded, exit code 0, " in footer[0]
    assert any("] reported succeeded: complete" in line for line in lines)
    assert oct(log.stat().st_mode & 0o777) == oct(0o600)

    assert not rig.lease_path(task.id).exists()
    assert not rig.leases.is_held(task.id)  # a lock file may stay; nobody holds it
    assert not list(rig.settings.outbox_dir.glob("*.json"))


def test_failures_requeue_with_growing_backoff_then_park(rig: Rig) -> None:
    task = rig.add("Flaky")
    backoff, limit = rig.settings.retry_backoff_sec, rig.settings.max_attempts
    for attempt in range(1, limit + 1):
        before = clock.now()
        task = rig.attempt(task, "print", f"try {attempt}", "exit", "3")
        after = clock.now()
        assert task.attempts == attempt
        assert task.last_error.startswith(f"attempt {attempt} failed, exit code 3")
        assert f"try {attempt}" in rig.summary(task.id)
        assert rig.log_path(task.id, attempt).is_file()
        assert not rig.lease_path(task.id).exists()
        if attempt < limit:
            assert task.status == IDLE and not task.parked
            delay = timedelta(seconds=backoff * 2 ** (attempt - 1))
            ms = timedelta(milliseconds=1)
            assert before + delay - ms <= task.not_before <= after + delay
        else:
            assert task.status == FAILED and task.parked
            assert task.not_before is None
    assert [row["to_status"] for row in rig.tasks.history(task.id)] == \
        ["idle"] + ["working", "idle"] * (limit - 1) + ["working", "failed"]


def test_an_agent_killed_from_outside_is_killed_and_requeued(rig: Rig) -> None:
    task = rig.add()
    token = rig.prepare(task)
    ready = rig.path("ready")
    wrapper = rig.spawn(task.id, token,
                        AGENT_COMMAND=agent_command("ready", str(ready), "sleep", "30"))
    os.kill(rig.track(read_pid(ready)), signal.SIGKILL)
    assert wrapper.wait(RUN_TIMEOUT) == 0
    task = rig.tasks.get(task.id)
    assert task.status == IDLE and task.attempts == 1
    assert task.last_error.startswith("attempt 1 killed, signal 9")
    assert "outcome killed, signal 9" in rig.log_path(task.id).read_text()


def test_runtime_limit_kills_an_agent_that_ignores_sigterm_and_its_group(make_rig) -> None:
    rig = make_rig(MAX_RUNTIME_SEC=1, KILL_GRACE_SEC=1)
    task = rig.add()
    token = rig.prepare(task)
    ready, grandchild_file = rig.path("ready"), rig.path("grandchild")
    wrapper = rig.spawn(task.id, token, AGENT_COMMAND=agent_command(
        "ignore-term", "grandchild", str(grandchild_file), "ready", str(ready), "sleep", "60"))
    agent = rig.track(read_pid(ready))
    grandchild = rig.track(read_pid(grandchild_file))
    started = time.monotonic()
    assert wrapper.wait(RUN_TIMEOUT) == 0
    # runtime limit (1 s from the agent's start) + grace (1 s) + reporting, long before
    # the agent's own 60 s would end
    assert time.monotonic() - started < 30
    assert gone(agent)
    wait_for(lambda: gone(grandchild), 2, "the grandchild to be killed")
    task = rig.tasks.get(task.id)
    assert task.status == IDLE
    assert task.last_error.startswith("attempt 1 timed_out, signal 9")
    text = rig.log_path(task.id).read_text()
    assert "stopping agent" in text and "ran longer than 1 s" in text
    assert "ignored SIGTERM for 1 s: SIGKILL" in text
    assert "outcome timed_out, signal 9" in text


def test_a_silent_agent_is_stalled(make_rig) -> None:
    rig = make_rig(IDLE_TIMEOUT_SEC=1)
    task = rig.add()
    started = time.monotonic()
    task = rig.attempt(task, "print", "thinking...", "sleep", "60")
    assert time.monotonic() - started < 30  # stopped long before the agent's own end
    assert task.status == IDLE
    assert task.last_error.startswith("attempt 1 stalled, signal 15")
    summary = rig.summary(task.id)
    assert "reason: no output for 1 s" in summary and "thinking..." in summary


def test_sigterm_to_the_wrapper_cancels_the_task(make_rig) -> None:
    rig = make_rig(KILL_GRACE_SEC=60)  # the agent obeys SIGTERM: no grace period is needed
    task = rig.add()
    token = rig.prepare(task)
    ready, got_term, grandchild_file = rig.path("ready"), rig.path("term"), rig.path("gc")
    wrapper = rig.spawn(task.id, token, AGENT_COMMAND=agent_command(
        "on-term", str(got_term), "grandchild", str(grandchild_file), "ready", str(ready),
        "sleep", "120"))
    agent = rig.track(read_pid(ready))
    grandchild = rig.track(read_pid(grandchild_file))
    started = time.monotonic()
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(RUN_TIMEOUT) == 0
    assert time.monotonic() - started < 30  # not the 60 s grace, not the agent's 120 s
    assert got_term.read_text() == str(int(signal.SIGTERM))  # the agent got SIGTERM itself
    assert gone(agent)
    # the grandchild ignores SIGTERM: the group's final SIGKILL takes it
    wait_for(lambda: gone(grandchild), 2, "the straggler to be killed")
    task = rig.tasks.get(task.id)
    assert task.status == CANCELLED
    summary = rig.tasks.details(task.id)["result_summary"]
    assert summary.startswith("cancelled: exit code 143")
    assert f"reason: wrapper got signal {int(signal.SIGTERM)}" in summary
    assert not rig.lease_path(task.id).exists()


# --- launch failures ----------------------------------------------------------------------


@pytest.mark.parametrize(("recipe", "why"), [
    ("missing.yaml", "recipe 'missing.yaml' not found in"),
    ("../outside.yaml", "resolves outside the recipes directory"),
    ("ABSOLUTE", "resolves outside the recipes directory"),
    ("run.sh", "must end in .yaml, .yml or .json"),
])
def test_a_bad_recipe_fails_the_launch_without_running_anything(
        rig: Rig, recipe: str, why: str) -> None:
    rig.settings.recipes_dir.mkdir()
    (rig.settings.recipes_dir / "run.sh").write_text("echo hi\n")
    (rig.root / "outside.yaml").write_text("x: 1\n")
    if recipe == "ABSOLUTE":
        recipe = str(rig.root / "outside.yaml")
    task = rig.add()
    token = rig.prepare(task, recipe=recipe)
    ready = rig.path("ready")
    command = agent_command("ready", str(ready), "print", extra="{recipe_path}")
    assert rig.run(task.id, token, AGENT_COMMAND=command) == 0
    assert not ready.exists()
    task = rig.tasks.get(task.id)
    assert task.status == IDLE and task.attempts == 1
    assert task.last_error.startswith("attempt 1 launch_failed")
    summary = rig.summary(task.id)
    assert summary.startswith("launch_failed: not started, ")
    assert "reason: recipe " in summary and why in summary
    lines = log_lines(rig.log_path(task.id))
    assert lines[1].endswith("] argv []")
    assert any("outcome launch_failed" in line and why in line for line in lines)
    assert not rig.lease_path(task.id).exists()


@pytest.mark.parametrize("command", ["/nonexistent/agent --go", "no-such-agent-3f9c1 --go"])
def test_a_command_that_cannot_start_fails_the_launch(rig: Rig, command: str) -> None:
    task = rig.add()
    token = rig.prepare(task)
    assert rig.run(task.id, token, AGENT_COMMAND=command) == 0
    task = rig.tasks.get(task.id)
    assert task.status == IDLE and task.last_error.startswith("attempt 1 launch_failed")
    summary = rig.summary(task.id)
    assert summary.startswith("launch_failed: not started, ")
    assert f"reason: cannot start {command.split()[0]!r}" in summary
    assert "No such file or directory" in summary
    assert not rig.lease_path(task.id).exists()


@pytest.mark.parametrize("spawn_mode", ["exec", "fork"])
def test_a_missing_work_dir_fails_the_launch(make_rig, spawn_mode: str) -> None:
    """The agent's chdir fails before the gate opens: the wrapper (exec'd, or forked with
    SIGPIPE at its default action) must still learn why, and report it."""
    rig = make_rig(WORK_DIR="no-such-dir")
    task = rig.add()
    token = rig.prepare(task)
    if spawn_mode == "exec":
        assert rig.run(task.id, token) == 0
    else:
        rig.fork_wrapper(task.id, token)
        wait_for(lambda: rig.tasks.get(task.id).status != WORKING, RUN_TIMEOUT,
                 "the forked wrapper to report")
        wait_for(lambda: not rig.leases.is_held(task.id), what="the wrapper to exit")
    task = rig.tasks.get(task.id)
    assert task.status == IDLE and task.last_error.startswith("attempt 1 launch_failed")
    summary = rig.summary(task.id)
    assert "No such file or directory" in summary and "no-such-dir" in summary
    assert rig.leases.read(task.id) is None


def test_a_forked_wrapper_runs_an_attempt(make_rig) -> None:
    """SPAWN_MODE=fork: the wrapper is forked from this (initialised) process."""
    rig = make_rig(AGENT_COMMAND=agent_command("print", "forked fine"))
    task = rig.add()
    token = rig.prepare(task)
    pid = rig.track(rig.fork_wrapper(task.id, token))
    wait_for(lambda: rig.tasks.get(task.id).status == COMPLETE, RUN_TIMEOUT)
    wait_for(lambda: gone(pid), what="the forked wrapper to exit")
    assert "forked fine" in rig.tasks.details(task.id)["result_summary"]
    assert rig.leases.read(task.id) is None and not rig.leases.is_held(task.id)


def test_a_good_recipe_is_resolved_into_the_argv(rig: Rig) -> None:
    rig.settings.recipes_dir.mkdir()
    recipe = rig.settings.recipes_dir / f"{AGENT}.yaml"
    recipe.write_text("x: 1\n")
    task = rig.add()
    out = rig.path("argv.json")
    task = rig.attempt(task, "argv", str(out), "--", "{recipe}", "{recipe_path}")
    assert task.status == COMPLETE
    assert json.loads(out.read_text())[-2:] == [f"{AGENT}.yaml", str(recipe.resolve())]


def test_processes_an_agent_leaves_behind_end_with_it(rig: Rig) -> None:
    task = rig.add()
    grandchild_file = rig.path("gc")
    task = rig.attempt(task, "grandchild", str(grandchild_file), "print", "bye")
    assert task.status == COMPLETE
    grandchild = rig.track(read_pid(grandchild_file))
    wait_for(lambda: gone(grandchild), 2, "the leftover process to be killed")
    assert "killed processes left in the agent's process group" in \
        rig.log_path(task.id).read_text()


def test_a_wrapper_error_while_the_agent_runs_stops_the_agent(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process: the lease store fails at the first heartbeat with a bug (an error
    that is not I/O). The attempt is reported as a wrapper error, and the agent must not
    outlive it. (I/O errors are retried without touching the agent: test_hardening.)"""
    task = rig.add()
    token = rig.prepare(task)
    ready = rig.path("ready")
    command = agent_command("ready", str(ready), "sleep", "30")
    settings = replace(rig.settings, agent_command=command)
    real_heartbeat = LeaseStore.heartbeat

    def heartbeat(self, task_id, token, now, **changes):
        if not changes:
            raise RuntimeError("a bug in the heartbeat")
        return real_heartbeat(self, task_id, token, now, **changes)

    monkeypatch.setattr(LeaseStore, "heartbeat", heartbeat)
    before = signal.getsignal(signal.SIGTERM)
    assert Supervisor(settings, task.id, token).run() == 0
    agent = read_pid(ready)
    assert gone(agent)
    task = rig.tasks.get(task.id)
    assert task.status == IDLE and task.last_error.startswith("attempt 1 launch_failed")
    assert "wrapper error: RuntimeError('a bug in the heartbeat')" in rig.summary(task.id)
    assert rig.leases.read(task.id) is None
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


# --- what the agent sees ------------------------------------------------------------------


def test_a_hostile_title_reaches_the_agent_as_one_argument(rig: Rig) -> None:
    title = ("Fix it; rm -rf / && echo $(id) `uname` $HOME *.py | tee x\n"
             "line two\twith \"double\" and 'single' quotes, a \\ backslash {task_id}")
    task = rig.add(title)
    out = rig.path("argv.json")
    task = rig.attempt(task, "argv", str(out), "--", "--title", "{title}", "-args",
                       '{"task_id":"{task_id}"}', "{not_a_placeholder}")
    assert task.status == COMPLETE
    assert json.loads(out.read_text()) == [
        "argv", str(out), "--", "--title", title, "-args", f'{{"task_id":"{task.id}"}}',
        "{not_a_placeholder}"]


def test_the_agent_environment_session_and_recorded_pid(make_rig) -> None:
    rig = make_rig(WORK_DIR="work")
    rig.settings.work_dir.mkdir()
    task = rig.add("Look around")
    out = rig.path("env.json")
    task = rig.attempt(task, "env", str(out), str(rig.lease_path(task.id)),
                       MCP_TOKEN="s3cret-token")
    assert task.status == COMPLETE
    seen = json.loads(out.read_text())
    assert PREFIX + "MCP_TOKEN" not in seen["env"]  # the scheduler's secret stays with it
    task_file = rig.settings.task_log_dir / task.id / "task.json"
    for name, value in {"TASK_ID": task.id, "AGENT": AGENT, "ATTEMPT": "1",
                        "TASK_FILE": str(task_file)}.items():
        assert seen["env"][PREFIX + name] == value
    assert json.loads(task_file.read_text())["title"] == "Look around"
    assert seen["cwd"] == str(rig.settings.work_dir)
    assert seen["pgid"] == seen["pid"] == seen["sid"]  # its own session and group
    assert seen["stdin_is_devnull"]
    # the wrapper recorded the agent in the lease before the agent ran a single step
    assert seen["lease_agent_pid"] == seen["pid"] and seen["lease_state"] == RUNNING


@pytest.mark.parametrize("case", ["wrong token", "already running", "no lease"])
def test_a_wrapper_that_cannot_adopt_runs_nothing(rig: Rig, case: str) -> None:
    task = rig.add()
    token = rig.prepare(task)
    lease = rig.leases.read(task.id)
    if case == "already running":
        rig.leases.update(replace(lease, state=RUNNING, pid=os.getpid()))
    elif case == "no lease":
        assert rig.leases.delete(task.id, token)
    ready = rig.path("ready")
    given = "0" * 16 if case == "wrong token" else token
    assert rig.run(task.id, given, AGENT_COMMAND=agent_command("ready", str(ready))) == 0
    assert not ready.exists()
    assert not rig.log_path(task.id).exists()
    assert rig.tasks.get(task.id).status == WORKING
    after = rig.leases.read(task.id)
    if case == "no lease":
        assert after is None
    else:
        assert after is not None and after.spawn_token == token
        assert after.state == (RUNNING if case == "already running" else STARTING)
        assert after.pid == (os.getpid() if case == "already running" else None)


def test_the_wrapper_refuses_a_lease_path_that_names_no_task(rig: Rig) -> None:
    child = subprocess.run([PY, "-m", "wrapper.main", "--lease", str(rig.path("x.json")),
                            "--token", "t"], cwd=rig.root, capture_output=True, text=True,
                           timeout=RUN_TIMEOUT, check=False)
    assert child.returncode == 2
    assert "expected a path ending in task_<id>.json" in child.stderr


# --- fencing and crashes ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["reclaimed", "re-owned"])
def test_a_fenced_wrapper_stops_its_agent_and_reports_nothing(rig: Rig, how: str) -> None:
    """Re-owned: the lease names another token. Reclaimed: the lease is gone and the
    source no longer has the task working under this attempt's token."""
    task = rig.add()
    token = rig.prepare(task)
    ready = rig.path("ready")
    wrapper = rig.spawn(task.id, token,
                        AGENT_COMMAND=agent_command("ready", str(ready), "sleep", "30"))
    agent = rig.track(read_pid(ready))
    if how == "reclaimed":
        rig.tasks.report(Result(task.id, AGENT, 1, "reclaimed", token, "reclaimed: test"),
                         RetryPolicy(3, 10))
        assert rig.leases.delete(task.id, token)
    else:
        rig.leases.update(replace(rig.leases.read(task.id), spawn_token="f" * 16))
    fenced_at = time.monotonic()
    assert wrapper.wait(RUN_TIMEOUT) == 0
    # noticed at a heartbeat (every 1 s), long before the agent's own 30 s would end
    assert time.monotonic() - fenced_at < 15
    assert gone(agent)
    if how == "re-owned":
        assert rig.tasks.get(task.id).status == WORKING  # nothing reported
        assert history_after_claim(rig, task.id) == []
    else:  # only the reclaim's own report
        assert [row["to_status"] for row in history_after_claim(rig, task.id)] == [IDLE]
    assert not list(rig.settings.outbox_dir.glob("*.json"))
    after = rig.leases.read(task.id)
    if how == "reclaimed":
        assert after is None
    else:  # the new owner's lease is left alone
        assert after is not None and after.spawn_token == "f" * 16
    assert "agent stopped, nothing reported" in rig.log_path(task.id).read_text()


class AssertingSource:
    """The local store, asserting at every report that the old agent is gone already."""

    def __init__(self, store: LocalStore, agent_pid: int) -> None:
        self.store, self.agent_pid = store, agent_pid
        self.reports: list[str] = []

    def report(self, result, policy):
        assert gone(self.agent_pid), "requeued while the agent still runs"
        self.reports.append(result.outcome)
        return self.store.report(result, policy)

    def __getattr__(self, name: str):
        return getattr(self.store, name)


def test_a_killed_wrapper_leaves_its_agent_holding_the_lease_until_a_pass_reclaims(
        rig: Rig) -> None:
    task = rig.add()
    token = rig.prepare(task)
    ready = rig.path("ready")
    wrapper = rig.spawn(task.id, token,
                        AGENT_COMMAND=agent_command("ready", str(ready), "sleep", "60"))
    agent = rig.track(read_pid(ready))
    lease = rig.leases.read(task.id)
    assert lease.agent_pid == agent
    assert abs(lease.agent_started_at - psutil.Process(agent).create_time()) < 0.01

    wrapper.send_signal(signal.SIGKILL)
    wrapper.wait(RUN_TIMEOUT)
    assert not gone(agent)
    assert rig.leases.is_held(task.id)  # the agent's inherited descriptor keeps the lock

    stale_after = timedelta(seconds=lease.heartbeat_sec * lease.stale_multiplier)
    wait_for(lambda: clock.now() - rig.leases.read(task.id).heartbeat > stale_after,
             timeout=stale_after.total_seconds() + 3, what="the heartbeat to go stale")
    source = AssertingSource(rig.tasks, agent)
    launcher = NoLaunch()
    registry = Registry((Agent(AGENT, None, 1),), legacy=True)
    reconciler = Reconciler(rig.settings, registry, source=source, launcher=launcher)
    summary = reconciler.run_pass().summary
    assert summary.reclaimed == {"heartbeat-stale": 1}, summary.errors
    assert summary.errors == []
    assert gone(agent)
    assert source.reports == ["reclaimed"]
    assert not rig.leases.is_held(task.id)
    assert rig.leases.read(task.id) is None
    task = rig.tasks.get(task.id)
    assert task.status == IDLE and task.attempts == 1  # a reclaim counts as an attempt
    assert task.last_error.startswith("attempt 1 reclaimed")
    assert launcher.launched == []  # in backoff: nothing started in its place


# --- the outbox ---------------------------------------------------------------------------


def start_tinytask_attempt(rig: Rig, fake: FakeTinyTask, number: int):
    """Claim TinyTask task ``number`` and start its wrapper; the agent prints "shipped" and
    exits once the returned ``go`` file exists."""
    from scheduler.sources.tinytask import TinyTaskSource

    with TinyTaskSource(fake.url) as source:
        task = source.current([str(number)])[str(number)]
        token = rig.prepare(task, claim=source.claim)
    ready, go = rig.path("ready"), rig.path("go")
    wrapper = rig.spawn(task.id, token, AGENT_COMMAND=agent_command(
        "ready", str(ready), "wait", str(go), "print", "shipped"))
    rig.track(read_pid(ready))
    return task, token, wrapper, go


def test_sigterm_while_the_result_is_recorded_changes_nothing(tmp_path: Path) -> None:
    """The agent is done and the wrapper is talking to a slow source when SIGTERM comes:
    the result is recorded as it was and the lease released; nothing is lost or left."""
    with FakeTinyTask() as fake:
        number = fake.add_task("Ship it", assigned_to=AGENT)
        rig = Rig(tmp_path, TASK_SOURCE="tinytask", MCP_ENDPOINT=fake.url)
        try:
            task, token, wrapper, go = start_tinytask_attempt(rig, fake, number)
            before = len(fake.requests)
            fake.delay_next(1, 1.0)
            go.touch()
            wait_for(lambda: len(fake.requests) > before, what="the wrapper to report")
            wrapper.send_signal(signal.SIGTERM)
            assert wrapper.wait(RUN_TIMEOUT) == 0
            assert fake.task(number)["status"] == "complete"
            assert rig.leases.read(task.id) is None
            assert not list(rig.settings.outbox_dir.glob("*.json"))
        finally:
            rig.close()


def test_an_unreachable_source_leaves_the_result_in_the_outbox_for_the_next_pass(
        tmp_path: Path) -> None:
    """The source is a TinyTask server that answers 503 (down for maintenance) while the
    wrapper reports, and is healthy again when the scheduler's next pass runs. The wrapper
    keeps the result in state/outbox and still releases the lease; the pass delivers it
    through the same source, and a second delivery of the same file changes nothing."""
    with FakeTinyTask() as fake:
        number = fake.add_task("Ship it", assigned_to=AGENT)
        rig = Rig(tmp_path, TASK_SOURCE="tinytask", MCP_ENDPOINT=fake.url)
        try:
            task, token, wrapper, go = start_tinytask_attempt(rig, fake, number)
            fake.fail_next(10_000, status=503)
            go.touch()
            assert wrapper.wait(RUN_TIMEOUT) == 0
            fake.fail_next(0)

            entry = rig.settings.outbox_dir / f"{task.id}-{token}.json"
            assert entry.is_file()
            assert json.loads(entry.read_text())["outcome"] == "succeeded"
            assert rig.leases.read(task.id) is None
            assert fake.task(number)["status"] == "working"
            assert "result kept in" in rig.log_path(task.id).read_text()
            kept = entry.read_bytes()

            registry = Registry((Agent(AGENT, None, 1),), legacy=True)
            reconciler = Reconciler(rig.settings, registry, launcher=NoLaunch())
            try:
                summary = reconciler.run_pass().summary
                assert (summary.outbox_delivered, summary.outbox_pending) == (1, 0)
                assert summary.errors == []
                assert fake.task(number)["status"] == "complete"
                assert not entry.exists()
                comments = fake.comments_of(number)
                assert len(comments) == 1 and "shipped" in comments[0]

                entry.write_bytes(kept)  # the same file again (say, restored from backup)
                summary = reconciler.run_pass().summary
                assert (summary.outbox_delivered, summary.outbox_pending) == (1, 0)
                assert fake.task(number)["status"] == "complete"
                assert fake.comments_of(number) == comments
                assert not entry.exists()
            finally:
                reconciler.close()
        finally:
            rig.close()
