"""The wrapper's safety paths under faults: a lease that vanishes, cannot be read or
rewritten, or is re-owned mid-recovery (also while the workspace is prepared, its hooks
run or its branch is about to merge); a result that can go neither to the source nor to
the outbox; bookkeeping that fails after the result is safe; a run coordinator that cannot
be reached; a task source that is down; a full log disk.

Most tests run one whole attempt in process (``Supervisor.run``) with a real agent process
(``tests/fake_agent.py``) and a real local store, the fault injected once at the boundary
it stands for (the lease store, the outbox, the source); the others run real wrapper
processes against a fake TinyTask server or a real workspace. Each asserts what the task,
the lease, the outbox and the attempt log show afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest
from fake_tinytask import FakeTinyTask
from test_hardening import mount as mount  # noqa: F401 - the fixture
from test_wrapper import (
    AGENT,
    RUN_TIMEOUT,
    Rig,
    agent_command,
    gone,
    history_after_claim,
    read_pid,
    start_tinytask_attempt,
    wait_for,
)
from test_wrapper import make_rig as make_rig  # noqa: F401 - the fixture
from test_wrapper import rig as rig  # noqa: F401 - the fixture

import wrapper.supervisor as supervisor_mod
from scheduler.config.registry import Agent, Registry
from scheduler.errors import SourceUnavailable
from scheduler.reconcile.reconciler import Reconciler
from scheduler.sources.base import CANCELLED, COMPLETE, IDLE, WORKING, Result, RetryPolicy
from scheduler.sources.local import LocalStore
from scheduler.state import outbox, records, throttles
from scheduler.state.leases import FINISHING, MERGING, LeaseStore, new_token
from wrapper.supervisor import Supervisor

pytestmark = pytest.mark.processes


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def io_error(*_args, **_kwargs) -> None:
    """A fault action: the disk is full."""
    raise disk_full()


def prepare(rig: Rig, *steps: str, **changes: object) -> tuple[str, str, Supervisor]:
    """A new task claimed with a `starting` lease, and the wrapper (not yet run) whose
    agent runs ``steps``: (task id, spawn token, supervisor)."""
    task = rig.add()
    token = rig.prepare(task)
    settings = replace(rig.settings, agent_command=agent_command(*steps), **changes)
    return task.id, token, Supervisor(settings, task.id, token)


def run_attempt(rig: Rig, *steps: str, **changes: object) -> tuple[str, str, int]:
    """One whole in-process attempt: (task id, spawn token, the wrapper's exit code)."""
    task_id, token, wrapper = prepare(rig, *steps, **changes)
    return task_id, token, wrapper.run()


def log_text(rig: Rig, task_id: str) -> str:
    return rig.log_path(task_id).read_text()


class OneShot:
    """Replace ``owner.name`` so that its first qualifying call runs ``before`` (which may
    raise) and every call then goes to the original."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: object, name: str, before,
                 when=lambda *args, **kwargs: True) -> None:
        self.original = getattr(owner, name)
        self.calls = 0
        self.fired = False

        def replacement(*args, **kwargs):
            self.calls += 1
            if not self.fired and when(*args, **kwargs):
                self.fired = True
                before(*args, **kwargs)
            return self.original(*args, **kwargs)

        monkeypatch.setattr(owner, name, replacement)


def delete_lease_file(rig: Rig):
    """A fault action: the lease file of the call's task disappears (an operator, a bad
    cleanup script) just before the store operation runs."""
    def act(_store, task_id, *args, **kwargs) -> None:
        rig.lease_path(task_id).unlink()
    return act


# --- the lease lost while the task is still ours -----------------------------------------


@pytest.mark.parametrize("fault", ["read", "create"])
def test_a_lost_lease_that_cannot_be_read_or_rewritten_at_once_is_retried(
        rig: Rig, monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    """The lease vanishes at the wrapper's first heartbeat; re-reading it (or rewriting
    it) then fails with an I/O error. That is a retry, never a fence: the agent runs to
    its end, the next heartbeat rewrites the lease and the success is reported."""
    marker = rig.path("ran")
    task_id, _token, wrapper = prepare(rig, "write", str(marker), "yes", "print", "done")
    lost = OneShot(monkeypatch, LeaseStore, "heartbeat", delete_lease_file(rig))

    OneShot(monkeypatch, LeaseStore, fault, io_error, when=lambda *a, **k: lost.fired)
    code = wrapper.run()
    assert code == 0
    assert marker.read_text() == "yes"  # the agent was never stopped
    assert rig.tasks.get(task_id).status == COMPLETE
    text = log_text(rig, task_id)
    said = "lease unreadable" if fault == "read" else "rewriting the missing lease failed"
    assert f"{said} ([Errno {errno.ENOSPC}]" in text and "); retrying" in text
    assert "rewritten from the wrapper's own record" in text
    assert rig.leases.read(task_id) is None


def test_a_lease_gone_with_this_attempts_result_in_the_outbox_is_fenced_before_the_agent_runs(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass reclaimed the attempt between adoption and the agent's start: it deleted the
    lease and kept the reclaim's result in the outbox under this attempt's token. The
    wrapper must take that as a fence: the gated agent never runs, nothing is reported."""
    def reclaimed_by_a_pass(_store, task_id, token, *args, **kwargs) -> None:
        outbox.write(rig.settings.outbox_dir, Result(
            task_id=task_id, agent=AGENT, attempt=1, outcome="reclaimed", token=token,
            summary="reclaimed: test"))
        rig.lease_path(task_id).unlink()

    marker = rig.path("ran")
    task_id, token, wrapper = prepare(rig, "write", str(marker), "yes")
    OneShot(monkeypatch, LeaseStore, "heartbeat", reclaimed_by_a_pass)
    code = wrapper.run()
    assert code == 0
    assert not marker.exists()  # the gate never opened
    assert rig.tasks.get(task_id).status == WORKING  # the wrapper reported nothing
    entry = outbox.path_for(rig.settings.outbox_dir, task_id, token)
    assert json.loads(entry.read_text())["outcome"] == "reclaimed"  # the pass's, untouched
    assert rig.leases.read(task_id) is None  # not rewritten
    assert "agent stopped, nothing reported" in log_text(rig, task_id)


def test_a_lease_rewritten_by_someone_else_during_recovery_fences_at_the_next_beat(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lease vanishes; while the wrapper checks the source, another lease for the task
    appears (a new owner). Its own rewrite then fails as already leased: it does not
    overwrite, and at the next heartbeat it finds the other owner's token and reports
    nothing."""
    task_id, _token, wrapper = prepare(rig, "print", "done")
    OneShot(monkeypatch, LeaseStore, "heartbeat", delete_lease_file(rig))
    other = new_token("0badc0de")
    real_create = LeaseStore.create

    def another_owner_first(store, lease) -> None:
        real_create(store, replace(lease, spawn_token=other))

    OneShot(monkeypatch, LeaseStore, "create", another_owner_first)
    code = wrapper.run()
    assert code == 0
    assert rig.tasks.get(task_id).status == WORKING  # nothing reported
    assert history_after_claim(rig, task_id) == []
    lease = rig.leases.read(task_id)
    assert lease is not None and lease.spawn_token == other  # the new owner's, kept
    assert "re-owned before reporting: nothing reported" in log_text(rig, task_id)
    assert not list(rig.settings.outbox_dir.glob("*.json"))


# --- the result ---------------------------------------------------------------------------


def fail_report_once(monkeypatch: pytest.MonkeyPatch, then=None) -> OneShot:
    def unreachable(*_args, **_kwargs) -> None:
        if then is not None:
            then()
        raise SourceUnavailable("the task source is down (test)")

    return OneShot(monkeypatch, LocalStore, "report", unreachable)


def test_a_result_that_can_go_nowhere_is_kept_in_memory_until_it_can(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    OneShot(monkeypatch, supervisor_mod.outbox, "write", io_error)
    fail_report_once(monkeypatch)
    task_id, _token, code = run_attempt(rig, "print", "done")
    assert code == 0
    assert rig.tasks.get(task_id).status == COMPLETE
    text = log_text(rig, task_id)
    assert "the result could not be written to the outbox" in text
    assert "result neither reported nor written to the outbox; kept in memory" in text
    assert not list(rig.settings.outbox_dir.glob("*.json"))
    assert rig.leases.read(task_id) is None


def test_a_result_kept_in_memory_is_dropped_when_its_lease_is_re_owned(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the result waits in memory, a pass re-owns the lease (it judged the attempt
    dead): the wrapper drops its result, leaving the task to the new owner, and records
    no outcome (the pass records what it reclaimed)."""
    OneShot(monkeypatch, supervisor_mod.outbox, "write", io_error)
    other = new_token("0badc0de")

    def a_pass_re_owns() -> None:
        [lease] = rig.leases.list()
        assert lease.state == FINISHING
        assert rig.leases.reown(lease, other) is not None

    fail_report_once(monkeypatch, then=a_pass_re_owns)
    task_id, _token, code = run_attempt(rig, "print", "done")
    assert code == 0
    assert rig.tasks.get(task_id).status == WORKING
    assert history_after_claim(rig, task_id) == []
    assert rig.leases.read(task_id).spawn_token == other
    assert "re-owned while the result was kept in memory: dropped" in log_text(rig, task_id)
    assert not rig.settings.outcomes_file.exists()


def test_an_outbox_entry_that_cannot_be_removed_is_delivered_again_as_a_duplicate(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The source took the result but its outbox entry cannot be removed: it stays, and
    the next pass's delivery is ignored by the source (already applied) and removes it."""
    outbox_dir = rig.settings.outbox_dir

    def refuse_in_outbox(path: Path, *args, **kwargs) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted", str(path))

    OneShot(monkeypatch, Path, "unlink", refuse_in_outbox,
            when=lambda path, *a, **k: path.parent == outbox_dir)
    task_id, token, code = run_attempt(rig, "print", "done")
    assert code == 0
    assert "delivered, but the outbox entry stays" in log_text(rig, task_id)
    entry = outbox.path_for(outbox_dir, task_id, token)
    assert entry.is_file()
    transitions = [row["to_status"] for row in rig.tasks.history(task_id)]

    registry = Registry((Agent(AGENT, None, 1),), legacy=True)
    reconciler = Reconciler(rig.settings, registry, launcher=None)
    try:
        summary = reconciler.run_pass().summary
    finally:
        reconciler.close()
    assert (summary.outbox_delivered, summary.outbox_pending) == (1, 0), summary.errors
    assert not entry.exists()
    assert rig.tasks.get(task_id).status == COMPLETE
    assert [row["to_status"] for row in rig.tasks.history(task_id)] == transitions


@pytest.mark.parametrize("failing", ["outcome record", "agent hold"])
def test_bookkeeping_that_fails_after_the_result_never_loses_it(
        rig: Rig, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    if failing == "outcome record":
        OneShot(monkeypatch, records, "append_outcome", io_error)
    else:
        OneShot(monkeypatch, throttles, "record_success", io_error)
    task_id, _token, code = run_attempt(rig, "print", "done")
    assert code == 0
    assert rig.tasks.get(task_id).status == COMPLETE
    said = ("could not record the outcome" if failing == "outcome record"
            else "could not record the agent's hold or cost")
    assert said in log_text(rig, task_id)
    assert rig.leases.read(task_id) is None


def test_deleting_the_lease_is_retried_then_given_up_safely(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The result is reported; deleting the lease fails once (retried), and with the
    retry window at zero the wrapper gives up: the lease stays `finishing`, and its
    reclaim's report would be ignored (the attempt's result was applied)."""
    task_id, token, wrapper = prepare(rig, "print", "done")
    attempts = OneShot(monkeypatch, LeaseStore, "delete", io_error)
    code = wrapper.run()
    assert code == 0 and attempts.calls == 2
    assert "deleting the lease failed" in log_text(rig, task_id)
    assert rig.leases.read(task_id) is None

    monkeypatch.setattr(supervisor_mod, "DELETE_RETRY_SEC", 0.0)
    monkeypatch.setattr(LeaseStore, "delete", lambda *a, **k: io_error())
    task_id, token, code = run_attempt(rig, "print", "done")
    assert code == 0
    assert "deleting the lease failed" in log_text(rig, task_id)
    assert "giving up" in log_text(rig, task_id)
    assert rig.tasks.get(task_id).status == COMPLETE
    lease = rig.leases.read(task_id)
    assert lease is not None and lease.state == FINISHING and lease.spawn_token == token
    assert not rig.leases.is_held(task_id)  # the wrapper let go of its liveness lock
    late = Result(task_id=task_id, agent=AGENT, attempt=1, outcome="reclaimed", token=token,
                  summary="reclaimed: pid-dead")
    assert rig.tasks.report(late, RetryPolicy(3, 10)).action == "ignored"
    assert rig.tasks.get(task_id).status == COMPLETE


# --- several hosts: the run coordinator ---------------------------------------------------


class UnreachableCoordinator:
    """A run coordinator whose database cannot be reached."""

    def __init__(self) -> None:
        self.renewals = 0

    def renew(self, task_id: str, token: str) -> bool:
        self.renewals += 1
        raise SourceUnavailable("could not reach the database (test)")

    def close(self) -> None:
        return None


def test_a_wrapper_that_loses_the_database_longer_than_the_stale_window_stops_its_agent(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Other hosts reclaim a run whose row goes stale; a wrapper cut off from the database
    for longer than HEARTBEAT_SEC x STALE_MULTIPLIER (1 x 2 s here) must stop its agent
    rather than run on beside the new owner."""
    import scheduler.sources as sources

    coordinator = UnreachableCoordinator()
    monkeypatch.setattr(sources, "open_coordinator", lambda settings: coordinator)
    ready = rig.path("ready")
    task_id, _token, code = run_attempt(rig, "ready", str(ready), "sleep", "60")
    assert code == 0
    assert gone(int(ready.read_text()))
    assert coordinator.renewals >= 3
    task = rig.tasks.get(task_id)
    assert task.status == IDLE and task.last_error.startswith("attempt 1 stalled")
    text = log_text(rig, task_id)
    assert "cannot renew the run (could not reach the database (test)); silent for" in text
    assert "another host takes the task over" in text


# --- real wrapper processes ---------------------------------------------------------------


def test_a_lost_lease_while_tinytask_is_down_keeps_the_agent_until_it_can_tell(
        tmp_path: Path) -> None:
    """The lease vanishes while TinyTask answers 503: the wrapper cannot tell a reclaim
    from an accident, so it neither stops the agent nor rewrites the lease; once the
    server answers again (the task is still working under its token) the lease is
    rewritten and the agent's success reported."""
    with FakeTinyTask() as fake:
        number = fake.add_task("Ship it", assigned_to=AGENT)
        rig = Rig(tmp_path, TASK_SOURCE="tinytask", MCP_ENDPOINT=fake.url)
        try:
            task, token, wrapper, go = start_tinytask_attempt(rig, fake, number)
            agent = int(rig.path("ready").read_text())
            wait_for(lambda: rig.leases.read(task.id).agent_pid == agent, what="the agent")
            fake.fail_next(10_000, status=503)
            rig.lease_path(task.id).unlink()
            wait_for(lambda: "the task source unreachable" in log_text(rig, task.id),
                     timeout=RUN_TIMEOUT, what="the wrapper to find the source down")
            assert not gone(agent) and wrapper.poll() is None
            assert rig.leases.read(task.id) is None  # not rewritten blindly
            fake.fail_next(0)
            wait_for(lambda: (lease := rig.leases.read(task.id)) is not None
                     and lease.spawn_token == token, timeout=RUN_TIMEOUT,
                     what="the lease to be rewritten")
            go.touch()
            assert wrapper.wait(RUN_TIMEOUT) == 0
            assert fake.task(number)["status"] == "complete"
            assert rig.leases.read(task.id) is None
        finally:
            rig.close()


def test_what_the_agent_said_waits_in_the_outbox_whole_while_tinytask_is_down(
        tmp_path: Path) -> None:
    """The agent's result file (summary, usage, links, changed files) goes into the result;
    when the source is down the outbox entry keeps all of it for the next pass."""
    with FakeTinyTask() as fake:
        number = fake.add_task("Ship it", assigned_to=AGENT)
        rig = Rig(tmp_path, TASK_SOURCE="tinytask", MCP_ENDPOINT=fake.url)
        try:
            from scheduler.sources.tinytask import TinyTaskSource

            with TinyTaskSource(fake.url) as source:
                task = source.current([str(number)])[str(number)]
                token = rig.prepare(task, claim=source.claim)
            said = {"outcome": "succeeded", "summary": "fixed the login", "cost_usd": 0.5,
                    "tokens_in": 1200, "tokens_out": 300,
                    "links": ["https://example.invalid/pr/1"],
                    "files_changed": ["src/login.py"]}
            result_path = rig.settings.task_log_dir / task.id / "attempt-1.result.json"
            fake.fail_next(10_000, status=503)
            assert rig.run(task.id, token, AGENT_COMMAND=agent_command(
                "write", str(result_path), json.dumps(said))) == 0
            entry = json.loads(outbox.path_for(rig.settings.outbox_dir, task.id, token)
                               .read_text())
            assert entry["outcome"] == "succeeded"
            assert entry["detail"]["summary"] == "fixed the login"
            assert entry["detail"]["links"] == ["https://example.invalid/pr/1"]
            assert entry["detail"]["files_changed"] == ["src/login.py"]
            assert entry["detail"]["usage"] == {"cost_usd": 0.5, "tokens_in": 1200,
                                                "tokens_out": 300}
            assert "agent: fixed the login" in entry["summary"]
        finally:
            rig.close()


@pytest.mark.parametrize("earlier", ["a result", "a bad result file"])
def test_a_second_attempt_is_told_what_the_first_said(make_rig, earlier: str) -> None:
    rig = make_rig(RETRY_BACKOFF_SEC=0)
    template = rig.path("prompt.txt")
    template.write_text("Task {id} attempt {attempt}. Before: {previous_summary}|"
                        "{previous_error}\n")
    task = rig.add("Fix the login")
    first = rig.settings.task_log_dir / task.id / "attempt-1.result.json"
    text = (json.dumps({"outcome": "failed", "summary": "the tests need a database"})
            if earlier == "a result" else "{not json")
    task = rig.attempt(task, "write", str(first), text, "exit", "1")
    assert task.status == IDLE and task.attempts == 1
    out = rig.path("argv.json")
    task = rig.attempt(task, "argv", str(out), "--", "{prompt}",
                       PROMPT_TEMPLATE_FILE=str(template))
    assert task.status == COMPLETE
    [prompt] = json.loads(out.read_text())[3:]
    assert prompt.startswith(f"Task {task.id} attempt 2. Before: ")
    if earlier == "a result":
        assert "Before: the tests need a database|attempt 1 failed" in prompt
    else:
        assert "Before: |attempt 1 failed" in prompt


def test_sandbox_bwrap_without_bwrap_on_path_fails_the_launch_and_says_how_to_fix_it(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(rig.path("empty-bin")))
    marker = rig.path("ran")
    task_id, _token, code = run_attempt(rig, "write", str(marker), "yes", sandbox="bwrap")
    assert code == 0 and not marker.exists()
    task = rig.tasks.get(task_id)
    assert task.status == IDLE and task.last_error.startswith("attempt 1 launch_failed")
    assert "SANDBOX=bwrap but bwrap is not on PATH" in rig.summary(task_id)


def test_an_agent_missing_from_agent_control_runs_under_the_global_limits(make_rig) -> None:
    rig = make_rig(AGENT_CONTROL_FILE="agents.json")
    rig.settings.agent_control_file.write_text(json.dumps(
        [{"agentName": "someone-else", "agentType": "dev",
          "memoryMaxMb": 64}]))
    task = rig.attempt(rig.add(), "print", "done")
    assert task.status == COMPLETE
    assert "limits " not in log_text(rig, task.id)  # no per-agent limit applied


@pytest.mark.parametrize("how", ["re-owned", "SIGTERM"])
def test_a_wrapper_stopped_while_preparing_its_workspace_never_starts_the_agent(
        make_rig, how: str) -> None:
    """While a slow before_run hook runs, the lease is re-owned (a pass judged the attempt
    dead) or the wrapper gets SIGTERM: the hook is stopped and the agent never starts.
    Re-owned: nothing is reported (the new owner decides). SIGTERM: the attempt is
    cancelled, saying it was stopped while preparing."""
    rig = make_rig(WORKSPACE_MODE="directory", MIN_FREE_DISK_MB=0, KILL_GRACE_SEC=1)
    hook_ready = rig.path("hook-ready")
    task = rig.add()
    token = rig.prepare(task)
    marker = rig.path("agent-ran")
    wrapper = rig.spawn(task.id, token, AGENT_COMMAND=agent_command("write", str(marker), "x"),
                        HOOK_BEFORE_RUN=agent_command("ready", str(hook_ready), "sleep", "60"))
    hook = rig.track(read_pid(hook_ready))
    other = new_token("0badc0de")
    if how == "re-owned":
        rig.leases.update(replace(rig.leases.read(task.id), spawn_token=other))
    else:
        wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(RUN_TIMEOUT) == 0
    assert gone(hook)
    assert not marker.exists()
    text = log_text(rig, task.id)
    if how == "re-owned":
        assert rig.tasks.get(task.id).status == WORKING
        assert history_after_claim(rig, task.id) == []
        assert rig.leases.read(task.id).spawn_token == other
        assert "agent stopped, nothing reported" in text
    else:
        assert rig.tasks.get(task.id).status == CANCELLED
        assert f"wrapper got signal {int(signal.SIGTERM)} while preparing the workspace" in \
            rig.summary(task.id)
        assert rig.leases.read(task.id) is None


def test_a_lease_lost_just_before_the_merge_leaves_the_target_alone_and_reports_nothing(
        make_rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent succeeded in its worktree; as the wrapper marks its lease `merging`, it
    finds the lease re-owned (a pass judged it dead). It must not move the target branch
    nor report: the new owner decides."""
    from test_workspace import git, make_repo

    repo = make_repo(tmp_path / "repo")
    rig = make_rig(WORKSPACE_MODE="worktree", REPO_DIR=str(repo), MIN_FREE_DISK_MB=0)
    head = git(repo, "rev-parse", "main")
    other = new_token("0badc0de")

    def re_owned(store, task_id, *args, **changes) -> None:
        assert store.reown(store.read(task_id), other) is not None

    task_id, _token, wrapper = prepare(rig, "write", "feature.txt", "new work")
    OneShot(monkeypatch, LeaseStore, "heartbeat", re_owned,
            when=lambda *args, **changes: changes.get("state") == MERGING)
    assert wrapper.run() == 0
    assert git(repo, "rev-parse", "main") == head  # the target never moved
    assert rig.tasks.get(task_id).status == WORKING
    assert history_after_claim(rig, task_id) == []
    assert rig.leases.read(task_id).spawn_token == other
    assert "was lost during the merge: nothing reported" in log_text(rig, task_id)


@pytest.mark.parametrize("step", ["end", "tidy"])
def test_a_bug_in_workspace_cleanup_never_costs_the_result(
        make_rig, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    from scheduler.workspace import modes

    rig = make_rig(WORKSPACE_MODE="directory", MIN_FREE_DISK_MB=0)

    def bug(*_args, **_kwargs) -> None:
        raise RuntimeError(f"a bug in {step}")

    OneShot(monkeypatch, modes, step, bug)
    task_id, _token, code = run_attempt(rig, "print", "done")
    assert code == 0
    assert rig.tasks.get(task_id).status == COMPLETE
    said = "after the attempt" if step == "end" else "cleanup failed"
    assert f"workspace: {said}: RuntimeError('a bug in {step}')" in log_text(rig, task_id)
    assert rig.leases.read(task_id) is None


def test_a_bug_in_the_merge_is_an_error_result_and_the_target_stays(
        make_rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_workspace import git, make_repo

    from scheduler.merge import landing

    repo = make_repo(tmp_path / "repo")
    rig = make_rig(WORKSPACE_MODE="worktree", REPO_DIR=str(repo), MIN_FREE_DISK_MB=0,
                   RETRY_BACKOFF_SEC=0)
    head = git(repo, "rev-parse", "main")

    def bug(*_args, **_kwargs) -> None:
        raise RuntimeError("a bug in the merge")

    OneShot(monkeypatch, landing, "land", bug)
    task_id, _token, code = run_attempt(rig, "write", "feature.txt", "new work")
    assert code == 0
    assert git(repo, "rev-parse", "main") == head
    task = rig.tasks.get(task_id)
    assert task.status == IDLE and not task.parked  # requeued: the merge is tried again
    assert task.last_error.startswith("attempt 1 failed, exit code 0: merge into main failed")
    assert "wrapper error: RuntimeError('a bug in the merge')" in rig.summary(task_id)
    assert rig.leases.read(task_id) is None


def test_a_lease_re_owned_during_the_after_run_hook_stops_it_and_reports_nothing(
        make_rig) -> None:
    rig = make_rig(WORKSPACE_MODE="directory", MIN_FREE_DISK_MB=0, KILL_GRACE_SEC=1)
    hook_ready = rig.path("hook-ready")
    task = rig.add()
    token = rig.prepare(task)
    wrapper = rig.spawn(task.id, token, AGENT_COMMAND=agent_command("print", "done"),
                        HOOK_AFTER_RUN=agent_command("ready", str(hook_ready), "sleep", "60"))
    hook = rig.track(read_pid(hook_ready))
    other = new_token("0badc0de")
    rig.leases.update(replace(rig.leases.read(task.id), spawn_token=other))
    assert wrapper.wait(RUN_TIMEOUT) == 0
    assert gone(hook)
    assert rig.tasks.get(task.id).status == WORKING  # the agent's success is not reported
    assert history_after_claim(rig, task.id) == []
    assert rig.leases.read(task.id).spawn_token == other
    assert "re-owned before reporting: nothing reported" in log_text(rig, task.id)


def test_a_note_the_source_cannot_take_never_stops_the_merge(
        make_rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_workspace import git, make_repo

    repo = make_repo(tmp_path / "repo")
    rig = make_rig(WORKSPACE_MODE="worktree", REPO_DIR=str(repo), MIN_FREE_DISK_MB=0)
    head = git(repo, "rev-parse", "main")

    def unreachable(*_args, **_kwargs) -> None:
        raise SourceUnavailable("the task source is down (test)")

    OneShot(monkeypatch, LocalStore, "note", unreachable)
    task_id, _token, code = run_attempt(rig, "write", "feature.txt", "new work")
    assert code == 0
    assert git(repo, "rev-parse", "main") != head  # merged all the same
    assert git(repo, "show", "main:feature.txt") == "new work"
    assert rig.tasks.get(task_id).status == COMPLETE
    assert "could not write the note to the task source (the task source is down (test))" \
        in log_text(rig, task_id)


def test_an_agent_that_reports_only_its_cost_gets_it_counted_and_its_output_summarised(
        rig: Rig) -> None:
    task = rig.add()
    result_path = rig.settings.task_log_dir / task.id / "attempt-1.result.json"
    task = rig.attempt(task, "write", str(result_path), json.dumps({"cost_usd": 0.25}),
                       "print", "all tests pass")
    assert task.status == COMPLETE
    details = rig.tasks.details(task.id)
    assert details["cost_usd"] == 0.25
    summary = details["result_summary"]
    assert "$0.25" in summary and "agent: " not in summary
    assert "all tests pass" in summary  # no summary of its own: its output's tail is used


def test_a_full_log_disk_loses_log_lines_never_the_attempt(
        make_rig, mount, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811 - fixture
    """LOG_DIR is on a small file system that fills up once the attempt has started: the
    agent's output and the wrapper's notes that no longer fit are lost, and the attempt
    runs, is reported and ends as ever."""
    from test_agent_process import fill

    disk = mount("1m")
    rig = make_rig(LOG_DIR=str(disk.path))
    filled: list[Path] = []
    task_id, _token, wrapper = prepare(rig, "lines", "3000", "print", "the end")
    OneShot(monkeypatch, LeaseStore, "heartbeat",
            lambda *a, **k: filled.append(fill(disk.path)))
    try:
        assert wrapper.run() == 0
    finally:
        for filler in filled:
            filler.unlink()
    assert rig.tasks.get(task_id).status == COMPLETE
    assert rig.leases.read(task_id) is None
    text = log_text(rig, task_id)
    assert text.startswith("[tinyscheduler ") and "argv " in text  # written before
    lines = text.splitlines()
    assert "the end" not in lines  # output after the disk filled up is lost ...
    assert not any("outcome succeeded" in line for line in lines)  # ... and notes too
    [outcome] = [json.loads(line) for line in rig.settings.outcomes_file.read_text()
                 .splitlines()]
    assert (outcome["task"], outcome["outcome"]) == (task_id, "succeeded")  # recorded
