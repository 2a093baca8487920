"""PostgreSQL's own behaviour: schema and migrations, the URL as a secret, errors naming
the server (config errors exit 2, outages exit 1, recovery without a restart), run rows
and fencing, global limits under concurrent claims, dead-host reclaim exactly once,
wake-ups, export/import between stores, and TinyTask with the PostgreSQL coordinator.

(The task model itself is checked against both stores in test_local_store.py and
test_task_cli.py.)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import select
import time
from datetime import datetime, timezone

import psycopg
import pytest
from fake_tinytask import FakeTinyTask
from pgserver import PASSWORD, PASSWORD_USER

from scheduler import cli
from scheduler.config.settings import load_settings
from scheduler.errors import ConfigError, InvalidTransition, SourceError
from scheduler.sources import open_coordinator, open_source
from scheduler.sources.base import RECLAIMED, SUCCEEDED, Result, RetryPolicy
from scheduler.sources.local import LocalStore
from scheduler.sources.postgres import db as pgdb
from scheduler.sources.postgres import schema
from scheduler.sources.postgres import store as pgstore
from scheduler.sources.postgres.coordinated import CoordinatedSource
from scheduler.sources.postgres.coordinator import Coordinator, GlobalLimitReached
from scheduler.sources.postgres.store import PostgresStore
from scheduler.sources.tinytask import TinyTaskSource

POLICY = RetryPolicy(max_attempts=3, backoff_sec=0)


@pytest.fixture
def store(pg_url):
    opened = PostgresStore(pg_url, host="h1")
    yield opened
    opened.close()


def sql(url: str, statement: str, params=()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def result(task_id, token, outcome=SUCCEEDED, agent="vaela") -> Result:
    return Result(task_id=task_id, agent=agent, attempt=1, outcome=outcome, token=token,
                  summary=outcome)


# --- schema -----------------------------------------------------------------------------


def test_schema_is_created_in_its_own_namespace_at_the_current_version(store, pg_url):
    assert "schema not created yet" in store.health().detail  # health changes nothing
    store.add_task("x")
    assert store.health().detail == f"postgres {store.server}: 1 tasks, schema v" \
                                    f"{schema.SCHEMA_VERSION}"
    assert sql(pg_url, "SELECT version FROM tinyscheduler.schema_version") == [
        (schema.SCHEMA_VERSION,)]
    tables = {r[0] for r in sql(pg_url, "SELECT tablename FROM pg_tables "
                                        "WHERE schemaname = 'tinyscheduler'")}
    assert {"tasks", "blockers", "history", "runs", "hosts", "schema_version"} <= tables


def test_history_is_append_only_and_statuses_checked(store, pg_url):
    store.add_task("t")
    for statement in ("UPDATE tinyscheduler.history SET detail = 'x'",
                      "DELETE FROM tinyscheduler.history"):
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            sql(pg_url, statement)
    with pytest.raises(psycopg.errors.CheckViolation):
        sql(pg_url, "UPDATE tinyscheduler.tasks SET status = 'bogus'")


def test_a_newer_schema_is_refused(store, pg_url):
    store.add_task("x")
    sql(pg_url, "UPDATE tinyscheduler.schema_version SET version = 99")
    schema._READY.clear()
    with PostgresStore(pg_url) as again, pytest.raises(SourceError, match="schema v99"):
        again.list_tasks()
    with PostgresStore(pg_url) as again:
        assert "newer" in again.health().detail


def test_a_later_migration_runs_once(store, pg_url, monkeypatch):
    store.add_task("before")
    monkeypatch.setattr(schema, "MIGRATIONS", [
        *schema.MIGRATIONS, "ALTER TABLE tinyscheduler.tasks ADD COLUMN extra TEXT"])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", len(schema.MIGRATIONS))
    schema._READY.clear()
    for _ in range(2):
        schema._READY.clear()
        with PostgresStore(pg_url) as again:
            assert [t.title for t in again.list_tasks()] == ["before"]
    assert sql(pg_url, "SELECT version FROM tinyscheduler.schema_version") == [
        (schema.SCHEMA_VERSION,)]


def test_a_first_version_database_gains_the_ready_window_indexes(pg_url, monkeypatch):
    """A database made by the first schema (before ready windows) is upgraded in place:
    its tasks stay, the two old indexes give way to the ordered ones, and windows work."""
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 1)
    schema._READY.clear()
    with PostgresStore(pg_url) as old:
        low = old.add_task("low", queue="dev", priority=0)
        high = old.add_task("high", queue="dev", priority=5)
    monkeypatch.undo()
    schema._READY.clear()

    with PostgresStore(pg_url) as store:
        assert [t.id for t in store.ready_window(queue="dev", limit=5)] == [high.id, low.id]
    assert sql(pg_url, "SELECT version FROM tinyscheduler.schema_version") == [
        (schema.SCHEMA_VERSION,)]
    indexes = {r[0] for r in sql(pg_url, "SELECT indexname FROM pg_indexes "
                                         "WHERE schemaname = 'tinyscheduler'")}
    assert {"tasks_ready_queue", "tasks_ready_assignee", "history_at",
            "tasks_status_queue_assignee", "tasks_assignee_status"} <= indexes


def test_a_window_is_the_top_of_its_index_and_edges_are_read_by_key(store, pg_url):
    """With 20,000 idle tasks: a ready window reads the first rows of its partial index
    (no sort of the whole queue), and the blocker edges are read from the blocker table
    with each task looked up by its key, even before the blocker table has statistics
    (a join could then hash the whole task table)."""
    store.add_task("seed", queue="dev")
    sql(pg_url, "INSERT INTO tinyscheduler.tasks (title, queue, assignee, status, created_at, "
                "updated_at) SELECT 'q ' || n, 'dev', CASE WHEN mod(n, 2) = 0 THEN 'vaela' END, "
                "'idle', now(), now() FROM generate_series(2, 20000) n")
    sql(pg_url, "ANALYZE tinyscheduler.tasks")

    def plan(query: str, params=()) -> str:
        return "\n".join(row[0] for row in sql(pg_url, "EXPLAIN " + query, params))

    now = datetime.now(timezone.utc)
    queue = plan(pgstore.WINDOW_QUEUE_SQL, ("dev", now, 8))
    assert "tasks_ready_queue" in queue and "Sort" not in queue, queue
    assigned = plan(pgstore.WINDOW_ASSIGNED_SQL, ("vaela", now, 8))
    assert "tasks_ready_assignee" in assigned and "Sort" not in assigned, assigned
    edges = plan(pgstore.IDLE_EDGES_SQL)
    assert "Seq Scan on tasks" not in edges and "Hash" not in edges, edges
    assert [t.id for t in store.ready_window(queue="dev", limit=3)] == ["1", "3", "5"]


def _open_and_add(url: str) -> str:
    with PostgresStore(url) as store:
        return store.add_task("from a racing host").id


def test_hosts_starting_at_once_migrate_once(pg_url):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        ids = pool.map(_open_and_add, [pg_url] * 4)
    assert sorted(ids, key=int) == ["1", "2", "3", "4"]
    assert sql(pg_url, "SELECT version FROM tinyscheduler.schema_version") == [
        (schema.SCHEMA_VERSION,)]


# --- the URL is a secret; errors name the server -------------------------------------------


def test_url_is_masked_and_read_from_a_file(tmp_path, pg_url):
    secret_url = "postgresql://tiny:hunter2@db.internal:5433/backlog"
    settings = load_settings(environ={"TINYSCHEDULER_TASK_SOURCE": "postgres",
                                      "TINYSCHEDULER_DATABASE_URL": secret_url}, cwd=tmp_path)
    assert settings.resolved()["DATABASE_URL"].value == "********"
    assert "hunter2" not in repr(settings)
    assert pgdb.describe(secret_url) == "postgresql://tiny@db.internal:5433/backlog"
    url_file = tmp_path / "url"
    url_file.write_text(pg_url + "\n")
    from_file = load_settings(environ={"TINYSCHEDULER_TASK_SOURCE": "postgres",
                                       "TINYSCHEDULER_DATABASE_URL_FILE": str(url_file)},
                              cwd=tmp_path)
    assert from_file.database_url == pg_url


@pytest.mark.parametrize(("environ", "message"), [
    ({"TINYSCHEDULER_TASK_SOURCE": "postgres"}, "needs TINYSCHEDULER_DATABASE_URL"),
    ({"TINYSCHEDULER_TASK_SOURCE": "postgres", "TINYSCHEDULER_DATABASE_URL": "mysql://x:pw@h/d"},
     "DATABASE_URL=******** "),
    ({"TINYSCHEDULER_TASK_SOURCE": "local", "TINYSCHEDULER_COORDINATOR": "postgres",
      "TINYSCHEDULER_DATABASE_URL": "postgresql:///x"}, "is for TASK_SOURCE=tinytask"),
    ({"TINYSCHEDULER_TASK_SOURCE": "postgres", "TINYSCHEDULER_DATABASE_URL": "postgresql:///x",
      "TINYSCHEDULER_HOST_TIMEOUT_SEC": "30"}, "must exceed HEARTBEAT_SEC x STALE_MULTIPLIER"),
    ({"TINYSCHEDULER_TASK_SOURCE": "postgres", "TINYSCHEDULER_DATABASE_URL_FILE": "/nonexist"},
     "DATABASE_URL_FILE=/nonexist cannot be read"),
])
def test_database_settings_errors(tmp_path, environ, message):
    with pytest.raises(ConfigError, match=message.replace("*", r"\*")) as caught:
        load_settings(environ=environ, cwd=tmp_path)
    assert "pw@" not in str(caught.value)


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """``run(url, *args)``: the CLI in this process (conftest puts the project logger
    back afterwards)."""
    for name in list(os.environ):
        if name.startswith("TINYSCHEDULER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TINYSCHEDULER_TASK_SOURCE", "postgres")
    monkeypatch.setenv("TINYSCHEDULER_AGENT_COMMAND", "true")

    def run(url: str, *args: str) -> tuple[int, str]:
        monkeypatch.setenv("TINYSCHEDULER_DATABASE_URL", url)
        return cli.main(["--base-path", str(tmp_path), *args]), ""

    return run


def test_an_unparsable_url_is_described_without_its_contents():
    url = "postgresql://bob:hunter2@[::1/tasks"  # an unclosed IPv6 bracket
    assert pgdb.describe(url) == "postgresql://(unparsable URL)"
    assert pgdb._password(url) is None
    shown = repr(pgdb.Database("postgresql://bob:hunter2@db.example:5433/tasks"))
    assert shown == "Database('postgresql://bob@db.example:5433/tasks')"


def test_a_failed_statement_names_the_server_and_the_session_stays_usable(pg_url):
    db = pgdb.Database(pg_url)
    try:
        with pytest.raises(SourceError, match=f"postgres {db.server}: .*no_such_table"), \
                db.transaction() as cur:
            cur.execute("SELECT * FROM no_such_table")
        assert db.query("SELECT 1") == [(1,)]
    finally:
        db.close()


@pytest.mark.parametrize("command", [("task", "list"), ("run", "--once"),
                                     ("validate-config",)])
def test_bad_password_and_unknown_database_exit_2_without_the_password(
        pg_server, pg_url, cli_env, capsys, command):
    dbname = pg_url.split("/")[3].split("?")[0]
    wrong = pg_server.url(dbname, user=PASSWORD_USER, password="not-the-" + PASSWORD)
    unknown = pg_server.url("no_such_db", user=PASSWORD_USER, password=PASSWORD)
    for url, why in ((wrong, "wrong password"), (unknown, "does not exist")):
        code, _ = cli_env(url, *command)
        out = capsys.readouterr()
        text = out.out + out.err
        assert code == 2, text
        assert why in text and PASSWORD not in text
        assert f"{PASSWORD_USER}@" in text  # the server is named, user included


def test_right_password_works(pg_server, pg_url, cli_env, capsys):
    dbname = pg_url.split("/")[3].split("?")[0]
    sql(pg_url, f"GRANT ALL ON DATABASE {dbname} TO {PASSWORD_USER}")
    url = pg_server.url(dbname, user=PASSWORD_USER, password=PASSWORD)
    assert cli_env(url, "task", "add", "hello")[0] == 0
    assert PASSWORD not in capsys.readouterr().out


def test_outage_is_a_source_error_naming_the_server_and_the_store_recovers(pg_server, store):
    store.add_task("before")
    pg_server.stop()
    try:
        with pytest.raises(SourceError) as caught:
            store.list_tasks()
        assert store.server in str(caught.value)
        assert not store.health().ok
    finally:
        pg_server.start()
    assert [t.title for t in store.list_tasks()] == ["before"]  # reconnected


# --- runs, fencing, global limits ------------------------------------------------------------


def test_claim_inserts_a_run_with_a_growing_fence_and_results_delete_it(store):
    first, second = store.add_task("a"), store.add_task("b")
    store.claim(first.id, "vaela", "tok-a")
    store.claim(second.id, "vaela", "tok-b")
    runs = store.coordinator.cluster()["hosts"][0]["runs"]
    assert [(r["task"], r["agent"]) for r in runs] == [(first.id, "vaela"), (second.id, "vaela")]
    assert runs[0]["run"] < runs[1]["run"]
    assert store.report(result(first.id, "tok-a"), POLICY).action == "complete"
    # a stale result is ignored, but its own run row (if any) goes with it
    assert store.report(result(second.id, "wrong"), POLICY).action == "ignored"
    assert [r["task"] for r in store.coordinator.cluster()["hosts"][0]["runs"]] == [second.id]
    store.cancel(second.id)
    assert store.report(result(second.id, "tok-b"), POLICY).action == "ignored"
    assert store.coordinator.cluster()["hosts"] == []  # no heartbeat, no runs: not listed
    store.coordinator.host_heartbeat()
    (listed,) = store.coordinator.cluster()["hosts"]
    assert (listed["host"], listed["alive"], listed["runs"]) == ("h1", True, [])


def test_global_limit_is_checked_in_the_claim(pg_url):
    with PostgresStore(pg_url, host="h1", global_limits={"vaela": 1}) as one, \
            PostgresStore(pg_url, host="h2", global_limits={"vaela": 1}) as two:
        a, b = one.add_task("a"), one.add_task("b")
        one.claim(a.id, "vaela", "t1")
        with pytest.raises(GlobalLimitReached, match="global limit 1"):
            two.claim(b.id, "vaela", "t2")
        assert two.get(b.id).status == "idle"
        two.claim(b.id, "damien", "t3")  # another agent, no limit


def _claim_all(url: str, host: str, ids: list[str]) -> list[str]:
    claimed = []
    with PostgresStore(url, host=host, global_limits={"vaela": 3}) as store:
        for task_id in ids:
            try:
                store.claim(task_id, "vaela", f"{host}-{task_id}")
                claimed.append(task_id)
            except InvalidTransition:
                pass
    return claimed


def test_hosts_claiming_at_once_never_share_a_task_or_exceed_the_global_limit(store, pg_url):
    ids = [store.add_task(f"t{i}").id for i in range(30)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        claimed = pool.starmap(_claim_all, [(pg_url, f"h{n}", ids[n:] + ids[:n])
                                            for n in range(4)])
    flat = [task for host in claimed for task in host]
    assert len(flat) == 3 == len(set(flat))
    assert len(sql(pg_url, "SELECT * FROM tinyscheduler.runs")) == 3


def test_dead_hosts_runs_are_reclaimed_exactly_once(pg_url):
    with PostgresStore(pg_url, host="dead", host_timeout_sec=5) as dead:
        ids = [dead.add_task(f"t{i}", queue="dev").id for i in range(6)]
        for task_id in ids:
            dead.claim(task_id, "vaela", f"tok-{task_id}")
        dead.coordinator.host_heartbeat()
    assert _reclaim(pg_url, "b") == 0  # still alive
    sql(pg_url, "UPDATE tinyscheduler.runs SET heartbeat_at = now() - interval '1 minute'")
    assert _reclaim(pg_url, "b") == 0  # its runs are silent, but the host is alive
    sql(pg_url, "UPDATE tinyscheduler.hosts SET heartbeat_at = now() - interval '1 minute'")
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        counts = pool.starmap(_reclaim, [(pg_url, f"h{n}") for n in range(3)])
    assert sum(counts) == 6
    with PostgresStore(pg_url) as store:
        for task_id in ids:
            task = store.get(task_id)
            assert (task.status, task.attempts, task.assignee) == ("idle", 1, None)
            reclaims = [h for h in store.history(task_id) if "reclaimed: host dead" in h["detail"]]
            assert len(reclaims) == 1
            # the dead host's wrapper comes back: fenced, and its late result ignored
            assert not store.coordinator.renew(task_id, f"tok-{task_id}")
            assert store.report(result(task_id, f"tok-{task_id}"), POLICY).action == "ignored"
    assert sql(pg_url, "SELECT count(*) FROM tinyscheduler.runs") == [(0,)]


def _reclaim(url: str, host: str) -> int:
    with PostgresStore(url, host=host, host_timeout_sec=5) as store:
        return len(store.reclaim_dead_hosts(POLICY))


# --- wake-ups ----------------------------------------------------------------------------------


def test_changes_notify_listeners(store):
    listener = store.coordinator.listener()
    try:
        for change in (lambda: store.add_task("x"), lambda: store.cancel("1"),
                       lambda: store.retry("1")):
            change()
            ready, _, _ = select.select([listener.fileno()], [], [], 5)
            assert ready and listener.drain() >= 1
        ready, _, _ = select.select([listener.fileno()], [], [], 0.05)
        assert not ready
    finally:
        listener.close()


def test_a_lost_listener_raises_so_the_daemon_makes_a_new_one(pg_server, store):
    listener = store.coordinator.listener()
    try:
        pg_server.restart()
        select.select([listener.fileno()], [], [], 5)
        with pytest.raises(SourceError, match="wake-up channel lost"):
            for _ in range(3):
                listener.drain()
                time.sleep(0.1)
    finally:
        listener.close()


# --- moving a backlog ----------------------------------------------------------------------


def test_export_from_sqlite_import_into_postgres_and_back(tmp_path, pg_url, monkeypatch,
                                                          capsys):
    for name in list(os.environ):
        if name.startswith("TINYSCHEDULER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    with LocalStore(tmp_path / "state" / "tasks.db") as local:
        done = local.add_task("done", queue="dev")
        local.claim(done.id, "vaela", "t")
        local.report(result(done.id, "t"), POLICY)
        local.add_task("waits", queue="dev", blocked_by=[done.id], priority=7)
        parked = local.add_task("parked", assignee="damien")
        local.claim(parked.id, "damien", "p")
        local.report(result(parked.id, "p", outcome="failed"), RetryPolicy(1, 0))
        before = [(t.title, t.status, t.priority, t.attempts, t.last_error)
                  for t in local.list_tasks()]
        history_before = [local.history(t.id) for t in local.list_tasks()]
    base = ["--base-path", str(tmp_path)]
    assert cli.main([*base, "task", "export", "-o", str(tmp_path / "backlog.json")]) == 0
    assert oct(os.stat(tmp_path / "backlog.json").st_mode & 0o777) == "0o600"
    monkeypatch.setenv("TINYSCHEDULER_TASK_SOURCE", "postgres")
    monkeypatch.setenv("TINYSCHEDULER_DATABASE_URL", pg_url)
    assert cli.main([*base, "task", "import", str(tmp_path / "backlog.json")]) == 0
    with PostgresStore(pg_url) as pg:
        moved = pg.list_tasks()
        assert [(t.title, t.status, t.priority, t.attempts, t.last_error)
                for t in moved] == before
        assert moved[1].blocked_by == (moved[0].id,) and not moved[1].is_blocked
        assert [pg.history(t.id) for t in moved] == history_before
    capsys.readouterr()
    assert cli.main([*base, "task", "export"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported == json.loads((tmp_path / "backlog.json").read_text())


def test_import_of_an_exported_working_task_and_bad_export_fields(store):
    with pytest.raises(Exception, match="item 0: status is 'working'"):
        store.import_tasks([{"title": "x", "status": "working"}])
    with pytest.raises(Exception, match=r"history\[0\]"):
        store.import_tasks([{"title": "x", "history": [{"at": "yesterday"}]}])
    assert store.list_tasks() == []


# --- TinyTask with the PostgreSQL coordinator ------------------------------------------------


def test_tinytask_claims_are_coordinated_across_hosts(pg_url):
    with FakeTinyTask() as fake:
        task = str(fake.add_task("shared", queue="dev"))

        def host(name: str) -> CoordinatedSource:
            inner = TinyTaskSource(fake.url, retry_initial=0.0, retry_max=0.0,
                                   sleep=lambda _: None, timeout=5.0)
            coordinator = Coordinator(pgdb.Database(pg_url), host=name,
                                      global_limits={"vaela": 1}, host_timeout_sec=5)
            schema.ensure_schema(coordinator.db)
            return CoordinatedSource(inner, coordinator)

        a, b = host("a"), host("b")
        try:
            a.claim(task, "vaela", "tok-a")
            with pytest.raises(InvalidTransition):
                b.claim(task, "vaela", "tok-b")
            other = str(fake.add_task("other", queue="dev"))
            with pytest.raises(GlobalLimitReached):
                b.claim(other, "vaela", "tok-c")
            assert a.report(result(task, "tok-a"), POLICY).action == "complete"
            assert fake.task(int(task))["status"] == "complete"
            assert sql(pg_url, "SELECT count(*) FROM tinyscheduler.runs") == [(0,)]
            b.claim(other, "vaela", "tok-c")
            sql(pg_url, "UPDATE tinyscheduler.runs SET heartbeat_at = now() - interval '1h'")
            sql(pg_url, "INSERT INTO tinyscheduler.hosts (name, pid, heartbeat_at) "
                        "VALUES ('b', 1, now() - interval '1h')")
            reclaimed = a.reclaim_dead_hosts(POLICY)
            assert [r.outcome for r in reclaimed] == [RECLAIMED]
            assert fake.task(int(other))["status"] == "idle"
            assert a.reclaim_dead_hosts(POLICY) == []
        finally:
            a.close()
            b.close()


def test_a_coordinated_tinytask_source_keeps_run_rows_and_tasks_in_step(pg_url):
    """TinyTask with the coordinator, without global limits: listings go to TinyTask; a
    claim takes the run row and the task together (a task running on another host, or one
    TinyTask refuses, leaves both as they were); the run row is the wrapper's fence; a
    report ends it; health names the coordinator."""
    with FakeTinyTask() as fake:
        shared = str(fake.add_task("shared", queue="dev"))
        done = str(fake.add_task("done already", queue="dev", status="complete"))

        def host(name: str) -> CoordinatedSource:
            inner = TinyTaskSource(fake.url, retry_initial=0.0, retry_max=0.0,
                                   sleep=lambda _: None, timeout=5.0)
            coordinator = Coordinator(pgdb.Database(pg_url), host=name, host_timeout_sec=5)
            schema.ensure_schema(coordinator.db)
            return CoordinatedSource(inner, coordinator)

        a, b = host("a"), host("b")
        try:
            assert [t.id for t in a.queue_idle_unassigned("dev")] == [shared]
            assert a.skipped == 0 and a.assigned_idle("vaela") == []
            a.claim(shared, "vaela", "tok-a")
            assert [t.id for t in a.working()] == [shared]
            assert a.current([shared])[shared].lease_token == "tok-a"
            run = a.coordinator.run_of(shared)
            assert (run["host"], run["agent"], run["token"]) == ("a", "vaela", "tok-a")

            with pytest.raises(InvalidTransition, match="already runs on host a"):
                b.claim(shared, "damien", "tok-b")
            assert fake.task(int(shared))["assigned_to"] == "vaela"
            with pytest.raises(InvalidTransition, match="not idle"):
                b.claim(done, "damien", "tok-c")
            assert b.coordinator.run_of(done) is None  # rolled back with the refusal

            assert a.coordinator.renew(shared, "tok-a")
            assert not b.coordinator.renew(shared, "tok-b")  # not its run: fenced
            a.note(shared, "merging into main")
            assert fake.comments_of(int(shared)) == ["merging into main"]
            health = a.health()
            assert health.ok and health.detail.endswith(f"; coordinator {a.coordinator.db.server}")

            a.before_fork()  # drops its connection; the next call makes a new one
            assert a.report(result(shared, "tok-a"), POLICY).action == "complete"
            assert a.coordinator.run_of(shared) is None
            assert not a.coordinator.renew(shared, "tok-a")  # ended: a late wrapper is fenced

            # host a goes silent with a run; b reclaims it; a's late result changes nothing
            late = str(fake.add_task("late", queue="dev"))
            a.claim(late, "vaela", "tok-late")
            sql(pg_url, "UPDATE tinyscheduler.runs SET heartbeat_at = now() - interval '1h'")
            sql(pg_url, "INSERT INTO tinyscheduler.hosts (name, pid, heartbeat_at) "
                        "VALUES ('a', 1, now() - interval '1h')")
            assert [r.task_id for r in b.reclaim_dead_hosts(POLICY)] == [late]
            assert fake.task(int(late))["status"] == "idle"
            assert a.report(result(late, "tok-late"), POLICY).action == "ignored"
            assert fake.task(int(late))["status"] == "idle"
        finally:
            a.close()
            b.close()


def test_a_coordinated_source_whose_database_is_down_is_unhealthy(tmp_path):
    with FakeTinyTask() as fake:
        down = f"postgresql://postgres@/nodb?host={tmp_path}&port=5999"  # no server there
        inner = TinyTaskSource(fake.url, retry_initial=0.0, retry_max=0.0,
                               sleep=lambda _: None, timeout=5.0)
        source = CoordinatedSource(inner, Coordinator(pgdb.Database(down), host="a"))
        try:
            health = source.health()
        finally:
            source.close()
        assert not health.ok
        assert health.detail.startswith(f"TinyTask {fake.url}: ok")
        assert "; coordinator: postgres " in health.detail


def test_open_source_and_coordinator_follow_the_settings(tmp_path, pg_url):
    settings = load_settings(environ={"TINYSCHEDULER_TASK_SOURCE": "tinytask",
                                      "TINYSCHEDULER_MCP_ENDPOINT": "http://127.0.0.1:9",
                                      "TINYSCHEDULER_COORDINATOR": "postgres",
                                      "TINYSCHEDULER_DATABASE_URL": pg_url}, cwd=tmp_path)
    source = open_source(settings)
    assert isinstance(source, CoordinatedSource) and source.coordinator is not None
    source.close()
    coordinator = open_coordinator(settings)
    assert coordinator is not None
    coordinator.close()
    local = load_settings(environ={}, cwd=tmp_path)
    assert open_coordinator(local) is None and open_source(local).coordinator is None


def test_the_deploy_example_env_file_loads(tmp_path, pg_url):
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "deploy" / \
        "tinyscheduler-postgres.env.example"
    url_file = tmp_path / "database-url"
    url_file.write_text(pg_url + "\n")
    env_file = tmp_path / "tinyscheduler.env"
    env_file.write_text(example.read_text().replace("/etc/tinyscheduler/database-url",
                                                    str(url_file)))
    settings = load_settings(env_file=env_file, environ={}, cwd=tmp_path)
    assert (settings.task_source, settings.database_url) == ("postgres", pg_url)
    assert dict(settings.global_limits) == {"vaela": 5, "damien": 2}
