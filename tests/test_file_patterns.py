"""Declared files: pattern checks, the overlap rule, storage, and the planner keeping
overlapping tasks apart."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_reconciler import make_scheduler as make_scheduler  # noqa: F401 - the fixture
from test_reconciler import wait_for

from scheduler.config.registry import Agent, Registry
from scheduler.errors import InputError
from scheduler.file_patterns import BadPattern, check, check_all, clash, overlap
from scheduler.reconcile.planner import plan
from scheduler.sources.base import Task
from scheduler.sources.local import LocalStore
from scheduler.sources.tinytask import to_task

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(("first", "second", "expected"), [
    ("src/auth/**", "src/auth/login.py", True),
    ("src/auth/**", "src/billing/*.py", False),
    ("*.md", "README.md", True),
    ("docs/*.md", "docs/api/x.md", False),
    ("src", "src/a.py", True),
    ("src/*_test.py", "src/auth_*.py", True),
    ("src/*.py", "src/*.js", False),
    ("**/x.py", "a/b/x.py", True),
    ("a/**/b", "a/b", True),
    ("a/*/c", "a/b/d/c", False),
    ("README.md", "README.md", True),
    ("README.md", "README.rst", False),
    ("src/[ab].py", "src/a.py", True),
    ("src/[ab].py", "src/c.py", False),
    ("lib/**", "**", True),
])
def test_the_overlap_rule_as_documented(first, second, expected):
    assert overlap(first, second) is expected
    assert overlap(second, first) is expected


SEGMENT = st.text(alphabet="ab.*?", min_size=1, max_size=4).filter(
    lambda s: "**" not in s)
PATTERN = st.lists(st.one_of(SEGMENT, st.just("**")), min_size=1, max_size=4).map("/".join)
PATH = st.lists(st.text(alphabet="ab.", min_size=1, max_size=4), min_size=1,
                max_size=5).map("/".join)


def _matches(pattern: str, path: str) -> bool:
    """A reference matcher (slow, obviously right): segment by segment, ** any run."""
    import fnmatch

    def go(p: list[str], s: list[str]) -> bool:
        if not p:
            return True  # a pattern covers what lies below what it names
        if p[0] == "**":
            return any(go(p[1:], s[i:]) for i in range(len(s) + 1))
        return bool(s) and fnmatch.fnmatchcase(s[0], p[0]) and go(p[1:], s[1:])

    return go(pattern.split("/"), path.split("/"))


@given(PATTERN, PATTERN, PATH)
def test_a_path_matching_both_patterns_always_means_overlap(first, second, path):
    if _matches(first, path) and _matches(second, path):
        assert overlap(first, second), (first, second, path)


@pytest.mark.parametrize(("pattern", "named"), [
    ("", "is empty"), ("/etc/passwd", "is absolute"), ("../x", "leaves the repository"),
    ("src/**x/y", "'**' must be a whole segment"), ("src/[ab.py", "unclosed '['"),
    ("a\x00b", "control characters"), ("x" * 300, "too long"),
])
def test_a_bad_pattern_is_named(pattern, named):
    with pytest.raises(BadPattern) as caught:
        check(pattern)
    assert named in str(caught.value)


def test_patterns_are_normalised_and_deduplicated():
    assert check_all(["./src/", "src", "docs//a.md"]) == ("src", "docs/a.md")
    assert clash(["docs/*"], ["src/**", "docs/a.md"]).theirs == "docs/a.md"


def test_the_local_store_keeps_declared_files(tmp_path):
    with LocalStore(tmp_path / "tasks.db") as store:
        added = store.add_task("auth work", queue="dev", files=["src/auth/**", "README.md"])
        assert store.get(added.id).files == ("src/auth/**", "README.md")
        assert store.queue_idle_unassigned("dev")[0].files == ("src/auth/**", "README.md")
        with pytest.raises(InputError, match=r"file pattern '/etc' is absolute"):
            store.add_task("bad", files=["/etc"])
        with pytest.raises(InputError, match=r"item 1: file pattern '\.\./up' leaves"):
            store.import_tasks([{"title": "ok", "files": ["a/**"]},
                                {"title": "no", "files": ["../up"]}])
        assert len(store.list_tasks()) == 1, "an import is all or nothing"
        store.import_tasks([{"title": "ok", "files": ["a/**"]}])
        assert store.list_tasks()[-1].files == ("a/**",)


def test_tinytask_files_tags_are_declared_files():
    raw = {"id": 5, "title": "t", "status": "idle", "priority": 0,
           "tags": ["files:src/auth/**", "files:../bad", "other"],
           "created_at": "2026-12-01T00:00:00Z"}
    assert to_task(raw).files == ("src/auth/**", "**")


def _task(task_id: str, files: tuple[str, ...], assignee: str | None = None) -> Task:
    return Task(task_id, f"task {task_id}", queue="dev", assignee=assignee, files=files,
                created_at=NOW - timedelta(minutes=100 - int(task_id)))


REGISTRY = Registry((Agent("vaela", "dev", 5), Agent("damien", "dev", 5)), legacy=False)


def test_overlapping_tasks_never_start_together():
    tasks = [_task("1", ("src/auth/**",)), _task("2", ("src/auth/login.py",)),
             _task("3", ("docs/**",)), _task("4", ())]
    the_plan = plan([], tasks, REGISTRY, NOW)
    assert sorted(s.task.id for s in the_plan.spawns) == ["1", "3", "4"]
    assert [(s.task_id, s.kind, s.reason) for s in the_plan.skips] == [
        ("2", "overlap", "overlaps files of task 1 (src/auth/**)")]


def test_a_running_task_holds_its_files():
    the_plan = plan([], [_task("2", ("README.md",)), _task("3", ("src/x.py",))], REGISTRY,
                    NOW, occupied={"12": ("*.md",)})
    assert [s.task.id for s in the_plan.spawns] == ["3"]
    assert the_plan.skips[0].reason == "overlaps files of task 12 (*.md)"


def test_a_task_without_declarations_is_not_held_back():
    the_plan = plan([], [_task("2", ())], REGISTRY, NOW, occupied={"12": ("**",)})
    assert [s.task.id for s in the_plan.spawns] == ["2"]


def test_the_dry_run_json_shows_overlap_skips(tmp_path):
    from scheduler.reconcile.plan_view import plan_to_json

    the_plan = plan([], [_task("1", ("a",)), _task("2", ("a/b",))], REGISTRY, NOW)
    data = json.loads(json.dumps(plan_to_json(the_plan), default=str))
    assert any(s.get("kind") == "overlap" for s in data["skips"])


@pytest.mark.processes
def test_overlapping_tasks_never_run_at_the_same_time(make_scheduler):
    s = make_scheduler({"vaela": "dev", "damien": "dev"}, {"vaela": 2, "damien": 2})
    first = s.add("auth hold", "--queue", "dev", "--files", "src/auth/**")
    second = s.add("login", "--queue", "dev", "--files", "src/auth/login.py")
    docs = s.add("docs hold", "--queue", "dev", "--files", "docs/**")
    s.run_once()
    wait_for(lambda: s.started(first) and s.started(docs), what="the two apart tasks")
    dry = s.cli("run", "--once", "--dry-run")
    assert f"overlaps files of task {first} (src/auth/**)" in dry.stdout
    assert not s.started(second)
    s.release(first)
    s.pass_until(lambda: s.statuses()[second] == "complete", what="the overlapping task")
    s.release(docs)
    wait_for(lambda: not s.leases(), what="all runs to finish")
    events = {(e.kind, e.task): e.at for e in s.events()}
    assert events[("start", second)] > events[("end", first)], "never at the same time"
    assert events[("start", docs)] < events[("end", first)], "apart tasks do run together"
