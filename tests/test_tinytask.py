"""The TinyTask source against the in-process fake server (tests/fake_tinytask.py)."""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fake_tinytask import FakeTinyTask

from scheduler.clock import to_iso
from scheduler.errors import InvalidTransition, SourceError
from scheduler.sources.base import (
    KILLED,
    OUTCOME_CANCELLED,
    OUTCOME_FAILED,
    RECLAIMED,
    SUCCEEDED,
    Result,
    RetryPolicy,
)
from scheduler.sources.tinytask import TinyTaskSource

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
POLICY = RetryPolicy(max_attempts=3, backoff_sec=60)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake():
    with FakeTinyTask() as server:
        yield server


@pytest.fixture
def sleeps():
    return []


def make_source(url: str, sleeps: list | None = None, **options) -> TinyTaskSource:
    options.setdefault("timeout", 5.0)
    return TinyTaskSource(url, retry_initial=0.0, retry_max=0.0,
                          sleep=(sleeps.append if sleeps is not None else lambda _: None),
                          clock=lambda: NOW, **options)


@pytest.fixture
def source(fake, sleeps):
    src = make_source(fake.url, sleeps)
    yield src
    src.close()


def result(task_id, outcome=OUTCOME_FAILED, token="tok-1", summary="exit 1", agent="bob"):
    return Result(task_id=str(task_id), agent=agent, attempt=1, outcome=outcome, token=token,
                  summary=summary)


def claimed(fake, source, agent="bob", token="tok-1", **task):
    task_id = fake.add_task("work", **task)
    source.claim(str(task_id), agent, token)
    return task_id


# --- listings -------------------------------------------------------------------------


def test_queue_listing_reads_every_page_and_keeps_only_unassigned(fake, source):
    ids = [fake.add_task(f"t{n}", queue="dev") for n in range(250)]
    fake.add_task("assigned", queue="dev", assigned_to="bob")
    fake.add_task("working", queue="dev", status="working")
    fake.add_task("other queue", queue="ops")
    tasks = source.queue_idle_unassigned("dev")
    assert [t.id for t in tasks] == [str(i) for i in ids]
    pages = [p for m, p in fake.requests if p.startswith("/api/v1/queues/dev/tasks")]
    assert len(pages) == 3
    assert all("status=idle" in p and "limit=100" in p for p in pages)
    assert [p.rsplit("offset=", 1)[1] for p in pages] == ["0", "100", "200"]
    assert source.skipped == 0


def test_assigned_listing_filters_by_agent_and_status(fake, source):
    mine = [fake.add_task(f"m{n}", assigned_to="bob", queue="dev") for n in range(120)]
    fake.add_task("other", assigned_to="alice")
    fake.add_task("done", assigned_to="bob", status="complete")
    tasks = source.assigned_idle("bob")
    assert [t.id for t in tasks] == [str(i) for i in mine]
    assert all(t.assignee == "bob" and t.status == "idle" for t in tasks)
    assert fake.count("GET", "/api/v1/tasks?assigned_to=bob&status=idle") == 2


def test_empty_listing_is_one_request(fake, source):
    assert source.queue_idle_unassigned("dev") == []
    assert fake.requests == [("GET", "/api/v1/queues/dev/tasks?status=idle&limit=100&offset=0")]


def test_blocked_info_and_task_fields(fake, source):
    blocker = fake.add_task("blocker", queue="dev", priority=7, tags=["recipe:fix-bug"])
    fake.add_task("waiting", queue="dev", blocked_by=blocker)
    fake.add_task("free", queue="dev", blocked_by=fake.add_task("done", status="complete"))
    tasks = {t.title: t for t in source.queue_idle_unassigned("dev")}
    assert tasks["waiting"].blocked_by == (str(blocker),)
    assert tasks["waiting"].is_blocked is True
    assert tasks["free"].is_blocked is False and tasks["free"].blocked_by
    first = tasks["blocker"]
    assert (first.id, first.queue, first.priority, first.recipe) == (
        str(blocker), "dev", 7, "fix-bug")
    assert first.assignee is None and first.blocked_by == () and not first.is_blocked
    assert first.created_at is not None and first.created_at.tzinfo is not None


def test_scheduler_tags_are_read(fake, source):
    later = NOW + timedelta(minutes=5)
    fake.add_task("t", assigned_to="bob", tags=[
        "recipe:review", "tinyscheduler:attempts=2", f"tinyscheduler:retry-after={to_iso(later)}",
        "tinyscheduler:parked", "other"])
    fake.add_task("plain", assigned_to="bob", tags=["tinyscheduler:retry-after=garbage"])
    task, plain = source.assigned_idle("bob")
    assert task.recipe == "review"
    assert task.attempts == 2
    assert task.not_before == later
    assert task.parked is True
    assert "other" in task.tags
    assert (plain.recipe, plain.attempts, plain.not_before, plain.parked) == (None, 0, None, False)


@pytest.mark.parametrize(("field", "value", "named"), [
    ("id", -4, "id"), ("id", "12", "id"), ("id", 1.5, "id"),
    ("assigned_to", "../../etc", "assigned_to"), ("queue_name", "dev;rm", "queue_name"),
    ("tags", ["recipe:../../bin/sh"], "recipe"), ("tags", "not-a-list", "tags"),
    ("tags", ["ok", 3], "tags"), ("priority", "high", "priority"), ("title", None, "title"),
    ("created_at", "yesterday", "created_at"), ("blocked_by_task_id", "x", "blocked_by_task_id"),
    ("is_currently_blocked", "yes", "is_currently_blocked"),
    ("title", "fix\x00it", "title"), ("title", "bad \ud800 escape", "title"),
    ("description", "nul\x00here", "description"),
])
def test_bad_task_is_skipped_counted_and_logged(fake, source, caplog, field, value, named):
    # assigned_to is checked through the queue listing (the server filters by assignee)
    by_queue = field == "assigned_to"
    owner = None if by_queue else "bob"
    good = fake.add_task("good", queue="dev", assigned_to=owner)
    bad = fake.add_task("bad", queue="dev", assigned_to=owner)
    if field == "is_currently_blocked":
        fake.set_task(bad, blocked_by_task_id=None)
        original = fake._view
        fake._view = lambda task: {**original(task), field: value} if task["id"] == bad \
            else original(task)
    else:
        fake.set_task(bad, **{field: value})
    with caplog.at_level(logging.WARNING, logger="tinyscheduler.tinytask"):
        tasks = source.queue_idle_unassigned("dev") if by_queue else source.assigned_idle("bob")
    assert [t.id for t in tasks] == [str(good)]
    assert source.skipped == 1
    (record,) = [r for r in caplog.records if r.name == "tinyscheduler.tinytask"]
    assert f"invalid {named}" in record.getMessage()


def test_skipped_resets_per_listing(fake, source):
    bad = fake.add_task("bad", queue="dev", assigned_to=None)
    fake.set_task(bad, id=0)
    source.queue_idle_unassigned("dev")
    assert source.skipped == 1
    source.assigned_idle("bob")
    assert source.skipped == 0


# --- current / claim ------------------------------------------------------------------


def test_current_returns_tasks_and_none_for_deleted(fake, source):
    task_id = fake.add_task("t", queue="dev")
    found = source.current([str(task_id), "9999"])
    assert found["9999"] is None
    assert found[str(task_id)].title == "t"


def test_current_with_unusable_task_raises_rather_than_none(fake, source):
    task_id = fake.add_task("t", queue="dev")
    fake.set_task(task_id, assigned_to="no/slash")
    with pytest.raises(SourceError, match="assigned_to"):
        source.current([str(task_id)])


def test_claim_marks_working_with_lease_tag(fake, source):
    task_id = fake.add_task("t", queue="dev", tags=["recipe:x", "tinyscheduler:lease=old"])
    source.claim(str(task_id), "bob", "tok-9")
    stored = fake.task(task_id)
    assert stored["status"] == "working"
    assert stored["assigned_to"] == "bob"
    assert stored["tags"] == ["recipe:x", "tinyscheduler:lease=tok-9"]


@pytest.mark.parametrize("state", [{"status": "working"}, {"status": "complete"},
                                   {"assigned_to": "alice"}])
def test_claim_of_taken_task_raises_and_changes_nothing(fake, source, state):
    task_id = fake.add_task("t", queue="dev")
    fake.set_task(task_id, **state)
    before = fake.task(task_id)
    with pytest.raises(InvalidTransition):
        source.claim(str(task_id), "bob", "tok")
    assert fake.task(task_id) == before
    assert fake.count("PATCH") == 0


def test_claim_of_missing_task_raises_invalid_transition(source):
    with pytest.raises(InvalidTransition, match="no longer exists"):
        source.claim("4242", "bob", "tok")


def test_claim_rejects_an_id_that_is_not_a_number(fake, source):
    with pytest.raises(SourceError, match="positive integer"):
        source.claim("../1", "bob", "tok")
    assert fake.requests == []


# --- report ---------------------------------------------------------------------------


def test_report_success_completes_and_comments(fake, source):
    task_id = claimed(fake, source, queue="dev")
    applied = source.report(result(task_id, SUCCEEDED, summary="all good"), POLICY)
    assert applied.action == "complete"
    stored = fake.task(task_id)
    assert stored["status"] == "complete"
    assert not any(tag.startswith("tinyscheduler:lease=") for tag in stored["tags"])
    (comment,) = fake.comments_of(task_id)
    assert comment.startswith("all good")
    assert fake.comments[task_id][0]["created_by"] == "tinyscheduler"
    # state first, then the note
    methods = [m for m, p in fake.requests if p.startswith(f"/api/v1/tasks/{task_id}")]
    assert methods[-2:] == ["PATCH", "POST"]


def test_report_is_idempotent_on_redelivery(fake, source):
    task_id = claimed(fake, source, queue="dev")
    first = source.report(result(task_id, SUCCEEDED), POLICY)
    before = fake.task(task_id)
    again = source.report(result(task_id, SUCCEEDED), POLICY)
    assert (first.action, again.action) == ("complete", "ignored")
    assert fake.task(task_id) == before
    assert len(fake.comments_of(task_id)) == 1


def test_redelivery_after_a_crash_before_the_comment_writes_it(fake, source, monkeypatch):
    task_id = claimed(fake, source, queue="dev")
    with monkeypatch.context() as patched:  # die after the PATCH, before the comment
        patched.setattr(source, "_comment", _crash)
        with pytest.raises(RuntimeError):
            source.report(result(task_id, SUCCEEDED, summary="done"), POLICY)
    assert fake.task(task_id)["status"] == "complete"
    assert fake.comments_of(task_id) == []
    applied = source.report(result(task_id, SUCCEEDED, summary="done"), POLICY)
    assert applied.action == "ignored" and "comment" in applied.note
    assert len(fake.comments_of(task_id)) == 1
    assert source.report(result(task_id, SUCCEEDED), POLICY).action == "ignored"
    assert len(fake.comments_of(task_id)) == 1


def _crash(*_args):
    raise RuntimeError("crash")


def test_stale_token_is_ignored(fake, source):
    task_id = claimed(fake, source, token="new")
    before = fake.task(task_id)
    applied = source.report(result(task_id, OUTCOME_FAILED, token="old"), POLICY)
    assert applied.action == "ignored"
    assert fake.task(task_id) == before and fake.comments_of(task_id) == []


def test_report_for_deleted_task_is_ignored(source):
    assert source.report(result(777), POLICY).action == "ignored"


def test_failure_requeues_with_backoff_and_attempts(fake, source):
    task_id = claimed(fake, source, queue="dev")
    applied = source.report(result(task_id, OUTCOME_FAILED, summary="exit 3"), POLICY)
    assert applied.action == "requeued"
    stored = fake.task(task_id)
    assert stored["status"] == "idle"
    retry_at = to_iso(NOW + timedelta(seconds=60))
    assert "tinyscheduler:attempts=1" in stored["tags"]
    assert f"tinyscheduler:retry-after={retry_at}" in stored["tags"]
    assert not any(t.startswith("tinyscheduler:lease=") for t in stored["tags"])
    # the contract cannot null assigned_to: the task stays with its agent
    assert stored["assigned_to"] == "bob"
    (comment,) = fake.comments_of(task_id)
    assert "exit 3" in comment and "attempt 1 of 3" in comment
    (task,) = source.assigned_idle("bob")
    assert (task.attempts, task.not_before, task.parked) == (1, NOW + timedelta(seconds=60), False)

    source.claim(str(task_id), "bob", "tok-2")
    assert source.report(result(task_id, KILLED, token="tok-2"), POLICY).action == "requeued"
    tags = fake.task(task_id)["tags"]
    assert "tinyscheduler:attempts=2" in tags
    assert f"tinyscheduler:retry-after={to_iso(NOW + timedelta(seconds=120))}" in tags
    assert sum(t.startswith("tinyscheduler:retry-after=") for t in tags) == 1


def test_last_attempt_parks_with_reason(fake, source):
    task_id = claimed(fake, source, tags=["tinyscheduler:attempts=2"], queue="dev")
    applied = source.report(result(task_id, RECLAIMED, summary="wrapper vanished"), POLICY)
    assert applied.action == "parked"
    stored = fake.task(task_id)
    assert stored["status"] == "idle"
    assert "tinyscheduler:parked" in stored["tags"]
    assert "tinyscheduler:attempts=3" in stored["tags"]
    (comment,) = fake.comments_of(task_id)
    assert "parked after 3 attempts" in comment and "wrapper vanished" in comment
    (task,) = source.assigned_idle("bob")
    assert task.parked and task.attempts == 3


def test_merge_queue_results_comment_and_park(fake, source):
    """The merge queue: a merged result's comment carries the commit, files and link; a
    conflict under MERGE_CONFLICT=park parks at once; a note is a comment."""
    merged = claimed(fake, source, queue="dev")
    source.note(str(merged), "merging into main: 1 file(s) changed: app.py")
    summary = ("succeeded: merged into main as 3f2a9c1d0b7e; 1 file(s) changed: app.py; "
               "check 2.0 s; https://git.example/c/3f2a9c1d0b7e\nsucceeded: exit code 0")
    source.report(result(merged, SUCCEEDED, summary=summary), POLICY)
    notes = fake.comments_of(merged)
    assert notes[0] == "merging into main: 1 file(s) changed: app.py"
    assert "merged into main as 3f2a9c1d0b7e" in notes[1] and "https://git.example/c/" in notes[1]
    conflict = claimed(fake, source, queue="dev", token="tok-2")
    parked = Result(task_id=str(conflict), agent="bob", attempt=1, outcome="conflict",
                    token="tok-2", summary="conflict: merge conflict with main in app.py",
                    detail={"park": True, "reason": "merge conflict with main in app.py"})
    assert source.report(parked, POLICY).action == "parked"
    assert "tinyscheduler:parked" in fake.task(conflict)["tags"]
    assert "parked for a person after a conflict" in fake.comments_of(conflict)[0]


def test_cancel_parks_without_counting_an_attempt(fake, source):
    task_id = claimed(fake, source, queue="dev")
    applied = source.report(result(task_id, OUTCOME_CANCELLED, summary="by operator"), POLICY)
    assert applied.action == "cancelled"
    stored = fake.task(task_id)
    assert stored["status"] == "idle" and "tinyscheduler:parked" in stored["tags"]
    assert not any(t.startswith("tinyscheduler:attempts=") for t in stored["tags"])
    (comment,) = fake.comments_of(task_id)
    assert comment.startswith("cancelled: by operator")


# --- errors and retries ---------------------------------------------------------------


def test_server_error_then_success_is_retried(fake, source, sleeps):
    fake.add_task("t", queue="dev")
    fake.fail_next(2, status=500)
    assert len(source.queue_idle_unassigned("dev")) == 1
    assert fake.count("GET") == 3
    assert len(sleeps) == 2


def test_default_backoff_grows_with_jitter_and_is_capped(fake):
    waits: list[float] = []
    src = TinyTaskSource(fake.url, retry_attempts=6, sleep=waits.append)
    fake.fail_next(100, status=502)
    try:
        with pytest.raises(SourceError, match="after 6 attempts: HTTP 502"):
            src.assigned_idle("bob")
    finally:
        src.close()
    assert len(waits) == 5
    for n, wait in enumerate(waits):
        assert min(2.0, 0.2 * 2 ** n) <= wait <= min(2.0, 0.2 * 2 ** n + 0.2)
    assert sum(waits) <= 2.0 * 5


def test_persistent_server_error_names_endpoint_method_path_status(fake, source):
    fake.fail_next(100, status=503)
    with pytest.raises(SourceError) as caught:
        source.queue_idle_unassigned("dev")
    message = str(caught.value)
    assert message == (f"TinyTask GET {fake.url}/api/v1/queues/dev/tasks?status=idle&limit=100"
                       f"&offset=0 failed after 4 attempts: HTTP 503 (Injected failure 503)")
    assert fake.count("GET") == 4


def test_429_is_retried(fake, source):
    fake.add_task("t", assigned_to="bob")
    fake.fail_next(1, status=429)
    assert len(source.assigned_idle("bob")) == 1
    assert fake.count("GET") == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_other_client_errors_are_not_retried(fake, source, status):
    fake.fail_next(100, status=status)
    with pytest.raises(SourceError, match=f"HTTP {status}"):
        source.assigned_idle("bob")
    assert fake.count("GET") == 1


def test_timeout_becomes_source_error(fake, sleeps):
    src = make_source(fake.url, sleeps, timeout=0.2, retry_attempts=2)
    fake.delay_next(2, 5.0)
    try:
        with pytest.raises(SourceError, match=r"failed after 2 attempts: ReadTimeout"):
            src.assigned_idle("bob")
    finally:
        src.close()


def test_connection_refused_becomes_source_error(sleeps):
    with FakeTinyTask() as server:
        url = server.url
    src = make_source(url, sleeps, retry_attempts=3)
    try:
        with pytest.raises(SourceError, match=r"GET .* failed after 3 attempts: ConnectError"):
            src.queue_idle_unassigned("dev")
    finally:
        src.close()


def test_garbage_json_is_a_source_error_not_an_empty_list(fake, source):
    fake.garbage_next(1)
    with pytest.raises(SourceError, match="not JSON"):
        source.queue_idle_unassigned("dev")


def test_body_of_the_wrong_shape_is_a_source_error(fake, source, monkeypatch):
    original = fake._select
    monkeypatch.setattr(fake, "_select", lambda *a: {"tasks": original(*a)})
    with pytest.raises(SourceError, match="expected a TaskList"):
        source.assigned_idle("bob")


def test_a_server_ignoring_offset_is_an_error_not_a_loop(fake, source, monkeypatch):
    for n in range(100):
        fake.add_task(f"t{n}", queue="dev")
    original = fake._select
    monkeypatch.setattr(fake, "_select", lambda queue, query: original(
        queue, {**query, "offset": "0"}))
    with pytest.raises(SourceError, match="pagination"):
        source.queue_idle_unassigned("dev")
    assert fake.count("GET") == 2


def test_a_404_that_is_not_tinytask_s_is_not_a_deleted_task(fake, source, monkeypatch):
    task_id = fake.add_task("t")
    monkeypatch.setattr(fake, "_route", lambda *a: (404, "<html>Not Found</html>"))
    with pytest.raises(SourceError, match="HTTP 404"):
        source.current([str(task_id)])


def test_token_is_sent_and_never_in_errors(sleeps):
    secret = "s3cr3t-token-value"
    with FakeTinyTask(require_token=secret) as server:
        server.add_task("t", assigned_to="bob")
        good = make_source(server.url, sleeps, token=secret)
        bad = make_source(server.url, sleeps, token="wrong-" + secret)
        anonymous = make_source(server.url, sleeps)
        try:
            assert len(good.assigned_idle("bob")) == 1
            assert server.last_headers["Authorization"] == f"Bearer {secret}"
            assert server.last_headers["User-Agent"].startswith("tinyscheduler/")
            assert secret not in repr(good)
            for src in (bad, anonymous):
                with pytest.raises(SourceError, match="HTTP 401") as caught:
                    src.assigned_idle("bob")
                assert secret not in str(caught.value)
            assert "Authorization" not in server.last_headers
            server.fail_next(10, status=500)
            with pytest.raises(SourceError) as caught:
                good.claim("1", "bob", "tok")
            assert secret not in str(caught.value)
        finally:
            for src in (good, bad, anonymous):
                src.close()


def test_debug_log_has_no_token(fake, caplog, sleeps):
    secret = "another-secret"
    src = make_source(fake.url, sleeps, token=secret)
    try:
        with caplog.at_level(logging.DEBUG):
            src.assigned_idle("bob")
            fake.fail_next(10)
            with pytest.raises(SourceError):
                src.assigned_idle("bob")
    finally:
        src.close()
    assert any("GET /tasks -> 200" in r.getMessage() for r in caplog.records)
    assert all(secret not in r.getMessage() for r in caplog.records)


# --- health, lifecycle, imports ---------------------------------------------------------


def test_health(fake, source):
    health = source.health()
    assert health.ok is True and fake.url in health.detail
    assert fake.requests == [("GET", "/health"), ("GET", "/api/v1/queues")]
    fake.fail_next(10, status=500)
    health = source.health()
    assert health.ok is False and "GET" in health.detail and "HTTP 500" in health.detail


def test_health_accepts_a_plain_text_health_body(fake, source):
    fake.garbage_next(1)
    assert source.health().ok is True


def test_health_reports_a_bad_token(sleeps):
    with FakeTinyTask(require_token="right") as server:
        src = make_source(server.url, sleeps, token="wrong")
        try:
            health = src.health()
        finally:
            src.close()
    assert health.ok is False and "HTTP 401" in health.detail and "wrong" not in health.detail


def test_health_without_a_health_route_uses_the_api(sleeps):
    with FakeTinyTask(health=False) as server:
        src = make_source(server.url, sleeps)
        try:
            assert src.health().ok is True
            assert server.requests == [("GET", "/health"), ("GET", "/api/v1/queues")]
        finally:
            src.close()


def test_client_is_built_once_and_lazily(fake, source, monkeypatch):
    import httpx

    built: list[httpx.Client] = []

    class Counted(httpx.Client):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(httpx, "Client", Counted)
    assert built == []  # nothing built before the source is used
    source.assigned_idle("a")
    source.queue_idle_unassigned("q")
    assert len(built) == 1  # one client for every call of this process
    source.close()
    source.close()  # closing twice is harmless
    assert built[0].is_closed
    source.assigned_idle("a")  # used again after close: a fresh client
    assert len(built) == 2 and not built[1].is_closed


def test_from_settings_uses_endpoint_and_token():
    class Settings:
        mcp_endpoint = "http://tinytask:3000"
        mcp_token = "t0k"

    src = TinyTaskSource.from_settings(Settings())
    assert src.endpoint == "http://tinytask:3000"
    assert "t0k" not in repr(src)
    src.close()


def test_endpoint_must_be_http():
    with pytest.raises(SourceError, match="http"):
        TinyTaskSource("tinytask:3000")


def test_importing_the_module_does_not_import_httpx():
    code = ("import scheduler.sources.tinytask, sys; "
            "print('httpx' in sys.modules, 'tenacity' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.split() == ["False", "False"]


def test_not_started_requeues_without_counting_an_attempt(fake, source):
    task_id = claimed(fake, source)
    applied = source.report(result(task_id, outcome="not_started", summary="reclaimed"),
                            RetryPolicy(max_attempts=1, backoff_sec=60))
    task = source.current([str(task_id)])[str(task_id)]
    assert applied.action == "requeued"
    assert (task.status, task.attempts, task.not_before, task.parked) == ("idle", 0, None, False)


def test_report_for_a_task_reassigned_meanwhile_is_ignored(fake, source):
    task_id = claimed(fake, source)
    fake.set_task(task_id, assigned_to="carol")
    applied = source.report(result(task_id, outcome="cancelled"), RetryPolicy(3, 60))
    assert applied.action == "ignored"
    assert fake.tasks[task_id]["status"] == "working"
    assert "tinyscheduler:parked" not in fake.tasks[task_id]["tags"]


def test_current_of_many_tasks_uses_one_listing_plus_a_get_per_missing(fake, source):
    running = [claimed(fake, source, token=f"tok-{i}") for i in range(5)]
    done = running.pop()
    fake.set_task(done, status="complete")
    gone = 9999
    before = len(fake.requests)
    states = source.current([str(t) for t in (*running, done, gone)])
    assert {k: (v.status if v else None) for k, v in states.items()} == {
        **{str(t): "working" for t in running}, str(done): "complete", str(gone): None}
    paths = [path for _, path in fake.requests[before:]]
    assert sum(p.startswith("/api/v1/tasks?") for p in paths) == 1  # one page of working
    assert sorted(p for p in paths if not p.startswith("/api/v1/tasks?")) == [
        f"/api/v1/tasks/{done}", f"/api/v1/tasks/{gone}"]
