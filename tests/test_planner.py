"""Table-driven tests of the pure planner: every ordering, balancing and skipping rule."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from scheduler.config.registry import Agent, Registry
from scheduler.reconcile.planner import LeaseView, Pauses, blocking_counts, plan
from scheduler.sources.base import Task

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def task(tid, *, queue="dev", assignee=None, priority=0, age=0, blocked_by=(), blocked=None,
         not_before=None, parked=False):
    return Task(
        id=str(tid), title=f"Task {tid}", queue=queue, assignee=assignee, priority=priority,
        created_at=NOW - timedelta(minutes=age), blocked_by=tuple(str(b) for b in blocked_by),
        is_blocked=bool(blocked_by) if blocked is None else blocked, not_before=not_before,
        parked=parked,
    )


def registry(*agents, legacy=False):
    return Registry(tuple(Agent(name, queue, limit) for name, queue, limit in agents), legacy)


def leases(*pairs):
    return [LeaseView(f"running-{i}", agent) for i, agent in enumerate(pairs)]


def spawned(result):
    return [(s.task.id, s.agent) for s in result.spawns]


def test_readme_balancing_example():
    """Queue dev: vaela at 1/3, damien at 0/2, 5 unassigned tasks -> 2 each, one queued."""
    reg = registry(("vaela", "dev", 3), ("damien", "dev", 2))
    tasks = [task(i, age=10 - i) for i in range(1, 6)]
    result = plan(leases("vaela"), tasks, reg, NOW)
    counts = {name: sum(1 for _, a in spawned(result) if a == name) for name in ("vaela", "damien")}
    assert counts == {"vaela": 2, "damien": 2}
    assert [s.task_id for s in result.skips if s.kind == "no-slot"] == ["5"]
    loads = {a.name: (a.used, a.limit, a.planned) for a in result.agents}
    assert loads == {"vaela": (1, 3, 2), "damien": (0, 2, 2)}


def test_readme_seed_example_blocker_first():
    """Task 1 (priority 0) blocks 2 and 3's chain; it spawns before Task 3 (priority 5);
    Task 2 (blocked) is skipped."""
    reg = registry(("worker", "dev", 1))
    tasks = [
        task(1, priority=0, age=3),
        task(2, priority=1, age=2, blocked_by=[1]),
        task(3, priority=5, age=1),
        task(4, priority=0, age=0, blocked_by=[2]),
    ]
    result = plan([], tasks, reg, NOW)
    assert spawned(result) == [("1", "worker")]
    assert ("2", "blocked") in [(s.task_id, s.kind) for s in result.skips]
    assert [s.task_id for s in result.skips if s.kind == "no-slot"] == ["3"]


@pytest.mark.parametrize(
    ("tasks", "expected_order"),
    [
        # more tasks blocked (transitively) first
        ([task(1), task(2), task(3, blocked_by=[2]), task(4, blocked_by=[3])], ["2", "1"]),
        # then priority (higher first)
        ([task(1, priority=1), task(2, priority=9), task(3, priority=5)], ["2", "3", "1"]),
        # then age (older first)
        ([task(1, age=1), task(2, age=5), task(3, age=3)], ["2", "3", "1"]),
        # then id, numerically
        ([task(10), task(9), task(100)], ["9", "10", "100"]),
    ],
)
def test_order(tasks, expected_order):
    reg = registry(("w", "dev", 10))
    assert [s.task.id for s in plan([], tasks, reg, NOW).spawns] == expected_order


def test_blocking_counts_transitive_and_cycle_safe():
    tasks = [task(1), task(2, blocked_by=[1]), task(3, blocked_by=[2]), task(4, blocked_by=[1]),
             task(5, blocked_by=[6]), task(6, blocked_by=[5])]
    counts = blocking_counts(tasks)
    assert counts["1"] == 3 and counts["2"] == 1 and counts["3"] == 0
    assert counts["5"] == 1 and counts["6"] == 1


def test_assigned_tasks_first_and_only_on_their_agent():
    reg = registry(("a", "dev", 1), ("b", "dev", 1))
    tasks = [task(1, priority=9), task(2, assignee="b", priority=0)]
    result = plan([], tasks, reg, NOW)
    assert spawned(result) == [("2", "b"), ("1", "a")]


def test_assigned_to_unknown_agent_is_skipped():
    reg = registry(("a", "dev", 1))
    result = plan([], [task(1, assignee="ghost")], reg, NOW)
    assert result.spawns == () and result.skips[0].kind == "unknown-agent"


@pytest.mark.parametrize(
    ("the_task", "kind"),
    [
        (task(1, not_before=NOW + timedelta(seconds=1)), "backoff"),
        (task(1, parked=True), "parked"),
        (task(1, blocked_by=[7]), "blocked"),
    ],
)
def test_skips_with_reason(the_task, kind):
    result = plan([], [the_task], registry(("a", "dev", 5)), NOW)
    assert result.spawns == ()
    assert result.skips[0].kind == kind and result.skips[0].reason


def test_backoff_ends_exactly_at_not_before():
    result = plan([], [task(1, not_before=NOW)], registry(("a", "dev", 5)), NOW)
    assert spawned(result) == [("1", "a")]


def test_leased_task_is_never_planned_again():
    reg = registry(("a", "dev", 5))
    result = plan([LeaseView("1", "a")], [task(1), task(2)], reg, NOW)
    assert spawned(result) == [("2", "a")]
    assert result.skips[0].kind == "leased"


def test_reclaimed_lease_frees_its_slot_but_task_is_not_replanned():
    reg = registry(("a", "dev", 1))
    views = [LeaseView("1", "a", reclaim_reason="pid-dead")]
    result = plan(views, [task(1), task(2)], reg, NOW)
    assert [(r.task_id, r.reason) for r in result.reclaims] == [("1", "pid-dead")]
    assert spawned(result) == [("2", "a")]


def test_disable_blocking_keeps_source_order_without_filtering():
    reg = registry(("a", "dev", 10))
    tasks = [task(3, priority=0), task(1, blocked_by=[3]), task(2, priority=9)]
    result = plan([], tasks, reg, NOW, disable_blocking=True)
    assert [s.task.id for s in result.spawns] == ["3", "1", "2"]


def test_legacy_mode_runs_assigned_tasks_only():
    reg = registry(("a", None, 2), legacy=True)
    result = plan([], [task(1, assignee="a"), task(2)], reg, NOW)
    assert spawned(result) == [("1", "a")]


def test_limit_zero_never_runs():
    result = plan([], [task(1, assignee="a")], registry(("a", "dev", 0)), NOW)
    assert result.spawns == () and result.skips[0].kind == "no-slot"


def test_more_leases_than_limit_gives_no_negative_slots():
    reg = registry(("a", "dev", 1))
    result = plan(leases("a", "a"), [task(1)], reg, NOW)
    assert result.spawns == ()


@pytest.mark.parametrize(
    ("pauses", "expected"),
    [
        (Pauses(everything=True), []),
        (Pauses(agents=frozenset({"a"})), [("2", "b"), ("1", "b")]),
        (Pauses(queues=frozenset({"dev"})), [("2", "b")]),
    ],
)
def test_pauses(pauses, expected):
    reg = registry(("a", "dev", 2), ("b", "dev", 2))
    tasks = [task(1), task(2, assignee="b", queue="dev")]
    assert spawned(plan([], tasks, reg, NOW, pauses=pauses)) == expected


def test_queue_ties_broken_by_name_and_multi_queue():
    reg = registry(("zed", "ops", 1), ("amy", "ops", 1), ("bob", "dev", 1))
    tasks = [task(1, queue="ops"), task(2, queue="ops", age=-1), task(3, queue="dev"),
             task(4, queue="nowhere")]
    result = plan([], tasks, reg, NOW)
    assert sorted(spawned(result)) == [("1", "amy"), ("2", "zed"), ("3", "bob")]
    assert [s.kind for s in result.skips] == ["unknown-agent"]


def test_duplicate_tasks_from_two_listings_are_planned_once():
    reg = registry(("a", "dev", 5))
    result = plan([], [task(1), task(1)], reg, NOW)
    assert spawned(result) == [("1", "a")]


def test_low_disk_skips_every_runnable_task_with_the_reason_and_nothing_else():
    registry = Registry((Agent("vaela", "dev", 2),), legacy=False)
    tasks = [task(1), task(2, blocked_by=[1]), task(3, parked=True)]
    result = plan([], tasks, registry, NOW, low_disk="12 MB free at /ws, below 500")
    assert result.spawns == ()
    kinds = {skip.task_id: (skip.kind, skip.reason) for skip in result.skips}
    assert kinds["1"] == ("low-disk", "low disk: 12 MB free at /ws, below 500")
    assert kinds["2"][0] == "blocked" and kinds["3"][0] == "parked"
    assert [s.task.id for s in plan([], tasks, registry, NOW).spawns] == ["1"]


def reference_counts(tasks):
    """The definition, by brute force: the dependents reachable from each task."""
    waiting_on = {}
    for t in tasks:
        for blocker in t.blocked_by:
            waiting_on.setdefault(blocker, []).append(t.id)
    counts = {}
    for t in tasks:
        reached, stack = set(), list(waiting_on.get(t.id, ()))
        while stack:
            current = stack.pop()
            if current not in reached and current != t.id:
                reached.add(current)
                stack.extend(waiting_on.get(current, ()))
        counts[t.id] = len(reached)
    return counts


def test_blocking_counts_match_the_definition_on_random_graphs():
    import random

    rng = random.Random(7)
    for size in (1, 2, 5, 12, 40):
        for _ in range(50):
            tasks = [task(i, blocked_by=[rng.randint(1, size) for _ in range(rng.randint(0, 3))])
                     for i in range(1, size + 1)]
            assert blocking_counts(tasks) == reference_counts(tasks)


def test_blocking_counts_of_a_diamond_count_each_task_once():
    tasks = [task(1), task(2, blocked_by=[1]), task(3, blocked_by=[1]),
             task(4, blocked_by=[2, 3])]
    assert blocking_counts(tasks) == {"1": 3, "2": 1, "3": 1, "4": 0}


def test_a_long_chain_is_counted_in_one_pass():
    """16,000 tasks in one chain: the old per-task walk did 128 million steps (22 s a pass);
    one pass in topological order does one step per task (a deep recursion would also
    overflow: the walk is iterative)."""
    size = 16_000
    tasks = [task(1)] + [task(i, blocked_by=[i - 1]) for i in range(2, size + 1)]
    counts = blocking_counts(tasks)
    assert counts["1"] == size - 1 and counts[str(size)] == 0
    assert counts["8000"] == size - 8000
