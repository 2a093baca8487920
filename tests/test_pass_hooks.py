"""The pass's contract with its launcher and source: exited wrappers are reaped every
pass, and the source releases what a forked child must not inherit before the first fork.
Driven in-process with a recording launcher, so nothing is actually forked here."""

from __future__ import annotations

from scheduler.config.registry import Agent, Registry
from scheduler.config.settings import load_settings
from scheduler.reconcile.launcher import make_launcher
from scheduler.reconcile.reconciler import Reconciler
from scheduler.sources.local import LocalStore


class RecordingLauncher:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def launch(self, task_id: str, token: str, lease_path: str) -> int:
        self.events.append(f"launch {task_id}")
        return 0

    def reap(self) -> None:
        self.events.append("reap")

    def prepare(self, source) -> None:
        source.before_fork()

    def close(self) -> None:
        return None


class RecordingSource(LocalStore):
    def __init__(self, path, events: list[str]) -> None:
        super().__init__(path)
        self.events = events

    def before_fork(self) -> None:
        self.events.append("before_fork")
        super().before_fork()


def make(tmp_path, events, spawn_mode="fork"):
    settings = load_settings(environ={"TINYSCHEDULER_SPAWN_MODE": spawn_mode,
                                      "TINYSCHEDULER_AGENT_COMMAND": "true"}, cwd=tmp_path)
    source = RecordingSource(settings.tasks_db, events)
    registry = Registry((Agent("worker", "dev", 2),), legacy=False)
    reconciler = Reconciler(settings, registry, source=source,
                            launcher=RecordingLauncher(events))
    return reconciler, source


def test_each_pass_reaps_and_the_source_lets_go_before_the_first_fork(tmp_path):
    events: list[str] = []
    reconciler, source = make(tmp_path, events)
    first = source.add_task("one", queue="dev").id
    second = source.add_task("two", queue="dev").id

    summary = reconciler.run_pass().summary

    assert summary.spawned == 2 and not summary.errors
    assert events == ["reap", "before_fork", f"launch {first}", f"launch {second}"]
    assert source.get(first).status == "working"  # the store reconnects after letting go


def test_no_spawn_no_release_and_exec_mode_never_releases(tmp_path):
    events: list[str] = []
    reconciler, source = make(tmp_path, events)
    reconciler.run_pass()
    assert events == ["reap"]  # nothing to launch: the connection is kept

    exec_events: list[str] = []
    settings = load_settings(environ={"TINYSCHEDULER_SPAWN_MODE": "exec"}, cwd=tmp_path)
    exec_source = RecordingSource(tmp_path / "exec.db", exec_events)
    make_launcher(settings, "daemon").prepare(exec_source)
    make_launcher(settings, "once").prepare(exec_source)
    assert exec_events == []  # exec'd wrappers inherit nothing
