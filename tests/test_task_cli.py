"""``tinyscheduler task ...`` on the embedded store and on PostgreSQL (every test runs
against both)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler import cli
from scheduler.sources.base import Result, RetryPolicy
from scheduler.sources.local import LocalStore

TASK_KEYS = {"id", "title", "description", "queue", "assignee", "status", "priority",
             "created_at", "blocked_by", "is_blocked", "recipe", "attempts", "not_before",
             "last_error", "files"}
CONSOLE_SCRIPT = Path(sys.executable).parent / "tinyscheduler"


@pytest.fixture(params=["local", "postgres"])
def backend(request):
    return request.param


@pytest.fixture
def base(tmp_path, monkeypatch, backend, request):
    """A clean base path: no env file, no TINYSCHEDULER_* variables from the caller; for
    PostgreSQL, TASK_SOURCE and DATABASE_URL of a fresh database."""
    for name in list(os.environ):
        if name.startswith("TINYSCHEDULER_"):
            monkeypatch.delenv(name)
    if backend == "postgres":
        monkeypatch.setenv("TINYSCHEDULER_TASK_SOURCE", "postgres")
        monkeypatch.setenv("TINYSCHEDULER_DATABASE_URL", request.getfixturevalue("pg_url"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def run(base, capsys):
    """``run(*args)`` -> (exit code, stdout, stderr) of ``tinyscheduler --base-path B ...``."""

    def invoke(*args: str) -> tuple[int, str, str]:
        code = cli.main(["--base-path", str(base), *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


@pytest.fixture
def store(base, backend):
    if backend == "postgres":
        from scheduler.sources.postgres.store import PostgresStore

        opened = PostgresStore(os.environ["TINYSCHEDULER_DATABASE_URL"])
    else:
        opened = LocalStore(base / "state" / "tasks.db")
    yield opened
    opened.close()


def add_json(run, *args: str) -> dict:
    code, out, err = run("task", "add", *args, "--json")
    assert code == 0, err
    return json.loads(out)


# --- add --------------------------------------------------------------------------------


def test_add_prints_a_line(run, base, backend):
    code, out, _ = run("task", "add", "Fix login bug", "--queue", "dev", "--priority", "5")
    assert code == 0
    assert out.startswith("added task 1: 'Fix login bug' [idle] queue dev priority 5")
    assert (base / "state" / "tasks.db").is_file() == (backend == "local")


def test_add_json_has_the_stable_keys(run):
    first = add_json(run, "first")
    data = add_json(run, "second", "--description", "more", "--agent", "alice",
                    "--priority", "-1", "--blocked-by", first["id"], "--recipe", "dev.yaml")
    assert set(data) == TASK_KEYS
    assert data["id"] == "2"
    assert (data["title"], data["description"], data["assignee"], data["queue"],
            data["priority"], data["recipe"], data["status"]) == (
        "second", "more", "alice", None, -1, "dev.yaml", "idle")
    assert data["blocked_by"] == ["1"] and data["is_blocked"] is True
    assert data["created_at"].endswith("Z")
    assert (data["attempts"], data["not_before"], data["last_error"]) == (0, None, None)


@pytest.mark.parametrize(("args", "field"), [
    (["", "--queue", "dev"], "title"),
    (["t", "--queue", "a b"], "queue"),
    (["t", "--agent", "../x"], "agent"),
    (["t", "--recipe", "../dev.yaml"], "recipe"),
    (["t", "--priority", "high"], "--priority"),
    (["t", "--blocked-by", "99"], "blocked_by"),
    (["t", "--blocked-by", "abc"], "blocked_by"),
])
def test_add_bad_input_exits_2_naming_the_field(run, args, field):
    code, out, err = run("task", "add", *args)
    assert code == 2
    assert field in err
    assert run("task", "list")[1] == "no tasks\n"


def test_add_wakes_a_listening_daemon(run, base):
    from scheduler.state.wake import WakeSocket

    state = base / "state"
    state.mkdir(mode=0o700)
    waker = WakeSocket(state / "wake.sock")
    try:
        assert run("task", "add", "t")[0] == 0
        assert waker.wait(0)
    finally:
        waker.close()


# --- list -------------------------------------------------------------------------------


def test_list_empty(run):
    assert run("task", "list") == (0, "no tasks\n", "")
    assert run("task", "list", "--json") == (0, "[]\n", "")


def test_list_table_and_filters(run):
    add_json(run, "a" * 80, "--queue", "dev", "--priority", "3")
    add_json(run, "waits", "--agent", "alice", "--blocked-by", "1")
    code, out, _ = run("task", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "QUEUE", "AGENT", "PRI", "RUNS",
                                "BLOCKED", "TITLE"]
    assert lines[1].split()[:7] == ["1", "idle", "dev", "-", "3", "0", "no"]
    assert lines[1].rstrip().endswith("...")
    assert lines[2].split() == ["2", "idle", "-", "alice", "0", "0", "1", "waits"]

    code, out, _ = run("task", "list", "--agent", "alice", "--json")
    assert [t["title"] for t in json.loads(out)] == ["waits"]
    assert set(json.loads(out)[0]) == TASK_KEYS | {"merging"}
    assert run("task", "list", "--queue", "ops")[1] == "no tasks\n"
    assert run("task", "list", "--status", "complete")[1] == "no tasks\n"


def test_list_bad_status_exits_2(run):
    code, _, err = run("task", "list", "--status", "bogus")
    assert code == 2
    assert "--status" in err


# --- show -------------------------------------------------------------------------------


def test_show_text(run, store):
    add_json(run, "blocker")
    add_json(run, "the task", "--queue", "dev", "--description", "line one\nline two",
             "--blocked-by", "1")
    add_json(run, "after", "--blocked-by", "2")
    code, out, _ = run("task", "show", "2")
    assert code == 0
    assert out.startswith("task 2: the task\n")
    assert "  status      idle" in out
    assert "  blocked     yes" in out
    assert "    line two" in out
    assert "blocked by:\n  1  idle       blocker" in out
    assert "blocking:\n  3  idle       after" in out
    assert "history:\n" in out and "- -> idle  cli  added" in out


def test_show_json_with_result_history_and_blocking(run, store):
    add_json(run, "t", "--queue", "dev")
    add_json(run, "after", "--blocked-by", "1")
    store.claim("1", "alice", "tok")
    store.report(Result("1", "alice", 1, "succeeded", "tok", "done\nfine"),
                 RetryPolicy(3, 60))
    code, out, _ = run("task", "show", "1", "--json")
    assert code == 0
    data = json.loads(out)
    assert TASK_KEYS | {"result_summary", "history", "blocking"} <= set(data)
    assert data["status"] == "complete"
    assert data["result_summary"] == "done\nfine"
    assert data["blocking"] == [{"id": "2", "status": "idle", "title": "after"}]
    assert [(h["from_status"], h["to_status"]) for h in data["history"]] == [
        (None, "idle"), ("idle", "working"), ("working", "complete")]
    code, out, _ = run("task", "show", "1")
    assert "working -> complete  tinyscheduler  done" in out


@pytest.mark.parametrize("command", ["show", "retry", "cancel"])
def test_unknown_id_exits_2(run, command):
    code, out, err = run("task", command, "99")
    assert code == 2
    assert "no task with id 99" in err
    assert out == ""


# --- retry / cancel ---------------------------------------------------------------------


def test_cancel_idle_then_retry(run, store):
    add_json(run, "t")
    code, out, _ = run("task", "cancel", "1")
    assert (code, out) == (0, "task 1 cancelled\n")
    assert store.get("1").status == "cancelled"
    code, out, _ = run("task", "retry", "1")
    assert (code, out) == (0, "task 1 is idle again (attempts reset)\n")
    assert store.get("1").status == "idle"


def test_retry_refused_exits_2_naming_statuses(run):
    add_json(run, "t")
    code, _, err = run("task", "retry", "1")
    assert code == 2
    assert "task 1 is idle; only failed or cancelled tasks can be retried" in err


def test_retry_parked_task(run, store):
    add_json(run, "t", "--queue", "dev")
    store.claim("1", "alice", "tok")
    store.report(Result("1", "alice", 1, "failed", "tok", "boom"), RetryPolicy(1, 60))
    assert store.get("1").status == "failed"
    assert run("task", "retry", "1")[0] == 0
    got = store.get("1")
    assert (got.status, got.attempts, got.last_error) == ("idle", 0, None)


def test_cancel_working_without_live_wrapper_cancels_in_store(run, store):
    add_json(run, "t")
    store.claim("1", "alice", "tok")
    code, out, _ = run("task", "cancel", "1")
    assert (code, out) == (0, "task 1 cancelled\n")
    assert store.get("1").status == "cancelled"
    assert store.history("1")[-1]["detail"] == "no live wrapper"


def test_cancel_working_with_live_wrapper_leaves_it_to_the_wrapper(run, store, monkeypatch):
    import scheduler.reconcile.cancel

    asked = []
    monkeypatch.setattr(scheduler.reconcile.cancel, "request_cancel",
                        lambda settings, task_id: asked.append(task_id) or True)
    add_json(run, "t")
    store.claim("1", "alice", "tok")
    code, out, _ = run("task", "cancel", "1")
    assert code == 0
    assert out == ("asked the wrapper of task 1 to stop; it will be marked cancelled when "
                   "it reports\n")
    assert asked == ["1"]
    assert store.get("1").status == "working"


def test_cancel_complete_exits_2(run, store):
    add_json(run, "t")
    store.claim("1", "alice", "tok")
    store.report(Result("1", "alice", 1, "succeeded", "tok", "ok"), RetryPolicy(3, 60))
    code, _, err = run("task", "cancel", "1")
    assert code == 2
    assert "task 1 is complete; only idle or working tasks can be cancelled" in err


# --- import -----------------------------------------------------------------------------


def test_import(run, base):
    add_json(run, "existing")
    spec = [
        {"title": "design", "queue": "dev", "priority": 2},
        {"title": "build", "queue": "dev", "blocked_by": ["#0", 1], "recipe": "dev.yaml"},
    ]
    (base / "tasks.json").write_text(json.dumps(spec))
    code, out, _ = run("task", "import", str(base / "tasks.json"))
    assert code == 0
    assert out.startswith("imported 2 tasks")
    code, out, _ = run("task", "import", str(base / "tasks.json"), "--json")
    data = json.loads(out)
    assert [t["id"] for t in data] == ["4", "5"]
    assert data[1]["blocked_by"] == ["1", "4"]
    assert set(data[0]) == TASK_KEYS


def test_import_bad_item_changes_nothing(run, base):
    (base / "tasks.json").write_text(json.dumps([
        {"title": "ok"}, {"title": "ok"}, {"title": "ok"}, {"title": "x", "priority": "high"},
    ]))
    code, out, err = run("task", "import", str(base / "tasks.json"))
    assert code == 2
    assert "item 3: priority is 'high'; accepted: an integer" in err
    assert "nothing imported" in err
    assert run("task", "list")[1] == "no tasks\n"


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    ('{"title": "x"}', "JSON list"),
])
def test_import_bad_file_exits_2(run, base, content, message):
    (base / "tasks.json").write_text(content)
    code, _, err = run("task", "import", str(base / "tasks.json"))
    assert code == 2
    assert message in err


def test_import_missing_file_exits_2(run, base):
    code, _, err = run("task", "import", str(base / "missing.json"))
    assert code == 2
    assert "missing.json" in err


# --- source selection and start-up ------------------------------------------------------


def test_refused_when_the_source_is_tinytask(run, monkeypatch):
    monkeypatch.setenv("TINYSCHEDULER_TASK_SOURCE", "tinytask")
    monkeypatch.setenv("TINYSCHEDULER_MCP_ENDPOINT", "http://127.0.0.1:9")
    code, _, err = run("task", "list")
    assert code == 2
    assert "TASK_SOURCE is tinytask" in err
    assert "TinyTask server" in err


def test_task_module_does_not_import_sqlite():
    code = ("import sys, scheduler.cli; "
            "print(sorted(m for m in ('sqlite3', 'scheduler.sources.local') "
            "if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_PROCESS_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout  # (coverage itself imports sqlite3)
    assert out.strip() == "[]"


@pytest.mark.processes
def test_console_script_round_trip(base):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYSCHEDULER_")}

    def script(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(CONSOLE_SCRIPT), "--base-path", str(base), *args],
                              capture_output=True, text=True, env=env, cwd=base, timeout=60)

    added = script("task", "add", "from a shell", "--queue", "dev", "--json")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["id"] == "1"
    listed = script("task", "list")
    assert "from a shell" in listed.stdout
    missing = script("task", "show", "99")
    assert missing.returncode == 2
    assert "no task with id 99" in missing.stderr
    bad = script("task", "add", "t", "--priority", "high")
    assert bad.returncode == 2
    assert "--priority" in bad.stderr


def test_nudge_without_daemon_is_harmless(run, base):
    # no socket: add still succeeds; a stale non-socket file is not a problem either
    (base / "state").mkdir(mode=0o700)
    (base / "state" / "wake.sock").write_text("")
    assert run("task", "add", "t")[0] == 0


# --- edit / delete / prune ----------------------------------------------------------------


def test_edit_changes_fields_and_blockers_and_records_it(run, store):
    add_json(run, "blocker one")
    add_json(run, "blocker two")
    add_json(run, "the task", "--queue", "dev", "--blocked-by", "1")
    code, out, err = run("task", "edit", "3", "--priority", "7", "--queue", "review",
                         "--title", "renamed", "--blocked-by", "2", "--unblock", "1")
    assert code == 0, err
    assert out.startswith("edited task 3: 'renamed'")
    got = store.get("3")
    assert (got.title, got.queue, got.priority, got.blocked_by) == ("renamed", "review", 7,
                                                                    ("2",))
    detail = store.history("3")[-1]["detail"]
    assert detail.startswith("edited: title 'the task' -> 'renamed'")
    assert "queue 'dev' -> 'review'" in detail and "priority 0 -> 7" in detail
    assert "now blocked by 2" in detail and "no longer blocked by 1" in detail

    code, _, _ = run("task", "edit", "3", "--no-queue", "--agent", "alice")
    assert code == 0 and (store.get("3").queue, store.get("3").assignee) == (None, "alice")


@pytest.mark.parametrize(("args", "message"), [
    (("--queue", "bad queue"), "queue is 'bad queue'; accepted"),
    (("--agent", "../x"), "agent is '../x'; accepted"),
    (("--title", " "), "title is ' '; accepted"),
    (("--recipe", "../r.yaml"), "recipe is '../r.yaml'; accepted"),
    (("--blocked-by", "2"), "cannot block task 1: task 1 would (transitively) block itself"),
    (("--blocked-by", "99"), "blocked_by: no task with id 99"),
    (("--unblock", "2"), "task 1 is not blocked by 2"),
    ((), "nothing to change"),
    (("--queue", "a", "--no-queue"), "give --queue or --no-queue, not both"),
])
def test_edit_refuses_bad_input_and_changes_nothing(run, store, args, message):
    add_json(run, "one", "--queue", "dev")
    add_json(run, "two", "--blocked-by", "1")
    before = (store.get("1"), store.history("1"))
    code, _, err = run("task", "edit", "1", *args)
    assert code == 2 and message in err
    assert (store.get("1"), store.history("1")) == before


def test_edit_refuses_a_working_or_complete_task(run, store):
    add_json(run, "t", "--queue", "dev")
    store.claim("1", "alice", "tok")
    code, _, err = run("task", "edit", "1", "--priority", "3")
    assert code == 2 and "task 1 is working; only idle, failed or cancelled" in err


def test_edit_warns_when_no_agent_can_run_the_task_any_more(run, base):
    (base / "agent-control.json").write_text('[{"agentName": "alice", "agentType": "dev"}]')
    add_json(run, "t", "--queue", "dev")
    code, _, err = run("task", "edit", "1", "--queue", "deev")
    assert code == 0 and "warning: no agent can run task 1: queue deev has no agents" in err


def test_delete_a_task_that_never_ran(run, store):
    add_json(run, "typo")
    add_json(run, "keeps waiting", "--blocked-by", "1")
    code, _, err = run("task", "delete", "1")
    assert code == 2 and "is a blocker of task 2" in err
    assert run("task", "edit", "2", "--unblock", "1")[0] == 0
    code, out, _ = run("task", "delete", "1")
    assert code == 0 and out == "deleted task 1: 'typo'\n"
    assert run("task", "show", "1")[0] == 2
    assert [t.id for t in store.list_tasks()] == ["2"]
    assert store.add_task("next").id == "3"  # ids are never reused


def test_delete_refuses_a_task_that_ran(run, store):
    add_json(run, "t", "--queue", "dev")
    store.claim("1", "alice", "tok")
    store.report(Result(task_id="1", agent="alice", attempt=1, outcome="cancelled",
                        token="tok", summary="stopped"), RetryPolicy(3, 0))
    code, _, err = run("task", "delete", "1")
    assert code == 2 and "task 1 has run, so its history is kept" in err
    assert store.get("1").status == "cancelled" and len(store.history("1")) == 3


def test_prune_removes_old_finished_tasks_and_their_history(run, store, base, backend):
    from freezegun import freeze_time

    with freeze_time("2026-01-01T00:00:00Z"):
        for title in ("done", "cancelled", "done but waited for", "idle"):
            add_json(run, title, "--queue", "dev")
        add_json(run, "waits", "--blocked-by", "3")
        for task_id in ("1", "3"):
            store.claim(task_id, "alice", "tok")
            store.report(Result(task_id=task_id, agent="alice", attempt=1,
                                outcome="succeeded", token="tok", summary="ok"),
                         RetryPolicy(3, 0))
        store.cancel("2")
    with freeze_time("2026-01-05T00:00:00Z"):
        code, out, _ = run("task", "prune", "--older-than", "7")
        assert code == 0 and out.startswith("deleted 0 tasks")
        code, out, _ = run("task", "prune", "--older-than", "3", "--dry-run")
        assert out == ("would delete 2 tasks finished more than 3 days ago: 1-2\n"
                       "kept 3: unfinished tasks wait for them\n")
        assert len(store.list_tasks()) == 5
        code, out, _ = run("task", "prune", "--older-than", "3")
        assert code == 0 and out.startswith("deleted 2 tasks finished more than 3 days ago")
    assert [t.id for t in store.list_tasks()] == ["3", "4", "5"]
    if backend == "postgres":
        assert store.db.query("SELECT count(*) FROM tinyscheduler.history "
                              "WHERE task_id IN (1, 2)") == [(0,)]
        return
    conn = sqlite3.connect(base / "state" / "tasks.db")
    try:
        assert conn.execute("SELECT count(*) FROM history WHERE task_id IN (1, 2)"
                            ).fetchone()[0] == 0
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()


def test_prune_needs_a_number_of_days(run):
    code, _, err = run("task", "prune")
    assert code == 2 and "--older-than" in err
    code, _, err = run("task", "prune", "--older-than", "-1")
    assert code == 2 and "--older-than" in err
