"""The promises that matter, each tested where it can break: no result lost, fencing,
nothing run under someone else's claim, and the failure branches of a pass.

Passes run in this process (``Reconciler.run_pass``) against a real state directory, a
real local task store and real lease files; the task source is wrapped so that one call
fails the way a source that is down fails (``SourceError``). Wrappers, agents and lock
holders are real processes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
from test_reconciler import make_scheduler as make_scheduler  # noqa: F401 - the fixture
from test_reconciler import wait_for as reconciler_wait_for
from test_wrapper import (
    AGENT,
    HOST,
    RUN_TIMEOUT,
    NoLaunch,
    Rig,
    agent_command,
    gone,
    history_after_claim,
    read_pid,
    wait_for,
)
from test_wrapper import make_rig as make_rig  # noqa: F401 - the fixture
from test_wrapper import rig as rig  # noqa: F401 - the fixture

from scheduler import clock
from scheduler.config.registry import Agent, Registry
from scheduler.errors import SourceError, SourceUnavailable
from scheduler.reconcile.launcher import ExecLauncher
from scheduler.reconcile.reconciler import Reconciler
from scheduler.sources.base import CANCELLED, COMPLETE, IDLE, WORKING, Result, RetryPolicy
from scheduler.state import outbox
from scheduler.state.leases import (
    RUNNING,
    STARTING,
    Lease,
    LeaseStore,
    new_token,
    owner_tag,
)
from wrapper.supervisor import Supervisor

pytestmark = pytest.mark.processes

CONSOLE_SCRIPT = Path(sys.executable).parent / "tinyscheduler"
REGISTRY = Registry((Agent(AGENT, None, 2),), legacy=True)


class Down:
    """A task source whose named calls fail like a source that is down.

    ``failing`` maps a method name to how many calls succeed before the failures start
    (0 = every call fails)."""

    def __init__(self, source, **failing: int) -> None:
        self.source = source
        self.failing = dict(failing)
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str):
        real = getattr(self.source, name)
        if name not in self.failing:
            return real

        def call(*args, **kwargs):
            count = self.calls[name] = self.calls.get(name, 0) + 1
            if count > self.failing[name]:
                raise SourceUnavailable(f"task source down ({name})")
            return real(*args, **kwargs)

        return call


def a_pass(rig: Rig, source=None, launcher=None, registry=REGISTRY, **settings_changes):
    """One in-process pass over the rig's state directory; its summary."""
    settings = replace(rig.settings, **settings_changes) if settings_changes else rig.settings
    reconciler = Reconciler(settings, registry, source=source or rig.tasks,
                            launcher=launcher or NoLaunch())
    return reconciler.run_pass().summary


def a_pass_with_nowhere_to_keep_a_result(rig: Rig, monkeypatch):
    """A pass whose source is down for reports and whose outbox is on a full disk."""
    def disk_full(*args):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(outbox, "write", disk_full)
        return a_pass(rig, Down(rig.tasks, report=0))


def claimed_lease(rig: Rig, **fields) -> tuple[str, Lease]:
    """A new task claimed in the store with a `running` lease of this host; (id, lease)."""
    return claimed_lease_for(rig, rig.add().id, **fields)


def claimed_lease_for(rig: Rig, task_id: str, **fields) -> tuple[str, Lease]:
    """Claim ``task_id`` and give it a `running` lease of this host; (id, lease)."""
    token = f"tok{task_id}"
    rig.tasks.claim(task_id, AGENT, token)
    now = clock.now()
    values = dict(task_id=task_id, agent=AGENT, state=RUNNING, spawn_token=token,
                  started_at=now, heartbeat=now, host=HOST, attempt=1, heartbeat_sec=1,
                  stale_multiplier=2)
    values.update(fields)
    lease = Lease(**values)  # type: ignore[arg-type]
    rig.leases.create(lease)
    return task_id, lease


def children() -> set[int]:
    """Pids of this process's children (zombies included)."""
    return {child.pid for child in psutil.Process().children()}


def dead_pid(spawn_python) -> tuple[int, float]:
    """The pid and start time of a process that has exited (and been reaped)."""
    child = spawn_python("import time; time.sleep(60)")
    started = psutil.Process(child.pid).create_time()
    child.kill()
    child.wait()
    return child.pid, started


def outbox_entry(rig: Rig, task_id: str, token: str, outcome: str = "succeeded") -> Path:
    return outbox.write(rig.settings.outbox_dir, Result(
        task_id=task_id, agent=AGENT, attempt=1, outcome=outcome, token=token,
        summary=f"{outcome} from the outbox", host=HOST, finished_at=clock.now()))


def good_entry_behind_garbage(rig: Rig):
    """A claimed task whose result waits in the outbox, and ahead of it (older) an entry
    that is not JSON, ``9-x.json``; the task."""
    task = rig.add()
    rig.tasks.claim(task.id, AGENT, "tok1")
    good = outbox_entry(rig, task.id, "tok1")
    os.utime(good, (2_000_000, 2_000_000))
    garbage = rig.settings.outbox_dir / "9-x.json"
    garbage.write_text("{not json")
    os.utime(garbage, (1_000_000, 1_000_000))
    return task


def hold_lock(spawn_python, rig: Rig, task_id: str):
    """A separate process holding the task's liveness lock until its stdin closes."""
    holder = spawn_python(
        "import sys\n"
        "from scheduler.state.leases import LeaseStore\n"
        f"lock = LeaseStore(__import__('pathlib').Path({str(rig.settings.running_dir)!r}))"
        f".liveness_lock({task_id!r})\n"
        "assert lock.acquire(0)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n")
    assert holder.stdout.readline().strip() == "locked"
    return holder


# --- no result lost: the outbox ---------------------------------------------------------


def test_a_failed_delivery_keeps_the_entry_and_stops_delivery_for_the_pass(rig: Rig) -> None:
    """Three results wait in the outbox; the source takes the first and goes down. The
    delivered entry is gone, the other two stay (none lost) for the next pass."""
    ids, entries = [], []
    for n in range(3):
        task = rig.add(f"task {n}")
        rig.tasks.claim(task.id, AGENT, f"tok{n}")
        ids.append(task.id)
        entries.append(outbox_entry(rig, task.id, f"tok{n}"))
        os.utime(entries[-1], (1_000_000 + n, 1_000_000 + n))  # delivery order: oldest first
    source = Down(rig.tasks, report=1)

    summary = a_pass(rig, source)

    assert (summary.outbox_delivered, summary.outbox_pending) == (1, 2)
    assert summary.errors == ["outbox delivery failed: task source down (report)"]
    assert source.calls["report"] == 2  # an unreachable source ends delivery for this pass
    assert [path.exists() for path in entries] == [False, True, True]
    assert [rig.tasks.get(i).status for i in ids] == [COMPLETE, WORKING, WORKING]

    summary = a_pass(rig)  # the source is back

    assert (summary.outbox_delivered, summary.outbox_pending) == (2, 0)
    assert summary.errors == []
    assert not any(path.exists() for path in entries)
    assert [rig.tasks.get(i).status for i in ids] == [COMPLETE] * 3


def test_an_unreadable_outbox_entry_is_quarantined_with_its_reason(rig: Rig) -> None:
    task = good_entry_behind_garbage(rig)
    hostile = rig.settings.outbox_dir / "8-y.json"
    hostile.write_text(json.dumps({"task_id": "../../etc", "agent": AGENT, "attempt": 1,
                                   "outcome": "succeeded", "token": "y"}))
    os.utime(hostile, (1_500_000, 1_500_000))

    summary = a_pass(rig)

    corrupt = rig.settings.outbox_dir / "corrupt"
    assert sorted(p.name for p in corrupt.iterdir()) == [
        "8-y.json", "8-y.json.reason", "9-x.json", "9-x.json.reason"]
    assert "invalid JSON at line 1" in (corrupt / "9-x.json.reason").read_text()
    assert "task id" in (corrupt / "8-y.json.reason").read_text()
    assert (corrupt / "9-x.json").read_text() == "{not json"  # kept as it was, never deleted
    assert len(summary.errors) == 2
    assert all("unreadable" in e and "moved to" in e for e in summary.errors)
    # a bad entry does not hold up the good one behind it
    assert (summary.outbox_delivered, summary.outbox_pending) == (1, 0)
    assert rig.tasks.get(task.id).status == COMPLETE


def test_an_unreadable_outbox_entry_that_cannot_be_moved_aside_is_kept_in_place(
        rig: Rig) -> None:
    """The quarantine itself fails (a file stands where ``corrupt/`` goes): the entry is
    left where it is (never deleted), the error says why, and the good entry behind it
    is still delivered."""
    task = good_entry_behind_garbage(rig)
    (rig.settings.outbox_dir / "corrupt").write_text("in the way")

    summary = a_pass(rig)

    [error] = summary.errors
    assert error.startswith("outbox entry 9-x.json unreadable (invalid JSON at line 1")
    assert "; could not be moved aside: " in error
    assert (rig.settings.outbox_dir / "9-x.json").read_text() == "{not json"
    assert (summary.outbox_delivered, summary.outbox_pending) == (1, 1)
    assert rig.tasks.get(task.id).status == COMPLETE


# --- fencing: the wrapper ---------------------------------------------------------------


def test_a_wrapper_fenced_after_its_agent_ended_reports_nothing(make_rig) -> None:
    """The lease is re-owned (a reclaim's fence) while the agent is finishing, before the
    wrapper's next heartbeat could notice: the last heartbeat before reporting fails, and
    the wrapper reports nothing over the newer owner."""
    rig = make_rig(HEARTBEAT_SEC=3600)  # no periodic heartbeat while the agent runs
    task = rig.add()
    token = rig.prepare(task)
    ready, go = rig.path("ready"), rig.path("go")
    wrapper = rig.spawn(task.id, token, AGENT_COMMAND=agent_command(
        "ready", str(ready), "wait", str(go), "print", "done"))
    rig.track(read_pid(ready))
    rig.leases.update(replace(rig.leases.read(task.id), spawn_token="f" * 16))
    go.touch()

    assert wrapper.wait(RUN_TIMEOUT) == 0

    assert rig.tasks.get(task.id).status == WORKING
    assert history_after_claim(rig, task.id) == []
    assert not list(rig.settings.outbox_dir.glob("*.json"))
    assert rig.leases.read(task.id).spawn_token == "f" * 16  # the new owner's lease stands
    text = rig.log_path(task.id).read_text()
    assert "outcome succeeded" in text and "nothing reported" in text
    assert "reported succeeded" not in text


def recording_heartbeat(monkeypatch, before_record) -> None:
    """Run ``before_record(store, task_id)`` just before the wrapper records its agent."""
    real = LeaseStore.heartbeat

    def heartbeat(self, task_id, token, now, **changes):
        if "agent_pid" in changes:
            before_record(self, task_id)
        return real(self, task_id, token, now, **changes)

    monkeypatch.setattr(LeaseStore, "heartbeat", heartbeat)


def test_a_lease_reowned_before_the_agent_is_recorded_runs_nothing(rig: Rig,
                                                                   monkeypatch) -> None:
    """In process: the fence lands between adoption and the gate. The gated agent is
    aborted (it never execs), nothing is reported, the new owner's lease stands."""
    task = rig.add()
    token = rig.prepare(task)
    ready = rig.path("ready")
    settings = replace(rig.settings, agent_command=agent_command("ready", str(ready)))

    def reown(store, task_id):
        store.update(replace(store.read(task_id), spawn_token="f" * 16))

    recording_heartbeat(monkeypatch, reown)
    before = children()
    assert Supervisor(settings, task.id, token).run() == 0

    assert not ready.exists()
    assert children() <= before  # the gated child exited and was reaped
    assert rig.tasks.get(task.id).status == WORKING
    assert history_after_claim(rig, task.id) == []
    assert rig.leases.read(task.id).spawn_token == "f" * 16
    assert "nothing reported" in rig.log_path(task.id).read_text()


def test_a_signal_before_the_agent_starts_cancels_without_running_it(rig: Rig,
                                                                      monkeypatch) -> None:
    task = rig.add()
    token = rig.prepare(task)
    ready = rig.path("ready")
    settings = replace(rig.settings, agent_command=agent_command("ready", str(ready)))
    recording_heartbeat(monkeypatch, lambda store, task_id: os.kill(os.getpid(),
                                                                    signal.SIGTERM))
    before = children()
    assert Supervisor(settings, task.id, token).run() == 0

    assert not ready.exists()
    assert children() <= before
    assert rig.tasks.get(task.id).status == CANCELLED
    summary = rig.summary(task.id)
    assert summary.startswith("cancelled: not started")
    assert f"wrapper got signal {int(signal.SIGTERM)} before the agent started" in summary
    assert rig.leases.read(task.id) is None


# --- fencing: the scheduler's compare-and-swap -------------------------------------------


def test_the_fence_loses_to_a_heartbeat_since_the_judgement(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "running")
    now = clock.now()
    store.create(Lease(task_id="7", agent=AGENT, state=RUNNING, spawn_token="tok7",
                       started_at=now, heartbeat=now, host=HOST, pid=os.getpid(),
                       pid_started_at=1.0))
    judged = store.read("7")
    assert store.heartbeat("7", "tok7", now + timedelta(seconds=5)) is not None

    assert store.reown(judged, "fence") is None

    assert store.read("7").spawn_token == "tok7"
    assert store.heartbeat("7", "tok7", now + timedelta(seconds=6)) is not None


def test_a_lease_that_heartbeats_after_it_was_judged_is_left_alone(rig: Rig,
                                                                    monkeypatch) -> None:
    """Another host's lease is judged stale, then its wrapper heartbeats before the
    reclaim: the fence fails, the lease and the task are left as they are."""
    hour_ago = clock.now() - timedelta(hours=1)
    task_id, lease = claimed_lease(rig, host="otherhost", started_at=hour_ago,
                                   heartbeat=hour_ago, pid=4242, pid_started_at=1.0)
    real_judge = Reconciler._judge

    def judge_then_heartbeat(self, judged, *args):
        verdict = real_judge(self, judged, *args)
        assert rig.leases.heartbeat(judged.task_id, judged.spawn_token, clock.now())
        return verdict

    monkeypatch.setattr(Reconciler, "_judge", judge_then_heartbeat)

    summary = a_pass(rig)

    assert summary.reclaimed == {} and summary.errors == []
    after = rig.leases.read(task_id)
    assert after is not None and after.spawn_token == lease.spawn_token
    assert rig.tasks.get(task_id).status == WORKING


# --- nothing runs under someone else's claim ---------------------------------------------


@pytest.mark.parametrize("how", ["pid recorded", "pid not recorded"])
def test_a_process_that_outlives_the_kill_keeps_its_lease(rig: Rig, spawn_python,
                                                          how: str) -> None:
    """A stale lease whose task lock is still held after the kill (here: by a process
    whose identity does not match the lease, which is never signalled) is not requeued,
    and its slot stays taken."""
    task = rig.add()
    waiting = rig.add("waits for the slot")
    holder = hold_lock(spawn_python, rig, task.id)
    hour_ago = clock.now() - timedelta(hours=1)
    pids = {"pid": holder.pid, "pid_started_at": 1.0} if how == "pid recorded" else {}
    task_id, lease = claimed_lease_for(rig, task.id, started_at=clock.now(),
                                       heartbeat=hour_ago, **pids)
    launcher = NoLaunch()

    summary = a_pass(rig, launcher=launcher,
                     registry=Registry((Agent(AGENT, None, 1),), legacy=True))

    assert launcher.launched == []  # the one slot is still the kept lease's
    assert rig.tasks.get(waiting.id).status == IDLE
    assert summary.reclaimed == {}
    [error] = summary.errors
    assert error.startswith(f"task {task_id}: could not stop its process (heartbeat-stale); "
                            "lease kept")
    assert holder.poll() is None  # a process whose identity does not match is not signalled
    assert rig.leases.read(task_id) is not None
    assert rig.tasks.get(task_id).status == WORKING  # never requeued under a live holder
    holder.stdin.close()
    holder.wait(timeout=10)


def test_a_lost_claim_race_rolls_the_lease_back(rig: Rig) -> None:
    """Between the listing and the claim another scheduler claimed the task: the lease
    just created is deleted again and nothing starts."""
    task = rig.add()

    class Raced:
        def __getattr__(self, name):
            return getattr(rig.tasks, name)

        def claim(self, task_id, agent, token):
            rig.tasks.claim(task_id, "elsewhere", "their-token")
            return rig.tasks.claim(task_id, agent, token)

    launcher = NoLaunch()
    summary = a_pass(rig, Raced(), launcher)

    assert (summary.spawned, summary.errors) == (0, [])
    assert launcher.launched == []
    assert rig.leases.read(task.id) is None
    after = rig.tasks.get(task.id)
    assert (after.status, after.assignee) == (WORKING, "elsewhere")


# --- the source down at each step --------------------------------------------------------


def test_source_down_during_a_reclaim_keeps_the_result_in_the_outbox(rig: Rig,
                                                                     spawn_python) -> None:
    pid, started = dead_pid(spawn_python)
    task_id, lease = claimed_lease(rig, pid=pid, pid_started_at=started)

    summary = a_pass(rig, Down(rig.tasks, report=0))

    assert summary.reclaimed == {"pid-dead": 1}
    assert rig.leases.read(task_id) is None
    entry = rig.settings.outbox_dir / f"{task_id}-{lease.spawn_token}.json"
    kept = json.loads(entry.read_text())
    assert (kept["outcome"], kept["task_id"], kept["attempt"]) == ("reclaimed", task_id, 1)
    assert rig.tasks.get(task_id).status == WORKING

    summary = a_pass(rig, retry_backoff_sec=600)

    assert summary.outbox_delivered == 1 and not entry.exists()
    task = rig.tasks.get(task_id)
    assert (task.status, task.attempts) == (IDLE, 1)
    assert task.last_error.startswith("attempt 1 reclaimed")


def test_source_down_while_checking_running_tasks_stops_nothing(rig: Rig,
                                                                spawn_python) -> None:
    task = rig.add()
    holder = hold_lock(spawn_python, rig, task.id)
    task_id, lease = claimed_lease_for(
        rig, task.id, pid=holder.pid, pid_started_at=psutil.Process(holder.pid).create_time(),
        heartbeat_sec=60)
    lease = rig.leases.read(task_id)

    summary = a_pass(rig, Down(rig.tasks, states=0))

    assert summary.errors == ["checking running tasks failed: task source down (states)"]
    assert summary.stopped == 0 and summary.reclaimed == {}
    assert holder.poll() is None
    assert rig.leases.read(task_id) == lease
    holder.stdin.close()
    holder.wait(timeout=10)


def test_source_down_during_a_claim_starts_nothing(rig: Rig) -> None:
    """The claim may have reached the source before it failed: nothing starts, and a
    `starting` lease that is kept is left to the spawn timeout."""
    ids = [rig.add(f"task {n}").id for n in range(2)]
    source = Down(rig.tasks, claim=0)
    launcher = NoLaunch()

    summary = a_pass(rig, source, launcher)

    assert len(summary.errors) == 1 and "task source down (claim)" in summary.errors[0]
    assert source.calls["claim"] == 1  # an unreachable source: no more claims this pass
    assert summary.spawned == 0 and launcher.launched == []
    assert all(lease.state == "starting" for lease in rig.leases.list())
    assert [rig.tasks.get(i).status for i in ids] == [IDLE, IDLE]


def test_source_down_while_listing_spawns_nothing(rig: Rig) -> None:
    task = rig.add()
    launcher = NoLaunch()
    summary = a_pass(rig, Down(rig.tasks, ready_window=0), launcher)
    assert summary.errors == ["task source down (ready_window)"]
    assert summary.spawned == 0 and launcher.launched == []
    assert rig.tasks.get(task.id).status == IDLE


# --- launching ----------------------------------------------------------------------------


@pytest.mark.parametrize("source_up", [True, False])
def test_a_wrapper_that_cannot_start_is_reported_as_launch_failed(rig: Rig,
                                                                  source_up: bool) -> None:
    """The exec launcher fails for real: its working directory (BASE_PATH) is gone."""
    task = rig.add()
    source = rig.tasks if source_up else Down(rig.tasks, report=0)
    missing = rig.path("moved-away")
    launcher = ExecLauncher(replace(rig.settings, base_path=missing))

    summary = a_pass(rig, source, launcher, retry_backoff_sec=600)

    assert summary.spawned == 0
    [error] = summary.errors
    assert error.startswith(f"task {task.id}: wrapper could not start: [Errno 2] No such "
                            "file or directory: ") and str(missing) in error
    assert rig.leases.read(task.id) is None
    if source_up:
        after = rig.tasks.get(task.id)
        assert (after.status, after.attempts) == (IDLE, 1)
        assert after.last_error.startswith("attempt 1 launch_failed: [Errno 2] No such file "
                                           "or directory")
    else:
        [entry] = rig.settings.outbox_dir.glob("*.json")
        assert json.loads(entry.read_text())["outcome"] == "launch_failed"
        assert rig.tasks.get(task.id).status == WORKING


def test_exec_mode_starts_real_wrappers_and_reaps_them(make_rig) -> None:
    """SPAWN_MODE=exec with the real launcher, in this process: each planned task gets a
    fresh ``python -m wrapper.main`` process; the next pass collects the exited ones."""
    rig = make_rig(SPAWN_MODE="exec", AGENT_COMMAND=agent_command("print", "started-by-exec"))
    env_file = rig.path("tinyscheduler.env")
    # the exec'd wrapper gets its settings the way an operator's install does: the env file
    values = rig.environ()
    assert not any("'" in value for value in values.values())
    env_file.write_text("".join(f"{name}='{value}'\n" for name, value in values.items()))
    settings = replace(rig.settings, env_file=env_file,
                       origins={**rig.settings.origins, "BASE_PATH": "flag"})
    ids = [rig.add(f"task {n}").id for n in range(2)]
    launcher = ExecLauncher(settings)
    reconciler = Reconciler(settings, REGISTRY, source=rig.tasks, launcher=launcher)
    before = children()
    try:
        summary = reconciler.run_pass().summary
        assert (summary.spawned, summary.errors) == (2, [])
        wait_for(lambda: all(rig.tasks.get(i).status == COMPLETE for i in ids), RUN_TIMEOUT,
                 "the exec'd wrappers to finish")
        for task_id in ids:
            assert "started-by-exec" in rig.tasks.details(task_id)["result_summary"]
        wrappers = children() - before
        assert len(wrappers) == 2
        wait_for(lambda: all(gone(pid) for pid in wrappers), RUN_TIMEOUT, "the wrappers to exit")
        summary = reconciler.run_pass().summary
        assert summary.errors == []
        assert not children() & wrappers  # reaped: no zombie left behind
    finally:
        reconciler.close()


# --- the real cancel path ------------------------------------------------------------------


def test_task_cancel_stops_the_live_wrapper_which_reports_cancelled(make_rig) -> None:
    rig = make_rig()
    task = rig.add()
    token = rig.prepare(task)
    ready, got_term = rig.path("ready"), rig.path("term")
    wrapper = rig.spawn(task.id, token, AGENT_COMMAND=agent_command(
        "on-term", str(got_term), "ready", str(ready), "sleep", "30"))
    agent = rig.track(read_pid(ready))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYSCHEDULER_")}
    env.update(rig.environ())

    cli = subprocess.run([str(CONSOLE_SCRIPT), "task", "cancel", task.id],
                         env=env, cwd=rig.root, capture_output=True, text=True,
                         timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)

    assert cli.returncode == 0, cli.stderr
    assert f"asked the wrapper of task {task.id} to stop" in cli.stdout
    assert wrapper.wait(RUN_TIMEOUT) == 0
    assert got_term.exists() and gone(agent)
    assert rig.tasks.get(task.id).status == CANCELLED
    assert rig.leases.read(task.id) is None


# --- both sides reconciled: a task reassigned elsewhere ------------------------------------


def test_an_outbox_entry_its_wrapper_delivered_since_the_listing_is_no_error(
        rig: Rig, monkeypatch) -> None:
    """The wrapper reports its own result and removes the entry while the pass is
    between listing the outbox and reading the entry: nothing to do, no error."""
    task = rig.add()
    rig.tasks.claim(task.id, AGENT, "tok1")
    entry = outbox_entry(rig, task.id, "tok1")
    listed = outbox.pending(rig.settings.outbox_dir)
    entry.unlink()
    monkeypatch.setattr(outbox, "pending", lambda _directory: listed)

    summary = a_pass(rig)

    assert summary.errors == []
    assert not (rig.settings.outbox_dir / "corrupt").exists()


def test_a_run_that_ended_since_the_listing_is_not_told_to_stop(rig: Rig,
                                                                 spawn_python) -> None:
    """The wrapper reports its result and drops its lease between the pass's lease
    listing and its look at the source: the task is complete, but the run is over, not
    unwanted. Its process is never signalled."""
    process = spawn_python("import time; time.sleep(60)")
    started = psutil.Process(process.pid).create_time()
    task_id, lease = claimed_lease(rig, pid=process.pid, pid_started_at=started)

    class FinishesFirst:
        def __init__(self, source) -> None:
            self.source = source

        def __getattr__(self, name: str):
            return getattr(self.source, name)

        def states(self, task_ids):
            rig.tasks.report(Result(task_id=task_id, agent=AGENT, attempt=1,
                                    outcome="succeeded", token=lease.spawn_token,
                                    summary="done"),
                             RetryPolicy.from_settings(rig.settings))
            rig.leases.delete(task_id, lease.spawn_token)
            return self.source.states(task_ids)

    summary = a_pass(rig, source=FinishesFirst(rig.tasks))

    assert summary.stopped == 0 and summary.errors == []
    assert process.poll() is None  # never signalled
    assert rig.tasks.get(task_id).status == COMPLETE


def test_a_run_whose_task_was_reassigned_to_another_agent_is_stopped(make_scheduler) -> None:
    """The source still has the task working, but on another agent (say, another
    scheduler claimed it after an operator reassigned it): this run must stop."""
    s = make_scheduler({"vaela": "dev", "damien": "dev"}, {"vaela": 1, "damien": 0})
    task_id = s.add("long hold", "--queue", "dev")
    s.run_once()
    lease = reconciler_wait_for(lambda: (s.leases().get(task_id) if s.leases().get(task_id)
                                         and s.leases()[task_id].agent_pid else None),
                                what="the agent to be recorded in the lease")
    assert lease.agent == "vaela"
    reconciler_wait_for(lambda: s.started(task_id), what="the agent to start")
    with sqlite3.connect(s.state / "tasks.db") as conn:
        conn.execute("UPDATE tasks SET assignee = 'damien', lease_token = 'theirs' "
                     "WHERE id = ?", (int(task_id),))
    conn.close()

    proc = s.run_once()

    assert json.loads((s.state / "last-pass.json").read_text())["stopped"] == 1, proc.stderr
    reconciler_wait_for(lambda: not s.leases(), what="the wrapper to stop and drop its lease")
    assert [e.kind for e in s.events()] == ["start", "term"]
    task = s.tasks()[task_id]
    assert (task.status, task.assignee) == ("working", "damien")  # the report was ignored


def test_a_reclaim_whose_result_cannot_be_kept_anywhere_keeps_the_lease(
        rig: Rig, spawn_python, monkeypatch) -> None:
    """Source down and the outbox unwritable (a full disk): the reclaim stops before
    dropping the lease, so the attempt is not lost; the next pass tries again."""
    pid, started = dead_pid(spawn_python)
    task_id, lease = claimed_lease(rig, pid=pid, pid_started_at=started)

    summary = a_pass_with_nowhere_to_keep_a_result(rig, monkeypatch)

    assert summary.reclaimed == {}
    [error] = summary.errors
    assert error.startswith(f"task {task_id}: reclaim failed: ")
    assert "No space left on device" in error
    assert rig.leases.read(task_id) is not None
    assert rig.tasks.get(task_id).status == WORKING

    summary = a_pass(rig, retry_backoff_sec=600)
    assert summary.reclaimed == {"pid-dead": 1} and summary.errors == []
    assert rig.leases.read(task_id) is None
    assert (rig.tasks.get(task_id).status, rig.tasks.get(task_id).attempts) == (IDLE, 1)


class Listing:
    """A source whose listing of idle tasks is replaced (say, what a remote source sent)."""

    def __init__(self, source, tasks, skipped: int = 0) -> None:
        self.source, self.tasks, self.skipped = source, tasks, skipped

    def __getattr__(self, name: str):
        return getattr(self.source, name)

    def assigned_idle(self, agent: str):
        return list(self.tasks)

    def ready_window(self, *, agent=None, queue=None, limit: int):
        return list(self.tasks)[:limit] if agent else []


@pytest.mark.parametrize("field", ["id", "recipe"])
def test_a_task_with_a_hostile_id_or_recipe_gets_no_lease_and_no_claim(rig: Rig,
                                                                        field: str) -> None:
    real = rig.add()
    hostile = replace(real, id="../../etc") if field == "id" else replace(real,
                                                                         recipe="../../x.yaml")
    launcher = NoLaunch()

    summary = a_pass(rig, Listing(rig.tasks, [hostile]), launcher)

    assert summary.spawned == 0 and launcher.launched == []
    assert not list(rig.settings.running_dir.glob("*.json"))
    assert rig.tasks.get(real.id).status == IDLE


def test_tasks_the_source_could_not_decode_are_counted_as_an_error(rig: Rig) -> None:
    summary = a_pass(rig, Listing(rig.tasks, [], skipped=2))
    assert summary.errors == ["2 task(s) from the source had invalid data"]


def test_a_task_leased_meanwhile_is_not_claimed(rig: Rig) -> None:
    """Between the listing and the lease, the task got a lease (another scheduler sharing
    the state directory): the exclusive create fails, and the task is left to its owner."""
    task = rig.add()
    theirs = Lease(task_id=task.id, agent=AGENT, state=RUNNING, spawn_token="theirs",
                   started_at=clock.now(), heartbeat=clock.now(), host="otherhost")

    class LeasedMeanwhile(Listing):
        def ready_window(self, *, agent=None, queue=None, limit: int):
            listed = super().ready_window(agent=agent, queue=queue, limit=limit)
            if listed:
                rig.leases.create(theirs)
            return listed

    launcher = NoLaunch()
    summary = a_pass(rig, LeasedMeanwhile(rig.tasks, [task]), launcher)

    assert (summary.spawned, summary.errors, launcher.launched) == (0, [], [])
    assert rig.leases.read(task.id).spawn_token == "theirs"
    assert rig.tasks.get(task.id).status == IDLE  # never claimed


def test_an_unwanted_run_whose_pid_is_not_the_wrapper_is_never_signalled(
        rig: Rig, spawn_python) -> None:
    """The source cancelled the task, but the pid in the lease no longer has the recorded
    start time: nothing is signalled (a recycled pid belongs to someone else)."""
    task = rig.add()
    holder = hold_lock(spawn_python, rig, task.id)
    task_id, _ = claimed_lease_for(rig, task.id, pid=holder.pid, pid_started_at=1.0,
                                   heartbeat_sec=60)
    rig.tasks.cancel(task_id, detail="not needed")

    summary = a_pass(rig)

    assert summary.stopped == 0 and summary.errors == []
    assert holder.poll() is None
    holder.stdin.close()
    holder.wait(timeout=10)


def test_a_signal_as_the_agent_starts_still_stops_it(rig: Rig, monkeypatch) -> None:
    """SIGTERM lands after the gate opened but before the wait loop listens for it."""
    task = rig.add()
    token = rig.prepare(task)
    ready = rig.path("ready")
    settings = replace(rig.settings, agent_command=agent_command(
        "ready", str(ready), "sleep", "60"))
    real_open = Supervisor._open_wakeup

    def signalled_first(self):
        read_pid(ready)  # the agent runs
        os.kill(os.getpid(), signal.SIGTERM)
        real_open(self)

    monkeypatch.setattr(Supervisor, "_open_wakeup", signalled_first)
    assert Supervisor(settings, task.id, token).run() == 0

    assert gone(int(ready.read_text()))
    assert rig.tasks.get(task.id).status == CANCELLED
    assert f"wrapper got signal {int(signal.SIGTERM)}" in rig.summary(task.id)


def test_a_pass_in_exec_mode_runs_the_backlog(make_scheduler) -> None:
    """`tinyscheduler run --once` with SPAWN_MODE=exec: fresh wrapper processes."""
    s = make_scheduler({"vaela": "dev"}, {"vaela": 2}, SPAWN_MODE="exec")
    ids = [s.add(f"task {n}", "--queue", "dev") for n in range(3)]
    s.pass_until(s.all_done)
    assert sorted(e.task for e in s.events() if e.kind == "end") == sorted(ids)
    reconciler_wait_for(lambda: not s.leases(), what="every lease to be dropped")


def test_a_run_whose_task_was_deleted_is_stopped(rig: Rig) -> None:
    """The source no longer knows the task (deleted): its running wrapper is told to stop
    and stops its agent."""
    task = rig.add()
    token = rig.prepare(task)
    ready, got_term = rig.path("ready"), rig.path("term")
    wrapper = rig.spawn(task.id, token, AGENT_COMMAND=agent_command(
        "on-term", str(got_term), "ready", str(ready), "sleep", "60"))
    agent = rig.track(read_pid(ready))
    wait_for(lambda: rig.leases.read(task.id).agent_pid == agent, what="the agent recorded")

    class Deleted(Listing):
        def states(self, task_ids):
            return {task_id: None for task_id in task_ids}

    summary = a_pass(rig, Deleted(rig.tasks, []))

    assert summary.stopped == 1 and summary.errors == []
    assert wrapper.wait(RUN_TIMEOUT) == 0
    assert got_term.exists() and gone(agent)
    assert rig.leases.read(task.id) is None


def test_a_wrapper_killed_while_reporting_leaves_its_lease_for_a_reclaim(
        tmp_path: Path) -> None:
    """The lease goes only after the result is safe: a wrapper SIGKILLed while it talks
    to the source leaves its lease, and the next pass reclaims it; the task is not
    stranded as working with nothing to reclaim."""
    from fake_tinytask import FakeTinyTask
    from test_wrapper import start_tinytask_attempt

    with FakeTinyTask() as fake:
        number = fake.add_task("Ship it", assigned_to=AGENT)
        rig = Rig(tmp_path, TASK_SOURCE="tinytask", MCP_ENDPOINT=fake.url)
        reconciler = None
        try:
            task, token, wrapper, go = start_tinytask_attempt(rig, fake, number)
            before = len(fake.requests)
            fake.delay_next(1, 2.0)
            go.touch()
            wait_for(lambda: len(fake.requests) > before, what="the wrapper to report")
            wrapper.send_signal(signal.SIGKILL)
            wrapper.wait(RUN_TIMEOUT)

            assert rig.leases.read(task.id) is not None  # still there: the result is not
            wait_for(lambda: not rig.leases.is_held(task.id), what="the lock to be free")

            reconciler = Reconciler(replace(rig.settings, retry_backoff_sec=600), REGISTRY,
                                    launcher=NoLaunch())
            summary = reconciler.run_pass().summary
            assert summary.reclaimed == {"pid-dead": 1}, summary.errors
            assert rig.leases.read(task.id) is None
            assert fake.task(number)["status"] in ("idle", "complete")  # never left working
        finally:
            if reconciler is not None:
                reconciler.close()
            rig.close()


def test_a_lease_that_cannot_be_written_skips_that_task_only(rig: Rig, monkeypatch) -> None:
    first, second = rig.add("first").id, rig.add("second").id
    real_create = LeaseStore.create

    def create(self, lease):
        if lease.task_id == first:
            raise OSError(28, "No space left on device")
        return real_create(self, lease)

    monkeypatch.setattr(LeaseStore, "create", create)
    launcher = NoLaunch()
    summary = a_pass(rig, launcher=launcher)

    assert summary.errors[0] == (f"task {first}: lease failed: [Errno 28] No space left on "
                                 "device")
    assert launcher.launched == [second]  # the next task was still leased and claimed
    assert rig.tasks.get(first).status == IDLE  # never claimed without a lease


def test_an_unexpected_error_in_a_claim_leaves_no_lease(rig: Rig) -> None:
    task = rig.add()

    class Broken(Listing):
        def claim(self, task_id, agent, token):
            raise RuntimeError("a bug in the source")

    with pytest.raises(RuntimeError, match="a bug in the source"):
        a_pass(rig, Broken(rig.tasks, [task]))
    assert rig.leases.read(task.id) is None


# --- the failure branches of reclaiming, requeueing and spawning ------------------------


def test_a_reclaim_whose_outcome_cannot_be_recorded_still_requeues(rig: Rig,
                                                                   spawn_python) -> None:
    """The outcomes record is only a record: when it cannot be written (here a directory
    stands where the file goes), the reclaim goes on and the task is requeued."""
    pid, started = dead_pid(spawn_python)
    task_id, _ = claimed_lease(rig, pid=pid, pid_started_at=started)
    rig.settings.outcomes_file.mkdir(parents=True)

    summary = a_pass(rig, retry_backoff_sec=600)

    assert summary.reclaimed == {"pid-dead": 1} and summary.errors == []
    assert rig.leases.read(task_id) is None
    assert (rig.tasks.get(task_id).status, rig.tasks.get(task_id).attempts) == (IDLE, 1)


def test_a_stranded_task_whose_requeue_cannot_be_kept_anywhere_stays_for_the_next_pass(
        rig: Rig, monkeypatch) -> None:
    """Source down for the report and the outbox unwritable (a full disk): requeueing a
    stranded task fails for that task only, it stays working, and the next pass
    requeues it."""
    owner = owner_tag(rig.settings.hostname, rig.settings.running_dir)
    stranded = rig.add("stranded")
    rig.tasks.claim(stranded.id, AGENT, new_token(owner))

    summary = a_pass_with_nowhere_to_keep_a_result(rig, monkeypatch)

    assert summary.reclaimed == {}
    [error] = summary.errors
    assert error.startswith(f"task {stranded.id}: requeueing stranded task failed: ")
    assert "No space left on device" in error
    assert rig.tasks.get(stranded.id).status == WORKING

    summary = a_pass(rig, retry_backoff_sec=600)
    assert summary.reclaimed == {"stranded": 1} and summary.errors == []
    assert (rig.tasks.get(stranded.id).status, rig.tasks.get(stranded.id).attempts) == \
        (IDLE, 1)


def test_a_failed_claim_skips_that_task_only(rig: Rig) -> None:
    """One claim fails with an error that is not an outage: that task keeps its
    `starting` lease (the claim may have been applied: the spawn timeout settles it) and
    nothing is launched for it; the next planned task is still claimed and launched."""
    refused, taken = rig.add("refused"), rig.add("taken")

    class Refusing:
        def __init__(self, store) -> None:
            self.store = store

        def __getattr__(self, name):
            return getattr(self.store, name)

        def claim(self, task_id, agent, token):
            if task_id == refused.id:
                raise SourceError(f"task {task_id}: claim refused")
            return self.store.claim(task_id, agent, token)

    launcher = NoLaunch()
    summary = a_pass(rig, Refusing(rig.tasks), launcher=launcher)

    assert summary.errors[0] == f"task {refused.id}: task {refused.id}: claim refused"
    assert launcher.launched == [taken.id]  # (NoLaunch fails every launch: reported)
    assert rig.leases.read(refused.id).state == STARTING
    assert rig.tasks.get(refused.id).status == IDLE


def test_source_down_while_reading_running_files_holds_back_tasks_declaring_files(
        rig: Rig, spawn_python) -> None:
    """Which files the running tasks hold cannot be read (source down for that call): a
    waiting task that declares files waits rather than risk a clash; one that declares
    none still starts."""
    running = rig.add("running")
    holder = hold_lock(spawn_python, rig, running.id)  # its wrapper is alive
    claimed_lease_for(rig, running.id)
    with_files = rig.add("declares files", files=["src/auth/**"])
    without = rig.add("declares nothing")
    launcher = NoLaunch()

    summary = a_pass(rig, Down(rig.tasks, current=0), launcher=launcher,
                     registry=Registry((Agent(AGENT, None, 3),), legacy=True))

    assert "reading the files of running tasks failed: task source down (current)" in \
        summary.errors
    assert launcher.launched == [without.id]
    assert rig.tasks.get(with_files.id).status == IDLE and \
        rig.leases.read(with_files.id) is None
    holder.stdin.close()
    holder.wait(timeout=10)
