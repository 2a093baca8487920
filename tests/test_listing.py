"""The windowed listing plans exactly what the full listing plans, reading only the top
of each listing (the real stores, SQLite and PostgreSQL, any backlog)."""

from __future__ import annotations

import sqlite3
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.config.registry import Agent, Registry
from scheduler.reconcile.listing import Lister, Listing
from scheduler.reconcile.planner import LeaseView, Pauses, free_slots, plan
from scheduler.sources.local import LocalStore
from scheduler.sources.postgres.store import PostgresStore

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
AGENTS = ("ana", "bo", "cy")
QUEUES = ("dev", "ops")


@st.composite
def backlogs(draw):
    """Tasks (queues, assignees, priorities, blockers, statuses, backoffs, declared files),
    a registry, live leases, pauses and files held by running tasks."""
    agents = tuple(Agent(name, draw(st.sampled_from(QUEUES)), draw(st.integers(0, 3)))
                   for name in AGENTS)
    count = draw(st.integers(0, 30))
    specs = []
    for n in range(1, count + 1):
        earlier = list(range(1, n))
        specs.append({
            "queue": draw(st.sampled_from((*QUEUES, None))),
            "assignee": draw(st.one_of(st.none(), st.none(), st.sampled_from((*AGENTS, "zed")))),
            "priority": draw(st.integers(-1, 1)),
            "age_min": draw(st.integers(0, 3)),
            "blocked_by": draw(st.lists(st.sampled_from(earlier), max_size=2, unique=True))
            if earlier else [],
            "status": draw(st.sampled_from(("idle", "idle", "idle", "working", "complete",
                                            "failed"))),
            "backoff": draw(st.sampled_from((None, None, -60, 60))),
            "files": draw(st.sampled_from(((), ("a.py",), ("docs/**",)))),
        })
    leased = draw(st.lists(st.integers(1, max(count, 1)), max_size=4, unique=True))
    lease_agents = [draw(st.sampled_from(AGENTS)) for _ in leased]
    pauses = Pauses(agents=frozenset(draw(st.lists(st.sampled_from(AGENTS), max_size=1))),
                    queues=frozenset(draw(st.lists(st.sampled_from(QUEUES), max_size=1))))
    occupied = draw(st.sampled_from(({}, {"900": ("a.py",)}, {"900": ("a.py",)})))
    margin = draw(st.sampled_from((0, 0, 1, 3)))
    leases = list(zip(leased, lease_agents, strict=True))
    return Registry(agents, False), specs, leases, pauses, occupied, margin


def build_store(path: Path, specs: list[dict]) -> LocalStore:
    store = LocalStore(path, clock=lambda: NOW)
    for spec in specs:
        store.add_task("t", queue=spec["queue"], assignee=spec["assignee"],
                       priority=spec["priority"], files=spec["files"],
                       blocked_by=[str(b) for b in spec["blocked_by"]])
    store.close()
    conn = sqlite3.connect(path)
    for number, spec in enumerate(specs, 1):
        created = NOW - timedelta(minutes=spec["age_min"])
        not_before = (NOW + timedelta(seconds=spec["backoff"])) if spec["backoff"] else None
        conn.execute("UPDATE tasks SET status = ?, created_at = ?, not_before = ? WHERE id = ?",
                     (spec["status"], created.isoformat(timespec="milliseconds")
                      .replace("+00:00", "Z"),
                      not_before and not_before.isoformat(timespec="milliseconds")
                      .replace("+00:00", "Z"), number))
    conn.commit()
    conn.close()
    return store


@pytest.fixture(scope="module")
def pg_listing_url(pg_server):
    """One database for this module's PostgreSQL examples, emptied before each."""
    url = pg_server.new_database()
    yield url
    if pg_server.running():
        pg_server.drop_database(url)


def build_pg_store(url: str, specs: list[dict]) -> PostgresStore:
    """The same backlog as :func:`build_store`, in PostgreSQL (ids from 1 again)."""
    store = PostgresStore(url, clock=lambda: NOW)
    store.list_tasks()  # the schema exists before its tables are emptied
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE tinyscheduler.blockers, tinyscheduler.history, "
                     "tinyscheduler.runs, tinyscheduler.tasks RESTART IDENTITY CASCADE")
    for spec in specs:
        store.add_task("t", queue=spec["queue"], assignee=spec["assignee"],
                       priority=spec["priority"], files=spec["files"],
                       blocked_by=[str(b) for b in spec["blocked_by"]])
    with psycopg.connect(url, autocommit=True) as conn:
        for number, spec in enumerate(specs, 1):
            not_before = (NOW + timedelta(seconds=spec["backoff"])) if spec["backoff"] else None
            conn.execute("UPDATE tinyscheduler.tasks SET status = %s, created_at = %s, "
                         "not_before = %s WHERE id = %s",
                         (spec["status"], NOW - timedelta(minutes=spec["age_min"]),
                          not_before, number))
    return store


def spawns(the_plan) -> list[tuple[str, str]]:
    return [(spawn.task.id, spawn.agent) for spawn in the_plan.spawns]


@settings(max_examples=150, deadline=None)
@given(backlogs())
def test_the_windowed_listing_plans_what_the_full_listing_plans(world) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = build_store(Path(tmp) / "tasks.db", world[1])
        assert_same_spawns(store, world)
        store.close()


@settings(max_examples=60, deadline=None)
@given(world=backlogs())
def test_the_windowed_listing_plans_what_the_full_listing_plans_on_postgres(
        pg_listing_url, world) -> None:
    store = build_pg_store(pg_listing_url, world[1])
    try:
        assert_same_spawns(store, world)
    finally:
        store.close()


def assert_same_spawns(store, world) -> None:
    registry, _specs, leased, pauses, occupied, margin = world
    views = [LeaseView(str(task), agent) for task, agent in leased]

    def make_plan(listing: Listing):
        return plan(views, listing.tasks, registry, NOW, pauses=pauses,
                    counts=listing.counts, occupied=occupied)

    full = make_plan(Lister(registry).full(store))
    free = free_slots(views, registry, pauses=pauses)
    _window, windowed = Lister(registry, margin=margin).windowed(store, free, pauses,
                                                                  make_plan)
    assert spawns(windowed) == spawns(full)


class Spy:
    """A store that records every window it was asked for."""

    def __init__(self, store: LocalStore | PostgresStore) -> None:
        self.store = store
        self.windows: list[tuple[str | None, str | None, int]] = []

    def __getattr__(self, name):
        return getattr(self.store, name)

    def ready_window(self, *, agent=None, queue=None, limit):
        self.windows.append((agent, queue, limit))
        return self.store.ready_window(agent=agent, queue=queue, limit=limit)


@pytest.fixture(params=["local", "postgres"])
def empty_store(request, tmp_path):
    """An empty store of each kind, on the fixed clock."""
    if request.param == "local":
        store = LocalStore(tmp_path / "tasks.db", clock=lambda: NOW)
    else:
        store = PostgresStore(request.getfixturevalue("pg_url"), clock=lambda: NOW)
    yield store
    store.close()


def test_a_window_reads_what_the_free_slots_can_take_not_the_backlog(empty_store) -> None:
    store = empty_store
    store.import_tasks([{"title": f"t{n}", "queue": "dev"} for n in range(5000)])
    chain = store.add_task("first of a chain", queue="dev")
    store.add_task("waits for it", queue="dev", blocked_by=[chain.id])
    registry = Registry((Agent("ana", "dev", 2), Agent("bo", "dev", 1)), False)
    spy = Spy(store)

    def make_plan(listing: Listing):
        return plan([], listing.tasks, registry, NOW, counts=listing.counts)

    free = free_slots([], registry)
    listing, the_plan = Lister(registry, margin=4).windowed(spy, free, Pauses(), make_plan)
    # the task that unblocks another goes first although it is the newest
    assert [s.task.id for s in the_plan.spawns] == [chain.id, "1", "2"]
    assert len(listing.tasks) < 20 and listing.blocked == 1
    assert sorted(spy.windows, key=str) == [("ana", None, 6), ("bo", None, 5),
                                            (None, "dev", 7)]


def test_with_every_slot_busy_only_the_margin_is_read_to_say_why_it_waits(tmp_path) -> None:
    store = LocalStore(tmp_path / "tasks.db", clock=lambda: NOW)
    store.import_tasks([{"title": f"t{n}", "queue": "dev"} for n in range(100)])
    store.claim("1", "ana", "token")
    registry = Registry((Agent("ana", "dev", 1),), False)
    views = [LeaseView("1", "ana")]
    spy = Spy(store)
    _listing, the_plan = Lister(registry, margin=3).windowed(
        spy, free_slots(views, registry), Pauses(),
        lambda listing: plan(views, listing.tasks, registry, NOW, counts=listing.counts))
    assert sorted(spy.windows, key=str) == [("ana", None, 3), (None, "dev", 3)]
    assert the_plan.spawns == () and the_plan.skipped("no-slot") == 3
    spy.windows.clear()
    Lister(registry, margin=0).windowed(
        spy, free_slots(views, registry), Pauses(),
        lambda listing: plan(views, listing.tasks, registry, NOW, counts=listing.counts))
    assert spy.windows == []


def test_a_window_of_unrunnable_work_is_widened_until_a_task_fits(tmp_path) -> None:
    """Every task at the top declares a file a running task holds: the window grows past
    them to the first task that can run."""
    store = LocalStore(tmp_path / "tasks.db", clock=lambda: NOW)
    store.import_tasks([{"title": f"t{n}", "queue": "dev", "files": ["a.py"]}
                        for n in range(40)] + [{"title": "free", "queue": "dev"}])
    registry = Registry((Agent("ana", "dev", 1),), False)
    spy = Spy(store)
    _listing, the_plan = Lister(registry, margin=0).windowed(
        spy, free_slots([], registry), Pauses(),
        lambda listing: plan([], listing.tasks, registry, NOW, counts=listing.counts,
                             occupied={"999": ("a.py",)}))
    assert [s.task.title for s in the_plan.spawns] == ["free"]
    assert [limit for _a, _q, limit in spy.windows if _q] == [1, 4, 16, 64]
