"""Less travelled calls of both stores (the embedded SQLite store and PostgreSQL), run
against each: history notes, unknown tasks, blocker ids that are not ids, attempt counts
and the launch failures ``status`` reports."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_local_store import POLICY
from test_local_store import db_path as db_path  # noqa: F401 - the fixture
from test_local_store import store as store  # noqa: F401 - the fixture

from scheduler import clock
from scheduler.errors import InputError, TaskNotFound
from scheduler.sources.base import LAUNCH_FAILED, Result


def test_a_note_is_a_history_row_that_changes_nothing(store):
    task = store.add_task("t")
    store.note(task.id, "merging into main: 2 file(s) changed", actor="wrapper")
    row = store.history(task.id)[-1]
    assert (row["actor"], row["detail"]) == ("wrapper", "merging into main: 2 file(s) changed")
    assert row["from_status"] == row["to_status"] == "idle"
    assert store.get(task.id).status == "idle"
    with pytest.raises(TaskNotFound):
        store.note("999", "nobody")


@pytest.mark.parametrize("call", ["get", "details"])
def test_an_unknown_task_is_not_found(store, call):
    with pytest.raises(TaskNotFound, match="no task with id 404"):
        getattr(store, call)("404")


def test_a_blocker_that_is_not_a_task_id_is_refused(store):
    task = store.add_task("t")
    with pytest.raises(InputError, match="blocked_by 'soon' is not a task id"):
        store.add_blockers(task.id, ["soon"])
    assert store.get(task.id).blocked_by == ()


def test_attempt_counts_and_launch_failures(store):
    ran, failed, idle = store.add_task("ran"), store.add_task("failed"), store.add_task("idle")
    since = clock.to_iso(clock.now() - timedelta(seconds=1))  # (since, until]: ms precision
    store.claim(ran.id, "vaela", "tok-1")
    store.report(Result(ran.id, "vaela", 1, "failed", "tok-1", "failed: exit 1"), POLICY)
    store.claim(failed.id, "vaela", "tok-2")
    store.report(Result(failed.id, "vaela", 1, LAUNCH_FAILED, "tok-2",
                        "launch_failed: not started\nreason: cannot start 'goose': "
                        "No such file or directory"), POLICY)
    counts = store.run_counts([ran.id, failed.id, idle.id])
    assert (counts.get(ran.id), counts.get(failed.id), counts.get(idle.id, 0)) == (1, 1, 0)
    until = clock.to_iso(clock.now() + timedelta(seconds=1))
    assert store.launch_failures(since, until) == [
        (failed.id, "cannot start 'goose': No such file or directory")]
