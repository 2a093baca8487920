"""The task stores: schema, state machine, blockers, results, import.

Every test taking ``store`` runs against the embedded SQLite store and the PostgreSQL
store (a throwaway server, tests/pgserver.py); ``sqlite_store`` tests are SQLite's own.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import stat
from datetime import datetime, timedelta, timezone

import pytest
from freezegun import freeze_time

from scheduler.errors import InputError, InvalidTransition, SourceError, TaskNotFound
from scheduler.sources import local
from scheduler.sources.base import (
    CANCELLED,
    COMPLETE,
    FAILED,
    IDLE,
    WORKING,
    Result,
    RetryPolicy,
)
from scheduler.sources.local import LocalStore, check_transition

POLICY = RetryPolicy(max_attempts=3, backoff_sec=60)
T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "state" / "tasks.db"


@pytest.fixture
def sqlite_store(db_path):
    opened = LocalStore(db_path)
    yield opened
    opened.close()


@pytest.fixture(params=["local", "postgres"])
def store(request, db_path):
    if request.param == "local":
        opened = LocalStore(db_path)
    else:
        from scheduler.sources.postgres.store import PostgresStore

        opened = PostgresStore(request.getfixturevalue("pg_url"), host="test-host")
    yield opened
    opened.close()


def raw(db_path) -> sqlite3.Connection:
    return sqlite3.connect(str(db_path))


def result(task_id, outcome="failed", token="tok", summary="exit 1", **extra) -> Result:
    return Result(task_id=task_id, agent="alice", attempt=1, outcome=outcome, token=token,
                  summary=summary, **extra)


def working(store, *, queue="dev", token="tok", **kwargs):
    added = store.add_task("run me", queue=queue, **kwargs)
    store.claim(added.id, "alice", token)
    return added.id


def history_len(store, task_id) -> int:
    return len(store.history(task_id))


# --- schema and files -------------------------------------------------------------------


def test_empty_database_is_migrated_to_the_current_version(sqlite_store, db_path):
    assert sqlite_store.health().ok  # opens lazily
    conn = raw(db_path)
    try:
        # every migration was applied, and the store reports that version
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(local.MIGRATIONS)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert {"tasks", "blockers", "history", "idx_blockers_blocker",
                "idx_tasks_ready_queue", "idx_tasks_ready_assignee", "idx_history_at"} <= tables
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_files_are_private(sqlite_store, db_path):
    sqlite_store.add_task("x")
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(db_path.parent).st_mode) == 0o700


def test_connection_is_lazy(db_path):
    opened = LocalStore(db_path)
    assert not db_path.exists()
    opened.close()


def test_reopening_keeps_data_and_does_not_migrate_again(db_path):
    with LocalStore(db_path) as first:
        first.add_task("kept")
    with LocalStore(db_path) as second:
        assert [t.title for t in second.list_tasks()] == ["kept"]
        assert second.health().detail.endswith(f"1 tasks, schema v{local.SCHEMA_VERSION}")


def test_a_later_migration_runs_once_from_the_stored_version(db_path, monkeypatch):
    with LocalStore(db_path) as first:
        first.add_task("before")
    calls = []

    def migration_next(conn):
        calls.append(1)
        conn.execute("ALTER TABLE tasks ADD COLUMN extra TEXT")

    version = len(local.MIGRATIONS) + 1
    monkeypatch.setattr(local, "MIGRATIONS", [*local.MIGRATIONS, migration_next])
    monkeypatch.setattr(local, "SCHEMA_VERSION", version)
    for _ in range(2):
        with LocalStore(db_path) as again:
            assert [t.title for t in again.list_tasks()] == ["before"]
    assert calls == [1]
    conn = raw(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == version
    finally:
        conn.close()


def test_a_newer_schema_is_refused(db_path):
    with LocalStore(db_path) as first:
        first.add_task("x")
    conn = raw(db_path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with LocalStore(db_path) as store, pytest.raises(SourceError, match="schema v99"):
        store.list_tasks()


def test_health_reports_an_unusable_path(tmp_path):
    (tmp_path / "dir.db").mkdir()
    with LocalStore(tmp_path / "dir.db") as store:
        health = store.health()
    assert not health.ok
    assert "dir.db" in health.detail


def test_health_ok(sqlite_store, db_path):
    sqlite_store.add_task("a")
    sqlite_store.add_task("b")
    health = sqlite_store.health()
    assert health.ok
    assert health.detail == f"local store {db_path}: 2 tasks, schema v{local.SCHEMA_VERSION}"


# --- state machine ----------------------------------------------------------------------

ALLOWED = {
    (IDLE, WORKING), (WORKING, COMPLETE), (WORKING, IDLE), (WORKING, FAILED),
    (WORKING, CANCELLED), (IDLE, CANCELLED), (FAILED, IDLE), (CANCELLED, IDLE),
}
ALL = (IDLE, WORKING, COMPLETE, FAILED, CANCELLED)


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(ALL, ALL)))
def test_transition_table(src, dst):
    if (src, dst) in ALLOWED:
        assert check_transition("7", src, dst)
    else:
        with pytest.raises(InvalidTransition) as info:
            check_transition("7", src, dst)
        message = str(info.value)
        assert message.startswith(f"task 7 is {src};")
        assert f"{src} -> {dst}" in message


def test_transition_must_match_the_action():
    assert check_transition("7", WORKING, IDLE, "requeue") == "requeue"
    assert check_transition("7", FAILED, IDLE, "retry") == "retry"
    with pytest.raises(InvalidTransition, match=r"task 7 is working; only failed or cancelled "
                                                r"tasks can be retried \(working -> idle by "
                                                r"retry is not allowed\)"):
        check_transition("7", WORKING, IDLE, "retry")
    with pytest.raises(InvalidTransition, match="only working tasks can be requeued"):
        check_transition("7", FAILED, IDLE, "requeue")


def test_claim_marks_working_and_records_history(store):
    added = store.add_task("t", queue="dev")
    store.claim(added.id, "alice", "tok")
    got = store.get(added.id)
    assert (got.status, got.assignee) == (WORKING, "alice")
    last = store.history(added.id)[-1]
    assert (last["from_status"], last["to_status"], last["actor"]) == (IDLE, WORKING,
                                                                      "tinyscheduler")


def test_second_claim_fails(store):
    added = store.add_task("t", queue="dev")
    store.claim(added.id, "alice", "tok-1")
    with pytest.raises(InvalidTransition, match=r"task \d+ is working; only idle tasks can "
                                                r"be claimed \(working -> working"):
        store.claim(added.id, "bob", "tok-2")
    assert store.get(added.id).assignee == "alice"


def test_claim_unknown_task_and_bad_agent(store):
    with pytest.raises(TaskNotFound, match="no task with id 42"):
        store.claim("42", "alice", "tok")
    added = store.add_task("t")
    with pytest.raises(InputError, match="agent"):
        store.claim(added.id, "../evil", "tok")


def test_cancel_idle_and_working(store):
    idle = store.add_task("idle")
    assert store.cancel(idle.id).status == CANCELLED
    busy = working(store)
    assert store.cancel(busy, detail="no live wrapper").status == CANCELLED
    last = store.history(busy)[-1]
    assert (last["from_status"], last["to_status"], last["detail"]) == (
        WORKING, CANCELLED, "no live wrapper")
    # the wrapper's late report changes nothing
    applied = store.report(result(busy, outcome="succeeded"), POLICY)
    assert applied.action == "ignored"
    assert store.get(busy).status == CANCELLED


@pytest.mark.parametrize("status", [COMPLETE, FAILED, CANCELLED])
def test_cancel_refused_when_finished(store, status):
    task_id = working(store)
    if status == COMPLETE:
        store.report(result(task_id, outcome="succeeded"), POLICY)
    elif status == FAILED:
        store.report(result(task_id), RetryPolicy(max_attempts=1, backoff_sec=1))
    else:
        store.cancel(task_id)
    with pytest.raises(InvalidTransition, match=f"is {status}; only idle or working tasks "
                                                f"can be cancelled"):
        store.cancel(task_id)


def test_retry_of_complete_names_why(store):
    task_id = working(store)
    store.report(result(task_id, outcome="succeeded"), POLICY)
    with pytest.raises(InvalidTransition) as info:
        store.retry(task_id)
    assert str(info.value).startswith(
        f"task {task_id} is complete; only failed or cancelled tasks can be retried")
    assert "complete -> idle" in str(info.value)


@pytest.mark.parametrize("status", [IDLE, WORKING])
def test_retry_refused_when_not_finished(store, status):
    task_id = working(store) if status == WORKING else store.add_task("t").id
    with pytest.raises(InvalidTransition, match=f"is {status}; only failed or cancelled"):
        store.retry(task_id)


def test_retry_of_parked_task_resets_attempts_and_keeps_error_in_history(store):
    task_id = working(store)
    store.report(result(task_id, summary="boom"), RetryPolicy(max_attempts=1, backoff_sec=5))
    parked = store.get(task_id)
    assert (parked.status, parked.parked, parked.attempts) == (FAILED, True, 1)
    error = parked.last_error
    assert "boom" in error
    assert parked.assignee == "alice"
    retried = store.retry(task_id)
    assert (retried.status, retried.attempts, retried.not_before, retried.last_error) == (
        IDLE, 0, None, None)
    assert retried.assignee is None  # back to the queue's pool
    assert [t.id for t in store.queue_idle_unassigned("dev")] == [task_id]
    assert error in store.history(task_id)[-1]["detail"]


def test_retry_of_cancelled_task_keeps_a_direct_assignment(store):
    added = store.add_task("t", assignee="bob")
    store.cancel(added.id)
    retried = store.retry(added.id)
    assert (retried.status, retried.assignee) == (IDLE, "bob")


def test_history_rows_for_a_whole_life(store):
    added = store.add_task("t", queue="dev")
    store.claim(added.id, "alice", "a")
    store.report(result(added.id, token="a"), POLICY)
    store.claim(added.id, "bob", "b")
    store.report(result(added.id, outcome="succeeded", token="b", summary="all good"), POLICY)
    rows = store.history(added.id)
    assert [(r["from_status"], r["to_status"]) for r in rows] == [
        (None, IDLE), (IDLE, WORKING), (WORKING, IDLE), (IDLE, WORKING), (WORKING, COMPLETE)]
    assert rows[0]["actor"] == "cli"
    assert rows[-1]["detail"] == "all good"
    assert all(r["at"].endswith("Z") for r in rows)


def test_history_is_append_only(sqlite_store, db_path):
    added = sqlite_store.add_task("t")
    conn = raw(db_path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE history SET detail = 'x'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM history")
    finally:
        conn.close()
    assert len(sqlite_store.history(added.id)) == 1


def test_status_check_constraint(sqlite_store, db_path):
    sqlite_store.add_task("t")
    conn = raw(db_path)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("UPDATE tasks SET status = 'bogus'")
    finally:
        conn.close()


# --- blockers ---------------------------------------------------------------------------


def test_blocked_while_any_blocker_is_not_complete(store):
    first = working(store)
    second = working(store)
    waiting = store.add_task("waits", queue="dev", blocked_by=[first, second])
    assert waiting.blocked_by == tuple(sorted((first, second), key=int))
    assert waiting.is_blocked
    store.report(result(first, outcome="succeeded"), POLICY)
    assert store.get(waiting.id).is_blocked
    store.report(result(second, outcome="succeeded"), POLICY)
    assert not store.get(waiting.id).is_blocked
    assert store.blockers_of(waiting.id) == sorted((first, second), key=int)
    assert store.blocking(first) == [waiting.id]


def test_cancelled_blocker_keeps_blocking(store):
    blocker = store.add_task("b")
    waiting = store.add_task("w", blocked_by=[blocker.id])
    store.cancel(blocker.id)
    assert store.get(waiting.id).is_blocked


def test_unknown_blockers_rejected_naming_ids(store):
    known = store.add_task("k")
    with pytest.raises(InputError, match="no task with id 98, 99"):
        store.add_task("w", blocked_by=[known.id, "99", "98"])
    with pytest.raises(InputError, match="blocked_by 'abc'"):
        store.add_task("w", blocked_by=["abc"])
    assert len(store.list_tasks()) == 1


def test_cycles_rejected(store):
    a = store.add_task("a")
    b = store.add_task("b", blocked_by=[a.id])
    c = store.add_task("c", blocked_by=[b.id])
    with pytest.raises(InputError, match=f"task {a.id} would \\(transitively\\) block itself"):
        store.add_blockers(a.id, [c.id])
    with pytest.raises(InputError, match="block itself"):
        store.add_blockers(a.id, [a.id])
    assert store.blockers_of(a.id) == []
    d = store.add_task("d")
    assert store.add_blockers(a.id, [d.id]).blocked_by == (d.id,)


# --- ready lists and current ------------------------------------------------------------


def test_queue_idle_unassigned_includes_blocked_with_flags(store):
    blocker = store.add_task("blocker", queue="dev")
    blocked = store.add_task("blocked", queue="dev", blocked_by=[blocker.id], priority=3,
                             recipe="dev.yaml")
    store.add_task("assigned", queue="dev", assignee="alice")
    store.add_task("other queue", queue="ops")
    busy = working(store)
    ready = store.queue_idle_unassigned("dev")
    assert [t.id for t in ready] == [blocker.id, blocked.id]
    assert not ready[0].is_blocked and ready[0].blocked_by == ()
    assert ready[1].is_blocked and ready[1].blocked_by == (blocker.id,)
    assert (ready[1].priority, ready[1].recipe, ready[1].attempts) == (3, "dev.yaml", 0)
    assert isinstance(ready[1].created_at, datetime)
    assert busy not in [t.id for t in ready]


def test_assigned_idle(store):
    mine = store.add_task("mine", assignee="alice")
    store.add_task("queued", queue="dev", assignee="alice")
    store.add_task("someone else's", assignee="bob")
    busy = store.add_task("busy", assignee="alice")
    store.claim(busy.id, "alice", "tok")
    assert [t.title for t in store.assigned_idle("alice")] == ["mine", "queued"]
    assert store.assigned_idle("alice")[0].id == mine.id
    assert store.assigned_idle("nobody") == []


def test_current_chunks_and_reports_missing(store):
    ids = [store.add_task(f"t{i}").id for i in range(1203)]
    wanted = [*ids, "999999", "not-an-id"]
    found = store.current(wanted)
    assert list(found) == wanted
    assert all(found[i] is not None and found[i].id == i for i in ids)
    assert found["999999"] is None and found["not-an-id"] is None
    assert store.current([]) == {}


def test_states_and_claimed_read_what_a_pass_asks_of_running_tasks(store):
    idle = store.add_task("waiting", queue="dev").id
    mine = working(store, token="mine")
    theirs = working(store, token="theirs")
    assert store.states([mine, idle, "999999", "not-an-id"]) == {
        mine: ("working", "alice"), idle: ("idle", None), "999999": None, "not-an-id": None}
    assert store.states([]) == {}
    assert store.claimed() == [(mine, "mine"), (theirs, "theirs")]
    store.report(result(mine, outcome="succeeded", token="mine", summary="done"),
                 RetryPolicy(max_attempts=3, backoff_sec=0))
    assert store.states([mine]) == {mine: ("complete", "alice")}
    assert store.claimed() == [(theirs, "theirs")]


def test_ready_query_plans_use_indexes(sqlite_store, db_path):
    sqlite_store.add_task("x", queue="dev")

    def plan(sql, params):
        conn = raw(db_path)
        try:
            return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
        finally:
            conn.close()

    queue_plan = plan(local.READY_QUEUE_SQL, ("dev",))
    assert any("idx_tasks_ready_queue" in line for line in queue_plan), queue_plan
    # blockers are looked up by key (task_id) for blocked_by and is_blocked, never scanned
    blocker_lines = [line for line in queue_plan if line.startswith(("SEARCH b ", "SCAN b "))]
    assert len(blocker_lines) == 2, queue_plan
    assert all("PRIMARY KEY (task_id=?)" in line for line in blocker_lines), queue_plan
    assert not any(line.startswith("SCAN") for line in queue_plan), queue_plan

    assigned_plan = plan(local.READY_ASSIGNED_SQL, ("alice",))
    assert any("idx_tasks_ready_assignee" in line for line in assigned_plan), assigned_plan
    assert not any(line.startswith("SCAN") for line in assigned_plan), assigned_plan

    # a ready window walks its index in the planner's order and stops after LIMIT rows:
    # no scan of the tasks, no sort of the whole listing
    now = "2026-01-01T00:00:00.000Z"
    for sql, params, index in ((local.WINDOW_QUEUE_SQL, ("dev", now, 5), "idx_tasks_ready_queue"),
                               (local.WINDOW_ASSIGNED_SQL, ("alice", now, 5),
                                "idx_tasks_ready_assignee")):
        window_plan = plan(sql, params)
        assert any(index in line for line in window_plan), window_plan
        assert not any("TEMP B-TREE" in line or line.startswith("SCAN t")
                       for line in window_plan), window_plan

    # blocker edges are read from the blocker table, never by scanning the idle tasks
    edges_plan = plan(local.IDLE_EDGES_SQL, ())
    assert edges_plan[0].startswith("SCAN b"), edges_plan
    assert not any(line.startswith("SCAN t") for line in edges_plan), edges_plan

    blocking_plan = plan(local.BLOCKING_SQL, (1,))
    assert any("idx_blockers_blocker" in line for line in blocking_plan), blocking_plan


# --- report -----------------------------------------------------------------------------


def test_report_success(store):
    task_id = working(store)
    applied = store.report(result(task_id, outcome="succeeded", summary="done: 3 files"),
                           POLICY)
    assert applied.action == "complete"
    got = store.get(task_id)
    assert got.status == COMPLETE
    assert store.details(task_id)["result_summary"] == "done: 3 files"
    # delivered twice (outbox retry): a no-op
    before = history_len(store, task_id)
    assert store.report(result(task_id, outcome="succeeded"), POLICY).action == "ignored"
    assert history_len(store, task_id) == before


def test_report_cancelled(store):
    task_id = working(store)
    assert store.report(result(task_id, outcome="cancelled"), POLICY).action == "cancelled"
    assert store.get(task_id).status == CANCELLED


def test_report_failure_requeues_with_backoff_then_parks(store):
    with freeze_time(T0) as frozen:
        task_id = working(store, token="t1")
        applied = store.report(result(task_id, token="t1", exit_code=1), POLICY)
        assert applied.action == "requeued"
        got = store.get(task_id)
        assert (got.status, got.attempts, got.assignee) == (IDLE, 1, None)
        assert got.not_before == T0 + timedelta(seconds=60)
        assert "exit code 1" in got.last_error

        frozen.tick(timedelta(minutes=5))
        store.claim(task_id, "bob", "t2")
        assert store.report(result(task_id, outcome="timed_out", token="t2"),
                            POLICY).action == "requeued"
        got = store.get(task_id)
        assert got.attempts == 2
        assert got.not_before == T0 + timedelta(minutes=5) + timedelta(seconds=120)

        store.claim(task_id, "bob", "t3")
        applied = store.report(result(task_id, outcome="killed", token="t3",
                                      summary="killed by signal 9\nlog tail"), POLICY)
        assert applied.action == "parked"
        got = store.get(task_id)
        assert (got.status, got.attempts, got.parked) == (FAILED, 3, True)
        assert got.last_error.startswith("attempt 3 killed")
        assert "log tail" not in got.last_error


def test_requeue_keeps_assignee_without_queue(store):
    task_id = working(store, queue=None)
    store.report(result(task_id, outcome="reclaimed"), POLICY)
    assert store.get(task_id).assignee == "alice"


@pytest.mark.parametrize("outcome", ["failed", "killed", "timed_out", "stalled",
                                     "launch_failed", "reclaimed"])
def test_every_failure_outcome_counts_as_an_attempt(store, outcome):
    task_id = working(store)
    assert store.report(result(task_id, outcome=outcome), POLICY).action == "requeued"
    assert store.get(task_id).attempts == 1


def test_stale_or_duplicate_results_are_ignored(store):
    task_id = working(store, token="new")
    before = (store.get(task_id), history_len(store, task_id))
    applied = store.report(result(task_id, outcome="succeeded", token="old"), POLICY)
    assert applied.action == "ignored" and "another lease" in applied.note
    assert (store.get(task_id), history_len(store, task_id)) == before

    idle = store.add_task("idle")
    assert store.report(result(idle.id, token="x"), POLICY).action == "ignored"
    assert store.get(idle.id).attempts == 0
    assert store.report(result("424242"), POLICY).action == "ignored"

    assert store.report(result(task_id, token="new"), POLICY).action == "requeued"
    after = (store.get(task_id), history_len(store, task_id))
    assert store.report(result(task_id, token="new"), POLICY).action == "ignored"
    assert (store.get(task_id), history_len(store, task_id)) == after


def test_history_detail_is_truncated(store):
    task_id = working(store)
    store.report(result(task_id, outcome="succeeded", summary="é" * 10_000), POLICY)
    detail = store.history(task_id)[-1]["detail"]
    assert len(detail.encode()) <= local.MAX_DETAIL_BYTES


# --- add / list / get -------------------------------------------------------------------


def test_times_come_from_the_clock(store):
    with freeze_time(T0):
        added = store.add_task("t")
    assert added.created_at == T0
    assert store.history(added.id)[0]["at"] == "2030-01-02T03:04:05.000Z"


def test_injected_clock(db_path):
    with LocalStore(db_path, clock=lambda: T0) as store:
        assert store.add_task("t").created_at == T0


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"title": ""}, "title"),
    ({"title": "   "}, "title"),
    ({"title": "x" * 501}, "title"),
    ({"title": "t", "description": "x" * (64 * 1024 + 1)}, "description"),
    ({"title": "t", "queue": "a b"}, "queue"),
    ({"title": "t", "assignee": "../x"}, "agent"),
    ({"title": "t", "priority": "5"}, "priority"),
    ({"title": "t", "priority": True}, "priority"),
    ({"title": "t", "recipe": "../dev.yaml"}, "recipe"),
    ({"title": "t", "recipe": ".hidden"}, "recipe"),
    ({"title": "t", "recipe": "sub/dev.yaml"}, "recipe"),
])
def test_add_rejects_bad_fields(store, kwargs, field):
    kwargs = dict(kwargs)  # the parameters are shared by both stores
    title = kwargs.pop("title")
    with pytest.raises(InputError, match=f"^{field} is"):
        store.add_task(title, **kwargs)
    assert store.list_tasks() == []


def test_add_and_get(store):
    added = store.add_task(" Fix it ", description="d", queue="dev", assignee="alice",
                           priority=-2, recipe="dev.yaml")
    assert added == store.get(added.id)
    assert (added.title, added.description, added.queue, added.assignee, added.priority,
            added.recipe, added.status) == ("Fix it", "d", "dev", "alice", -2, "dev.yaml",
                                             IDLE)
    assert added.id.isdigit()
    assert store.add_task("x" * 500).title == "x" * 500


@pytest.mark.parametrize("task_id", ["99", "abc", "", "-1", "0"])
def test_get_unknown(store, task_id):
    with pytest.raises(TaskNotFound, match=f"no task with id {task_id}$"):
        store.get(task_id)


def test_list_filters(store):
    store.add_task("a", queue="dev")
    store.add_task("b", queue="ops", assignee="alice")
    c = store.add_task("c", queue="dev")
    store.cancel(c.id)
    assert [t.title for t in store.list_tasks()] == ["a", "b", "c"]
    assert [t.title for t in store.list_tasks(queue="dev")] == ["a", "c"]
    assert [t.title for t in store.list_tasks(status=IDLE, queue="dev")] == ["a"]
    assert [t.title for t in store.list_tasks(assignee="alice")] == ["b"]
    with pytest.raises(InputError, match="status is 'bogus'"):
        store.list_tasks(status="bogus")


# --- import -----------------------------------------------------------------------------


def test_import_with_references(store):
    existing = store.add_task("existing")
    added = store.import_tasks([
        {"title": "first", "queue": "dev", "priority": 2, "recipe": "dev.yaml"},
        {"title": "second", "blocked_by": ["#0", existing.id, int(existing.id)]},
        {"title": "third", "blocked_by": ["#3"], "agent": "alice"},
        {"title": "fourth", "description": "d", "blocked_by": []},
    ])
    assert [t.title for t in added] == ["first", "second", "third", "fourth"]
    assert added[1].blocked_by == tuple(sorted((existing.id, added[0].id), key=int))
    assert added[2].blocked_by == (added[3].id,)  # forward reference
    assert added[2].assignee == "alice"
    assert (added[0].queue, added[0].priority, added[0].recipe) == ("dev", 2, "dev.yaml")


def test_import_is_all_or_nothing_and_names_item_and_field(store):
    with pytest.raises(InputError) as info:
        store.import_tasks([
            {"title": "fine"},
            {"title": "fine too"},
            {"title": "x", "queue": "bad queue"},
            {"title": "x", "priority": "high"},
            {"description": "no title"},
            {"title": "x", "blocked_by": ["#9"]},
            {"title": "x", "blocked_by": ["#6"]},
            {"title": "x", "titel": "typo"},
            "not an object",
        ])
    lines = str(info.value).splitlines()
    assert "item 2: queue is 'bad queue'; accepted: 1-64 characters" in lines[0]
    assert "item 3: priority is 'high'; accepted: an integer" in lines
    assert any(line.startswith("item 4: title is missing") for line in lines)
    assert any(line.startswith("item 5: blocked_by '#9'") for line in lines)
    assert any(line.startswith("item 6: blocked_by '#6' is the item itself") for line in lines)
    assert any(line.startswith("item 7: unknown field 'titel'") for line in lines)
    assert any(line.startswith("item 8: is str") for line in lines)
    assert store.list_tasks() == []


def test_import_rejects_unknown_existing_ids_and_cycles(store):
    with pytest.raises(InputError, match="item 1: blocked_by 77 is not an existing task id"):
        store.import_tasks([{"title": "a"}, {"title": "b", "blocked_by": [77]}])
    with pytest.raises(InputError, match=r"items #0 -> #2 -> #1 -> #0: blocked_by forms a "
                                         r"cycle"):
        store.import_tasks([{"title": "a", "blocked_by": ["#2"]},
                            {"title": "b", "blocked_by": ["#0"]},
                            {"title": "c", "blocked_by": ["#1"]}])
    with pytest.raises(InputError, match="JSON list"):
        store.import_tasks({"title": "a"})
    assert store.list_tasks() == []
    assert store.import_tasks([]) == []


# --- processes --------------------------------------------------------------------------


@pytest.mark.processes
def test_forked_child_opens_its_own_connection(store):
    store.add_task("parent")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            store.add_task("child")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [t.title for t in store.list_tasks()] == ["parent", "child"]


def test_not_started_requeues_without_counting_an_attempt(store):
    task_id = working(store)
    applied = store.report(result(task_id, outcome="not_started", summary="reclaimed"),
                           RetryPolicy(max_attempts=1, backoff_sec=60))
    task = store.get(task_id)
    assert applied.action == "requeued"
    assert (task.status, task.attempts, task.not_before, task.assignee) == ("idle", 0, None,
                                                                           None)


def test_launch_failure_reason_lands_in_last_error(store):
    task_id = working(store)
    store.report(result(task_id, outcome="launch_failed",
                        summary="launch_failed: not started\nreason: recipe 'x.yaml' not found",
                        detail={"reason": "recipe 'x.yaml' not found"}),
                 RetryPolicy(max_attempts=3, backoff_sec=0))
    assert "recipe 'x.yaml' not found" in store.get(task_id).last_error


def test_a_report_is_committed_durably_and_the_store_goes_back_to_normal(sqlite_store):
    """The store commits with synchronous=NORMAL (WAL: not fsynced, may roll back after a
    power loss), but a reported result is committed with FULL: its outbox entry is
    dropped as soon as the report returns. Seen through SQLite's statement trace."""
    task_id = working(sqlite_store)
    conn = sqlite_store._connection()  # the trace is only reachable on the connection
    said: list[str] = []
    conn.set_trace_callback(said.append)
    try:
        sqlite_store.report(result(task_id), POLICY)
        sqlite_store.claim(sqlite_store.add_task("next", queue="dev").id, "alice", "t2")
    finally:
        conn.set_trace_callback(None)

    full, begin = said.index("PRAGMA synchronous = FULL"), said.index("BEGIN IMMEDIATE")
    assert full < begin < said.index("COMMIT") < said.index("PRAGMA synchronous = NORMAL")
    assert said.count("PRAGMA synchronous = FULL") == 1  # the claim is not durable
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
