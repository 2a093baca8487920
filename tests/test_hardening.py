"""Runtime hardening: nothing stranded in ``working``, no result lost to a slow source,
every source call bounded, one bad record never stopping the others, a full disk never
killing a healthy agent.

Real wrapper and agent processes, a real SQLite store, a fake TinyTask server with hostile
modes (trickled bodies, endless pagination, lost answers) and, for the disk cases, small
tmpfs mounts (the test process must be allowed to mount: root, as in CI).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fake_tinytask import FakeTinyTask
from test_wrapper import (
    AGENT,
    HOST,
    RUN_TIMEOUT,
    Rig,
    agent_command,
    gone,
    read_pid,
    start_tinytask_attempt,
    wait_for,
)
from test_wrapper import make_rig as make_rig  # noqa: F401 - the fixture

from scheduler import bounds, clock
from scheduler.config.registry import Agent, Registry
from scheduler.errors import SourceError, SourceUnavailable
from scheduler.reconcile import status as status_mod
from scheduler.reconcile.reconciler import Reconciler
from scheduler.sources.base import COMPLETE, IDLE, SUCCEEDED, WORKING, Result, RetryPolicy
from scheduler.sources.tinytask import TinyTaskSource
from scheduler.state import outbox
from scheduler.state.leases import STARTING, new_token, owner_tag

pytestmark = pytest.mark.processes

CONSOLE_SCRIPT = Path(sys.executable).parent / "tinyscheduler"
REGISTRY = Registry((Agent(AGENT, None, 2),), legacy=True)


class Recorder:
    """A launcher for in-process passes: records what it would start, starts nothing."""

    def __init__(self) -> None:
        self.launched: list[str] = []

    def launch(self, task_id: str, token: str, lease_path: str) -> int:
        self.launched.append(task_id)
        return 0

    def reap(self) -> None:
        return None

    def prepare(self, source) -> None:
        source.before_fork()

    def close(self) -> None:
        return None


def a_pass(rig: Rig, source=None) -> tuple[Reconciler, Recorder]:
    launcher = Recorder()
    return Reconciler(rig.settings, REGISTRY, source=source, launcher=launcher), launcher


def no_sleep(_seconds: float) -> None:
    return None


# --- a task must never be stranded in working -------------------------------------------


class WholeTasksOnly:
    """The local store without its light queries (``states``, ``claimed``): a source
    that only hands out whole tasks, as TinyTask does."""

    def __init__(self, source) -> None:
        self.source = source

    def __getattr__(self, name: str):
        if name in ("states", "claimed"):
            raise AttributeError(name)
        return getattr(self.source, name)


@pytest.mark.parametrize("light", [True, False], ids=["light-queries", "whole-tasks"])
def test_a_task_working_under_our_token_with_no_lease_is_requeued(make_rig, light) -> None:
    """Three working tasks and no lease: one under this scheduler's token (stranded:
    requeued, the reason in its history), one under another scheduler's token, one whose
    liveness lock is held (its wrapper is alive and rewrites its lease): both left."""
    rig = make_rig(RETRY_BACKOFF_SEC=3600)
    owner = owner_tag(rig.settings.hostname, rig.settings.running_dir)
    stranded, foreign, alive = rig.add("stranded"), rig.add("foreign"), rig.add("alive")
    rig.tasks.claim(stranded.id, AGENT, new_token(owner))
    rig.tasks.claim(foreign.id, AGENT, new_token("0badc0de"))
    rig.tasks.claim(alive.id, AGENT, new_token(owner))
    lock = rig.leases.liveness_lock(alive.id)
    assert lock.acquire(0)
    try:
        assert status_mod.collect(rig.settings)["stranded"] == [stranded.id]
        reconciler, launcher = a_pass(rig, None if light else WholeTasksOnly(rig.tasks))
        summary = reconciler.run_pass().summary
        reconciler.close()
    finally:
        lock.release()
    assert summary.reclaimed == {"stranded": 1}, summary.errors
    requeued = rig.tasks.get(stranded.id)
    assert requeued.status == IDLE and requeued.attempts == 1
    assert "stranded" in rig.summary(stranded.id)
    assert rig.tasks.get(foreign.id).status == WORKING
    assert rig.tasks.get(alive.id).status == WORKING
    assert launcher.launched == []  # in its backoff


def test_a_source_down_while_looking_for_stranded_tasks_requeues_nothing(make_rig) -> None:
    rig = make_rig()
    owner = owner_tag(rig.settings.hostname, rig.settings.running_dir)
    stranded = rig.add("stranded")
    rig.tasks.claim(stranded.id, AGENT, new_token(owner))

    class ClaimedDown(WholeTasksOnly):
        def claimed(self):
            raise SourceUnavailable("task source down (claimed)")

    reconciler, _launcher = a_pass(rig, ClaimedDown(rig.tasks))
    summary = reconciler.run_pass().summary
    reconciler.close()

    assert summary.errors == ["checking working tasks failed: task source down (claimed)"]
    assert rig.tasks.get(stranded.id).status == WORKING


def test_a_stranded_task_whose_result_waits_in_the_outbox_is_delivered_not_requeued(
        make_rig) -> None:
    """A task working under this scheduler's token with no lease, whose wrapper left its
    result in the outbox: while the source refuses that entry (this pass), the task is
    not requeued (its result would be thrown away and the task run again); once the
    source takes the entry, the result is what lands, with no extra attempt."""
    rig = make_rig(RETRY_BACKOFF_SEC=3600)
    task = rig.add("finished while the source was away")
    token = new_token(owner_tag(rig.settings.hostname, rig.settings.running_dir))
    rig.tasks.claim(task.id, AGENT, token)
    entry = outbox.write(rig.settings.outbox_dir,
                         Result(task.id, AGENT, 1, SUCCEEDED, token, "shipped"))

    class Refusing:  # the source refuses this one result (not down: the pass goes on)
        def __init__(self, store) -> None:
            self.store = store

        def report(self, result, policy):
            raise SourceError(f"task {result.task_id}: result refused for now")

        def __getattr__(self, name):
            return getattr(self.store, name)

    reconciler, launcher = a_pass(rig, Refusing(rig.tasks))
    summary = reconciler.run_pass().summary
    reconciler.close()
    assert summary.errors == [f"outbox entry {entry.name} not delivered: task {task.id}: "
                              "result refused for now"]
    assert summary.reclaimed == {} and summary.outbox_pending == 1
    after = rig.tasks.get(task.id)
    assert (after.status, after.attempts, after.lease_token) == (WORKING, 0, token)
    assert entry.is_file() and launcher.launched == []

    reconciler, launcher = a_pass(rig)
    summary = reconciler.run_pass().summary
    reconciler.close()
    assert summary.errors == [] and summary.reclaimed == {}
    assert summary.outbox_delivered == 1 and not entry.exists()
    done = rig.tasks.get(task.id)
    assert (done.status, done.attempts) == (COMPLETE, after.attempts)  # none added
    assert rig.summary(task.id) == "shipped"
    assert not any("stranded" in (h["detail"] or "") for h in rig.tasks.history(task.id))


def test_a_stranded_task_with_no_agent_assigned_is_left_for_a_human(make_rig) -> None:
    """Someone unassigned a task on the TinyTask server while it was working under this
    scheduler's token (and its wrapper is gone): there is no agent to requeue it for, so
    the pass says so and leaves it working, every pass, rather than guess an agent."""
    with FakeTinyTask() as fake:
        number = fake.add_task("unassigned while working", assigned_to=AGENT)
        rig = make_rig(TASK_SOURCE="tinytask", MCP_ENDPOINT=fake.url)
        token = new_token(owner_tag(rig.settings.hostname, rig.settings.running_dir))
        source = TinyTaskSource(fake.url, sleep=no_sleep)
        reconciler, launcher = a_pass(rig, source)
        try:
            source.claim(str(number), AGENT, token)
            fake.set_task(number, assigned_to=None)
            for _ in range(2):
                summary = reconciler.run_pass().summary
                assert summary.errors == [f"task {number} is stranded in working with no "
                                          "agent assigned; left for a human"]
                assert summary.reclaimed == {} and launcher.launched == []
                assert fake.task(number)["status"] == "working"
                assert f"tinyscheduler:lease={token}" in fake.task(number)["tags"]
        finally:
            reconciler.close()


def test_status_reports_a_stranded_task_as_unhealthy(make_rig) -> None:
    rig = make_rig()
    task = rig.add()
    rig.tasks.claim(task.id, AGENT, new_token(owner_tag(HOST, rig.settings.running_dir)))
    report = status_mod.collect(rig.settings)
    assert not report["healthy"]
    assert any(f"stranded in working with no lease and no live wrapper (task {task.id})" in p
               for p in report["problems"])


@pytest.mark.parametrize("how", ["deleted", "damaged"])
def test_a_wrapper_whose_lease_is_lost_rewrites_it_and_its_agent_finishes(
        make_rig, how: str) -> None:
    """The lease of a running task is deleted, or overwritten with garbage (a pass would
    quarantine it): the task is still the wrapper's in the source, so it writes the lease
    back from what it knows; the agent is never touched and its success is reported."""
    rig = make_rig()
    task = rig.add()
    token = rig.prepare(task)
    ready, go = rig.path("ready"), rig.path("go")
    wrapper = rig.spawn(task.id, token, AGENT_COMMAND=agent_command(
        "ready", str(ready), "wait", str(go), "print", "shipped"))
    agent = rig.track(read_pid(ready))
    wait_for(lambda: rig.leases.read(task.id).agent_pid == agent, what="the agent recorded")
    if how == "deleted":
        rig.lease_path(task.id).unlink()
    else:
        rig.lease_path(task.id).write_text("{not json")
    wait_for(lambda: (lease := rig.leases.read(task.id)) is not None
             and lease.spawn_token == token, what="the lease to be rewritten")
    lease = rig.leases.read(task.id)
    assert (lease.pid, lease.agent_pid) == (wrapper.pid, agent)
    assert not gone(agent)
    go.touch()
    assert wrapper.wait(RUN_TIMEOUT) == 0
    assert rig.tasks.get(task.id).status == COMPLETE
    assert rig.leases.read(task.id) is None
    assert "rewritten from the wrapper's own record" in rig.log_path(task.id).read_text()


def test_an_ambiguous_claim_keeps_the_starting_lease_until_the_spawn_timeout(
        make_rig) -> None:
    """TinyTask applies the claim but every answer is lost. The pass cannot know whether
    the claim happened, so it keeps the `starting` lease; after the spawn timeout the
    next pass reclaims it as never started, which puts the task back in play."""
    with FakeTinyTask() as fake:
        number = fake.add_task("Ship it", assigned_to=AGENT)
        rig = make_rig(TASK_SOURCE="tinytask", MCP_ENDPOINT=fake.url, SPAWN_TIMEOUT_SEC=1)
        fake.lose_next(100, method="PATCH")
        reconciler, launcher = a_pass(rig, TinyTaskSource(fake.url, sleep=no_sleep))
        try:
            summary = reconciler.run_pass().summary
            assert summary.spawned == 0 and summary.errors
            lease = rig.leases.read(str(number))
            assert lease is not None and lease.state == STARTING
            assert fake.task(number)["status"] == "working"
            assert f"tinyscheduler:lease={lease.spawn_token}" in fake.task(number)["tags"]

            fake.lose_next(0)
            wait_for(lambda: clock.monotonic() - lease.started_mono > 1.1
                     and clock.now() - lease.started_at > timedelta(seconds=1.1),
                     what="the spawn timeout")
            summary = reconciler.run_pass().summary
            assert summary.reclaimed == {"spawn-timeout": 1}, summary.errors
            assert any("agent never started" in c for c in fake.comments_of(number))
            assert launcher.launched == [str(number)]  # back in play, claimed afresh
            after = rig.leases.read(str(number))
            assert after is not None and after.spawn_token != lease.spawn_token
        finally:
            reconciler.close()


# --- a result must survive a slow source -------------------------------------------------


def test_a_finishing_wrapper_reporting_to_a_slow_source_is_never_killed(make_rig) -> None:
    """The agent succeeded; TinyTask takes longer to answer the report than the stale
    window (HEARTBEAT_SEC 1 x STALE_MULTIPLIER 2). The result is in the outbox before the
    first report; a pass meanwhile neither kills the finishing wrapper nor delivers its
    entry; the success is recorded once."""
    with FakeTinyTask() as fake:
        number = fake.add_task("Ship it", assigned_to=AGENT)
        rig = make_rig(TASK_SOURCE="tinytask", MCP_ENDPOINT=fake.url)
        task, token, wrapper, go = start_tinytask_attempt(rig, fake, number)
        entry = outbox.path_for(rig.settings.outbox_dir, task.id, token)
        before = len(fake.requests)
        fake.delay_next(1, 8.0)
        go.touch()
        wait_for(lambda: len(fake.requests) > before, what="the first report call")
        assert entry.is_file()  # kept before the first report attempt
        stale = timedelta(seconds=2)
        wait_for(lambda: clock.now() - rig.leases.read(task.id).heartbeat > stale,
                 what="the finishing lease's heartbeat to go stale")
        reconciler, _ = a_pass(rig, TinyTaskSource(fake.url, sleep=no_sleep))
        try:
            summary = reconciler.run_pass().summary
        finally:
            reconciler.close()
        assert summary.reclaimed == {}, summary.errors
        assert summary.outbox_delivered == 0  # its wrapper is delivering it
        assert wrapper.poll() is None
        assert wrapper.wait(RUN_TIMEOUT) == 0
        assert fake.task(number)["status"] == "complete"
        assert len(fake.comments_of(number)) == 1
        assert not entry.exists() and rig.leases.read(task.id) is None


# --- every call to the source has a deadline and a size cap ------------------------------


@pytest.fixture
def fake() -> Iterator[FakeTinyTask]:
    with FakeTinyTask() as server:
        yield server


def test_a_trickled_body_ends_at_the_call_deadline(fake: FakeTinyTask) -> None:
    """One byte every 50 ms never trips a per-read timeout; the call's deadline ends it."""
    for i in range(5):
        fake.add_task(f"task {i}", queue="dev")
    fake.trickle_next(1000, 0.05)
    source = TinyTaskSource(fake.url, timeout=0.5, call_deadline=1.0, sleep=no_sleep)
    with source, pytest.raises(SourceUnavailable, match="CALL_DEADLINE_SEC"):
        source.queue_idle_unassigned("dev")


def test_endless_pagination_stops_at_the_page_cap(fake: FakeTinyTask) -> None:
    fake.add_task("seed", queue="dev")
    fake.endless_pages = True
    source = TinyTaskSource(fake.url, page_size=10, max_pages=5, sleep=no_sleep)
    with source, pytest.raises(SourceError, match=r"more than 5 pages \(MAX_LIST_PAGES\)"):
        source.queue_idle_unassigned("dev")
    assert fake.count("GET", "/api/v1/queues/dev/tasks") == 5


def test_a_listing_stops_at_the_item_cap(fake: FakeTinyTask) -> None:
    for i in range(30):
        fake.add_task(f"task {i}", queue="dev")
    source = TinyTaskSource(fake.url, page_size=10, max_items=25, sleep=no_sleep)
    with source, pytest.raises(SourceError, match=r"more than 25 items \(MAX_LIST_ITEMS\)"):
        source.queue_idle_unassigned("dev")


def test_a_page_larger_than_its_limit_or_the_body_cap_is_refused(fake: FakeTinyTask) -> None:
    for i in range(30):
        fake.add_task(f"task {i}", queue="dev")
    fake.ignore_limit = True
    with TinyTaskSource(fake.url, page_size=10, sleep=no_sleep) as source, \
            pytest.raises(SourceError, match="30 items for limit 10"):
        source.queue_idle_unassigned("dev")
    with TinyTaskSource(fake.url, max_body_bytes=2000, sleep=no_sleep) as source, \
            pytest.raises(SourceError, match=r"2000 bytes accepted \(MAX_BODY_BYTES\)"):
        source.queue_idle_unassigned("dev")


def test_a_lost_answer_to_the_result_comment_posts_it_once(fake: FakeTinyTask) -> None:
    number = fake.add_task("Ship it", assigned_to=AGENT)
    with TinyTaskSource(fake.url, sleep=no_sleep) as source:
        source.claim(str(number), AGENT, "t0k3n")
        fake.lose_next(1, method="POST")
        applied = source.report(Result(str(number), AGENT, 1, SUCCEEDED, "t0k3n", "done"),
                                RetryPolicy(3, 0))
    assert applied.action == "complete"
    assert fake.task(number)["status"] == "complete"
    assert len(fake.comments_of(number)) == 1


def test_a_pass_against_a_trickling_server_ends_at_its_deadline(make_rig) -> None:
    """Every answer trickles: the pass gives up at its deadline with an error naming it,
    instead of holding the lock for ever."""
    with FakeTinyTask() as fake:
        for i in range(3):
            fake.add_task(f"task {i}", assigned_to=AGENT)
        rig = make_rig(TASK_SOURCE="tinytask", MCP_ENDPOINT=fake.url)
        fake.trickle_next(10**6, 0.05)
        reconciler, launcher = a_pass(rig, TinyTaskSource(fake.url, timeout=0.5,
                                                          sleep=no_sleep))
        reconciler.source_deadline_sec = 1.5
        try:
            summary = reconciler.run_pass().summary
        finally:
            reconciler.close()
        assert any("deadline of this pass" in error for error in summary.errors), \
            summary.errors
        assert launcher.launched == []


# --- one bad record never stops everyone ------------------------------------------------


def test_a_task_id_too_long_for_either_source_is_skipped_not_blocking(make_rig) -> None:
    with FakeTinyTask() as fake:
        huge = fake.add_task("huge id", assigned_to=AGENT, priority=9)
        fake.set_task(huge, id=10**19)
        normal = fake.add_task("normal", assigned_to=AGENT)
        rig = make_rig(TASK_SOURCE="tinytask", MCP_ENDPOINT=fake.url)
        reconciler, launcher = a_pass(rig, TinyTaskSource(fake.url, sleep=no_sleep))
        try:
            summary = reconciler.run_pass().summary
        finally:
            reconciler.close()
        assert launcher.launched == [str(normal)]
        assert "1 task(s) from the source had invalid data" in summary.errors


def test_a_non_object_in_the_working_listing_is_no_crash(fake: FakeTinyTask,
                                                         monkeypatch) -> None:
    first, second = fake.add_task("a", status="working"), fake.add_task("b", status="working")
    source = TinyTaskSource(fake.url, sleep=no_sleep)
    real_list = source._list
    monkeypatch.setattr(source, "_list", lambda path, params: [7, "x", *real_list(path, params)])
    with source:
        found = source.current([str(first), str(second)])
        assert {k: v.status for k, v in found.items()} == {str(first): WORKING,
                                                           str(second): WORKING}
        assert [t.id for t in source.working()] == [str(first), str(second)]


def test_outbox_entries_are_delivered_each_on_its_own(make_rig) -> None:
    """A dangling symlink, a FIFO and a directory in the outbox are left alone (never
    followed, opened or waited on); an entry whose delivery raises something unexpected
    is quarantined with the reason; the good entry is delivered."""
    rig = make_rig()
    good, bad = rig.add("good"), rig.add("bad")
    outbox_dir = rig.settings.outbox_dir
    outbox_dir.mkdir(parents=True, mode=0o700)
    os.symlink(rig.path("nowhere"), outbox_dir / "dangling.json")
    os.mkfifo(outbox_dir / "fifo.json", 0o600)
    (outbox_dir / "dir.json").mkdir()
    tokens = {}
    for task in (good, bad):
        tokens[task.id] = new_token("a1b2c3d4")
        rig.tasks.claim(task.id, AGENT, tokens[task.id])
        outbox.write(outbox_dir, Result(task.id, AGENT, 1, SUCCEEDED, tokens[task.id], "ok"))

    class Exploding:
        def __init__(self, store) -> None:
            self.store = store

        def report(self, result, policy):
            if result.task_id == bad.id:
                raise OverflowError("date value out of range")
            return self.store.report(result, policy)

        def __getattr__(self, name):
            return getattr(self.store, name)

    reconciler, _ = a_pass(rig, Exploding(rig.tasks))
    summary = reconciler.run_pass().summary
    assert summary.outbox_delivered == 1
    assert rig.tasks.get(good.id).status == COMPLETE
    assert any("OverflowError" in error for error in summary.errors)
    assert (outbox_dir / "corrupt" / f"{bad.id}-{tokens[bad.id]}.json").is_file()
    assert status_mod.collect(rig.settings)["outbox_pending"] == 0


def test_a_fifo_as_the_pause_file_is_an_error_not_a_hang(make_rig) -> None:
    rig = make_rig()
    rig.settings.state_dir.mkdir(parents=True, exist_ok=True)
    os.mkfifo(rig.settings.pause_file, 0o600)
    proc = subprocess.run([str(CONSOLE_SCRIPT), "pause"], env=cli_env(rig), cwd=rig.root,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "not a regular file" in proc.stderr and "Traceback" not in proc.stderr


def test_backoff_is_capped_for_any_attempt_count() -> None:
    policy = RetryPolicy(max_attempts=10**9, backoff_sec=10**9)
    assert policy.delay_after(10**6) == 30 * 24 * 3600


# --- a full or read-only disk never kills a healthy agent --------------------------------


def cli_env(rig: Rig) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYSCHEDULER_")}
    env.update(rig.environ())
    return env


class Mount:
    """A small tmpfs mounted for one test (needs the right to mount: root)."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                        str(path)], check=True, capture_output=True)

    def fill(self) -> Path:
        """Write a file until the file system is full; returns it."""
        filler = self.path / "filler"
        with open(filler, "wb") as handle:
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError:
                pass
        return filler

    def remount(self, option: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{option}", str(self.path)], check=True,
                       capture_output=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)


@pytest.fixture
def mount(tmp_path: Path) -> Iterator:
    made: list[Mount] = []

    def make(size: str = "8m") -> Mount:
        made.append(Mount(tmp_path / "disk", size))
        return made[-1]

    yield make
    for each in made:
        each.close()


def test_a_full_disk_never_kills_the_agent_and_the_result_waits_in_memory(
        tmp_path: Path, mount) -> None:
    """Everything of the scheduler (store, leases, logs, outbox) is on a tmpfs that fills
    up while the agent runs: heartbeats fail and are retried, the agent is untouched; its
    result can go nowhere, so the wrapper keeps it in memory until space frees up."""
    disk = mount("8m")
    rig = Rig(disk.path)
    try:
        task = rig.add()
        token = rig.prepare(task)
        ready, go = tmp_path / "ready", tmp_path / "go"
        wrapper = rig.spawn(task.id, token, AGENT_COMMAND=agent_command(
            "ready", str(ready), "wait", str(go)))
        agent = rig.track(read_pid(ready))
        wait_for(lambda: rig.leases.read(task.id).agent_pid == agent, what="the agent")
        filler = disk.fill()
        stale = timedelta(seconds=3 * rig.settings.heartbeat_sec)
        wait_for(lambda: clock.now() - rig.leases.read(task.id).heartbeat > stale,
                 what="heartbeats to fail for three intervals")
        assert not gone(agent) and wrapper.poll() is None
        go.touch()
        wait_for(lambda: gone(agent), what="the agent to end")
        assert wrapper.poll() is None  # holding the result
        assert rig.tasks.get(task.id).status == WORKING
        filler.unlink()
        assert wrapper.wait(RUN_TIMEOUT) == 0
        assert rig.tasks.get(task.id).status == COMPLETE
        assert rig.leases.read(task.id) is None
    finally:
        rig.close()


def test_a_read_only_state_gives_one_line_errors_and_status_says_so(
        tmp_path: Path, mount) -> None:
    disk = mount("8m")
    rig = Rig(disk.path)
    try:
        env = cli_env(rig)
        assert subprocess.run([str(CONSOLE_SCRIPT), "run", "--once"], env=env, cwd=disk.path,
                              capture_output=True, timeout=60).returncode == 0
        disk.remount("ro")
        for args in (["run", "--once"], ["pause"]):
            proc = subprocess.run([str(CONSOLE_SCRIPT), *args], env=env, cwd=disk.path,
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 1, (args, proc.stderr)
            assert "Traceback" not in proc.stderr
            # one line for the error (after the log's own lines, each one line too)
            assert proc.stderr.splitlines()[-1].startswith("error: ")
            assert "Read-only file system" in proc.stderr.splitlines()[-1]
        proc = subprocess.run([str(CONSOLE_SCRIPT), "status", "--json"], env=env,
                              cwd=disk.path, capture_output=True, text=True, timeout=60)
        report = json.loads(proc.stdout)
        assert "read-only file system" in report["disk"]["problem"]
        assert not report["healthy"]
    finally:
        rig.close()


def test_status_flags_low_disk_space(tmp_path: Path, mount) -> None:
    disk = mount("1m")
    rig = Rig(disk.path)
    try:
        report = status_mod.collect(rig.settings)
        assert report["disk"]["problem"].startswith("low disk space")
        assert report["disk"]["problem"] in report["problems"]
    finally:
        rig.close()


def test_settings_at_the_heartbeat_bounds_write_leases_that_decode(make_rig) -> None:
    """HEARTBEAT_SEC and STALE_MULTIPLIER at their largest accepted values: a pass writes
    leases that a later pass reads back (none quarantined)."""
    rig = make_rig(HEARTBEAT_SEC=bounds.HEARTBEAT_SEC_BOUNDS.high,
                   STALE_MULTIPLIER=bounds.STALE_MULTIPLIER_BOUNDS.high)
    task = rig.add()
    reconciler, launcher = a_pass(rig)
    try:
        reconciler.run_pass()
        summary = reconciler.run_pass().summary
    finally:
        reconciler.close()
    assert launcher.launched == [task.id]
    assert summary.leases_scanned == 1
    assert not (rig.settings.running_dir / "corrupt").exists()


# --- smaller holes -----------------------------------------------------------------------


def test_credentials_in_the_endpoint_are_never_shown(tmp_path: Path) -> None:
    """MCP_ENDPOINT with user:password, and a server that is down: config --show, status,
    the pass's errors, the scheduler log and last-pass.json all mask the credentials."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    rig = Rig(tmp_path, TASK_SOURCE="tinytask",
              MCP_ENDPOINT=f"http://scheduler:pa55word-xyz@127.0.0.1:{port}")
    try:
        env = cli_env(rig)
        shown = []
        for args in (["config", "--show"], ["run", "--once"], ["status", "--json"]):
            proc = subprocess.run([str(CONSOLE_SCRIPT), *args], env=env, cwd=tmp_path,
                                  capture_output=True, text=True, timeout=120)
            shown.append(proc.stdout + proc.stderr)
        logs = "".join(p.read_text() for p in (tmp_path / "state" / "logs").glob("*.log*"))
        last_pass = (tmp_path / "state" / "last-pass.json").read_text()
        everything = "\n".join([*shown, logs, last_pass])
        assert "pa55word-xyz" not in everything
        assert f"http://********@127.0.0.1:{port}" in shown[0]
        assert f"********@127.0.0.1:{port}" in last_pass  # the error still says where
    finally:
        rig.close()


DETACHING_AGENT = r'''
import os, subprocess, sys, time
fd = int(os.environ["TINYSCHEDULER_LIVENESS_FD"])
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # detached"],
                         start_new_session=True, pass_fds=(fd,))
with open(sys.argv[1] + ".tmp", "w") as out:
    out.write(str(child.pid))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(60)
'''


def test_a_detached_grandchild_holding_the_lock_is_named(make_rig) -> None:
    """The agent starts a detached (setsid) process that keeps the liveness descriptor;
    wrapper and agent are killed. The lease cannot be reclaimed under that process, and
    the pass says which process holds the lock."""
    rig = make_rig()
    script = rig.path("detaching_agent.py")
    script.write_text(DETACHING_AGENT)
    task = rig.add()
    token = rig.prepare(task)
    marker = rig.path("grandchild")
    wrapper = rig.spawn(task.id, token,
                        AGENT_COMMAND=f"{sys.executable} {script} {marker}")
    grandchild = rig.track(read_pid(marker))
    lease = rig.leases.read(task.id)
    wait_for(lambda: rig.leases.read(task.id).agent_pid, what="the agent recorded")
    agent = rig.track(rig.leases.read(task.id).agent_pid)
    wrapper.kill()
    os.kill(agent, 9)
    wait_for(lambda: gone(agent), what="the agent to die")
    stale = timedelta(seconds=lease.heartbeat_sec * lease.stale_multiplier)
    wait_for(lambda: clock.now() - rig.leases.read(task.id).heartbeat > stale,
             timeout=10, what="the heartbeat to go stale")
    reconciler, _ = a_pass(rig)
    try:
        summary = reconciler.run_pass().summary
    finally:
        reconciler.close()
    assert summary.reclaimed == {}
    assert any(f"liveness lock is held by pid {grandchild} (" in error and "# detached" in error
               for error in summary.errors), summary.errors
    assert rig.tasks.get(task.id).status == WORKING  # never requeued under it
