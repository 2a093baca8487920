"""The TinyTask source against a server that answers in the wrong shape, changes under it,
or says it is unwell: every such answer is a clear SourceError (or a skipped task), never a
crash, a loop or a result taken for something it is not. Runs against the in-process fake
server (tests/fake_tinytask.py), with ``answer_next`` scripting the odd answers."""

from __future__ import annotations

import logging
import time

import pytest
from fake_tinytask import FakeTinyTask
from test_tinytask import POLICY, make_source, result

from scheduler.errors import InvalidTransition, SourceError, SourceUnavailable
from scheduler.sources.base import RATE_LIMITED, SUCCEEDED, Result
from scheduler.sources.tinytask import TinyTaskSource


@pytest.fixture
def fake():
    with FakeTinyTask() as server:
        yield server


@pytest.fixture
def source(fake):
    src = make_source(fake.url)
    yield src
    src.close()


def task_path(task_id: int, *rest: str) -> str:
    return "/".join([f"/api/v1/tasks/{task_id}", *rest])


# --- task objects with odd fields --------------------------------------------------------


def test_numeric_ids_sent_as_whole_floats_are_accepted_and_booleans_refused(fake, source):
    as_float, as_bool = fake.add_task("float id", assigned_to="bob"), \
        fake.add_task("bool id", assigned_to="bob")
    fake.set_task(as_float, id=float(as_float))
    fake.set_task(as_bool, id=True)
    tasks = source.assigned_idle("bob")
    assert [t.id for t in tasks] == [str(as_float)]
    assert source.skipped == 1


def test_null_tags_and_times_are_empty_not_errors(fake, source):
    task_id = fake.add_task("plain", assigned_to="bob")
    fake.set_task(task_id, tags=None, created_at=None)
    [task] = source.assigned_idle("bob")
    assert (task.tags, task.created_at, task.attempts, task.recipe) == ((), None, 0, None)


def test_an_infinite_priority_is_skipped_with_its_reason(fake, source, caplog):
    good, bad = fake.add_task("good", assigned_to="bob"), fake.add_task("bad", assigned_to="bob")
    fake.set_task(bad, priority=float("inf"))  # the fake's JSON says Infinity
    with caplog.at_level(logging.WARNING, logger="tinyscheduler.tinytask"):
        tasks = source.assigned_idle("bob")
    assert [t.id for t in tasks] == [str(good)]
    assert "invalid priority inf (expected a finite number)" in caplog.text


def test_a_long_bad_value_is_shortened_in_the_message(fake, source):
    task_id = fake.add_task("t")
    fake.set_task(task_id, title="x" * 200 + "\x00")
    with pytest.raises(SourceError) as caught:
        source.current([str(task_id)])
    message = str(caught.value)
    assert "invalid title 'xxxx" in message and "..." in message
    assert len(message) < 300


def test_an_unknown_status_makes_the_task_unusable_not_deleted(fake, source):
    task_id = fake.add_task("t")
    fake.set_task(task_id, status="archived")
    with pytest.raises(SourceError, match="invalid status 'archived'"):
        source.current([str(task_id)])


def test_a_get_answering_another_task_is_refused(fake, source):
    first, second = fake.add_task("first"), fake.add_task("second")
    fake.answer_next("GET", task_path(first), 200, fake.task(second))
    with pytest.raises(SourceError, match=f"not task {first}"):
        source.current([str(first)])


# --- answers of the wrong kind ------------------------------------------------------------


def test_a_redirect_is_not_followed_and_is_an_error(fake, source):
    fake.answer_next("GET", "/api/v1/tasks", 302, {"location": "http://elsewhere/"})
    with pytest.raises(SourceError, match="unexpected HTTP 302"):
        source.assigned_idle("bob")
    assert fake.count("GET") == 1  # nothing followed


def test_a_client_error_with_a_body_that_is_not_json_names_the_status(fake, source):
    fake.answer_next("GET", "/api/v1/tasks", 400, b"<html>Bad Request</html>")
    with pytest.raises(SourceError) as caught:
        source.assigned_idle("bob")
    assert str(caught.value).endswith("failed: HTTP 400")


def test_a_call_with_no_time_left_is_not_even_sent(fake, source):
    source.set_deadline(time.monotonic() - 1)
    with pytest.raises(SourceUnavailable, match="no time left within the deadline of this pass"):
        source.assigned_idle("bob")
    assert fake.requests == []


def test_retry_attempts_and_page_size_must_be_positive():
    for options in ({"retry_attempts": 0}, {"page_size": 0}):
        with pytest.raises(ValueError, match="must be >= 1"):
            TinyTaskSource("http://127.0.0.1:9", **options)


# --- claims -------------------------------------------------------------------------------


def test_a_claim_of_a_task_without_tags_adds_the_lease_tag(fake, source):
    task_id = fake.add_task("t")
    fake.set_task(task_id, tags=None)
    source.claim(str(task_id), "bob", "tok-1")
    assert fake.task(task_id)["tags"] == ["tinyscheduler:lease=tok-1"]


def test_a_claim_of_a_task_whose_tags_are_garbage_changes_nothing(fake, source):
    task_id = fake.add_task("t")
    fake.set_task(task_id, tags="recipe:x")
    with pytest.raises(SourceError, match="tags is not an array of strings"):
        source.claim(str(task_id), "bob", "tok-1")
    assert fake.task(task_id)["status"] == "idle"
    assert fake.count("PATCH") == 0


def test_a_claim_raced_by_another_scheduler_is_refused(fake, source, caplog, monkeypatch):
    """TinyTask has no compare-and-set: another scheduler claims the same task between our
    PATCH and the read-back. We find its lease tag and refuse to run the task."""
    task_id = fake.add_task("t")
    original = fake._patch

    def patch_then_another_claims(number, body):
        answer = original(number, body)
        fake.tasks[number]["tags"] = [*fake.tasks[number]["tags"], "tinyscheduler:lease=other"]
        return answer

    monkeypatch.setattr(fake, "_patch", patch_then_another_claims)
    with caplog.at_level(logging.ERROR, logger="tinyscheduler.tinytask"), \
            pytest.raises(InvalidTransition, match="claimed by another scheduler at the same"):
        source.claim(str(task_id), "bob", "tok-1")
    assert "supports one scheduler per server" in caplog.text


# --- reports ------------------------------------------------------------------------------


def claimed(fake, source, token: str = "tok-1", **task) -> int:
    task_id = fake.add_task("work", **task)
    source.claim(str(task_id), "bob", token)
    return task_id


def test_a_rate_limited_attempt_requeues_without_counting_an_attempt(fake, source):
    task_id = claimed(fake, source)
    applied = source.report(result(task_id, outcome=RATE_LIMITED), POLICY)
    assert applied.action == "requeued"
    task = fake.task(task_id)
    assert task["status"] == "idle"
    assert not any(tag.startswith(("tinyscheduler:attempts=", "tinyscheduler:retry-after="))
                   for tag in task["tags"])
    assert "requeued, agent rate-limited" in fake.comments_of(task_id)[0]


def test_costs_add_up_in_a_tag_and_malformed_ones_are_ignored(fake, source):
    task_id = claimed(fake, source, tags=["tinyscheduler:cost=lots", "tinyscheduler:cost=-2",
                                          "tinyscheduler:cost=1.5"])
    spent = Result(task_id=str(task_id), agent="bob", attempt=1, outcome="failed",
                   token="tok-1", summary="exit 1", duration_sec=2.0,
                   detail={"usage": {"cost_usd": 0.25}})
    assert source.report(spent, POLICY).action == "requeued"
    tags = fake.task(task_id)["tags"]
    assert [t for t in tags if t.startswith("tinyscheduler:cost=")] == ["tinyscheduler:cost=1.7500"]
    assert "tinyscheduler:runtime=2.0" in tags


def test_a_task_deleted_between_read_and_update_is_an_error(fake, source):
    task_id = claimed(fake, source)
    fake.answer_next("PATCH", task_path(task_id), 404, {"error": "Task not found"})
    with pytest.raises(SourceError, match="disappeared while being updated"):
        source.report(result(task_id, outcome=SUCCEEDED), POLICY)
    assert fake.task(task_id)["status"] == "working"
    assert fake.comments_of(task_id) == []


def test_an_update_answered_with_a_list_is_an_error(fake, source):
    task_id = claimed(fake, source)
    fake.answer_next("PATCH", task_path(task_id), 200, [])
    with pytest.raises(SourceError, match="returned a list, expected a ParsedTask object"):
        source.report(result(task_id, outcome=SUCCEEDED), POLICY)


def test_a_comment_answered_with_a_list_is_an_error(fake, source):
    task_id = claimed(fake, source)
    fake.answer_next("POST", task_path(task_id, "comments"), 201, [])
    with pytest.raises(SourceError, match="expected a CommentData object"):
        source.report(result(task_id, outcome=SUCCEEDED), POLICY)


def test_a_comment_that_never_gets_through_fails_the_report_and_redelivery_writes_it(fake):
    """The state change is applied, then every POST of the comment is answered 503: the
    report fails (so the result stays in the outbox); delivering it again finds the
    applied tag and writes the missing comment once."""
    source = make_source(fake.url, retry_attempts=2)
    try:
        task_id = claimed(fake, source)
        for _ in range(2):
            fake.answer_next("POST", task_path(task_id, "comments"), 503, {"error": "busy"})
        done = result(task_id, outcome=SUCCEEDED, summary="all done")
        with pytest.raises(SourceUnavailable, match="HTTP 503"):
            source.report(done, POLICY)
        assert fake.task(task_id)["status"] == "complete"
        assert fake.comments_of(task_id) == []
        again = source.report(done, POLICY)
        assert again.action == "ignored" and "missing comment was written" in again.note
        [comment] = fake.comments_of(task_id)
        assert "all done" in comment and comment.endswith("[tinyscheduler lease tok-1]")
    finally:
        source.close()


def test_one_host_has_no_dead_hosts_to_reclaim(source):
    assert source.reclaim_dead_hosts(POLICY) == []


# --- health -------------------------------------------------------------------------------


def test_health_says_what_the_server_says_when_it_is_not_ok(fake, source):
    fake.answer_next("GET", "/health", 200, {"status": "degraded"})
    health = source.health()
    assert not health.ok and "/health says status 'degraded'" in health.detail


def test_health_refuses_a_queue_list_that_is_no_list(fake, source):
    fake.answer_next("GET", "/api/v1/queues", 200, {"queues": []})
    health = source.health()
    assert not health.ok and "returned dict, expected a JSON array" in health.detail
