"""Property-based tests where the input space is large: the planner, settings parsing and
the agent's argv template. Plus the documented minimum of every whole-number setting."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.config.registry import Agent, Registry
from scheduler.config.settings import OPTIONS, PREFIX, load_settings
from scheduler.errors import ConfigError
from scheduler.reconcile.planner import LeaseView, Pauses, blocking_counts, plan
from scheduler.sources.base import Task
from wrapper.command import LaunchError, build_argv

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
AGENT_NAMES = ("ana", "bo", "cy", "di")
QUEUES = ("dev", "ops")


# --- the planner --------------------------------------------------------------------------


@st.composite
def worlds(draw):
    """A registry, leases and idle tasks, with blockers, backoffs, parking and pauses."""
    names = draw(st.lists(st.sampled_from(AGENT_NAMES), min_size=1, max_size=4, unique=True))
    legacy = draw(st.booleans())
    agents = tuple(Agent(name, None if legacy else draw(st.sampled_from(QUEUES)),
                         draw(st.integers(0, 3))) for name in names)
    count = draw(st.integers(0, 12))
    ids = [str(n) for n in range(1, count + 1)]
    tasks = []
    for task_id in ids:
        blockers = draw(st.lists(st.sampled_from(ids), max_size=3, unique=True)) if ids else []
        blockers = [b for b in blockers if b != task_id]
        tasks.append(Task(
            id=task_id, title=f"task {task_id}",
            queue=draw(st.sampled_from((*QUEUES, None))),
            assignee=draw(st.one_of(st.none(), st.sampled_from((*AGENT_NAMES, "zed")))),
            priority=draw(st.integers(-2, 2)),
            created_at=NOW - timedelta(minutes=draw(st.integers(0, 5))),
            blocked_by=tuple(blockers),
            is_blocked=bool(blockers) and draw(st.booleans()),
            not_before=draw(st.sampled_from((None, NOW - timedelta(seconds=1),
                                             NOW + timedelta(seconds=1)))),
            parked=draw(st.booleans()) and draw(st.booleans()),
        ))
    # a task may be listed twice (assigned and queue listings overlap)
    listed = tasks + draw(st.lists(st.sampled_from(tasks), max_size=2)) if tasks else []
    leases = [LeaseView(task_id, draw(st.sampled_from(names)),
                        draw(st.sampled_from((None, None, "pid-dead"))))
              for task_id in draw(st.lists(st.sampled_from([*ids, "90", "91", "92"]),
                                           max_size=5, unique=True))]
    pauses = Pauses(everything=draw(st.booleans()) and draw(st.booleans()),
                    agents=frozenset(draw(st.lists(st.sampled_from(names), max_size=2))),
                    queues=frozenset(draw(st.lists(st.sampled_from(QUEUES), max_size=1))))
    disable_blocking = draw(st.booleans()) and draw(st.booleans())
    return Registry(agents, legacy), leases, listed, tasks, pauses, disable_blocking


def importance(tasks: list[Task]):
    """The documented order: unblocks more, then priority, then age, then id."""
    counts = blocking_counts(tasks)
    return lambda t: (-counts[t.id], -t.priority, t.created_at, int(t.id))


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_planner_invariants(world) -> None:
    registry, leases, listed, tasks, pauses, disable_blocking = world
    result = plan(leases, listed, registry, NOW, disable_blocking=disable_blocking,
                  pauses=pauses)
    leased = {lease.task_id for lease in leases}

    def eligible(t: Task) -> bool:
        return (t.id not in leased and not t.parked
                and (t.not_before is None or t.not_before <= NOW)
                and (disable_blocking or not t.is_blocked))

    check_accounting(result, registry, leases, tasks, eligible)
    check_limits_and_pauses(result, registry, leases, tasks, pauses)
    if not disable_blocking:
        check_order(result, [t for t in tasks if eligible(t)], tasks)


def check_accounting(result, registry, leases, tasks, eligible) -> None:
    """No task twice; every listed task spawned or skipped once, with a reason; nothing
    leased, parked, backing off or (unless switched off) blocked is planned; every dead
    lease reclaimed."""
    spawned = [s.task.id for s in result.spawns]
    assert len(spawned) == len(set(spawned))
    skipped = [s.task_id for s in result.skips]
    assert sorted(spawned + skipped, key=int) == sorted((t.id for t in tasks), key=int)
    assert all(skip.reason for skip in result.skips)
    assert all(eligible(spawn.task) for spawn in result.spawns)
    assert {r.task_id for r in result.reclaims} == {v.task_id for v in leases if v.reclaim_reason}
    assert all(r.reason for r in result.reclaims)


def check_limits_and_pauses(result, registry, leases, tasks, pauses) -> None:
    """No agent over its limit; paused agents and queues get nothing, and a task held
    back by a pause says so; an assigned task runs only on its agent, a queued one only
    on a member of its queue's pool."""
    agents = registry.by_name()
    for name, agent in agents.items():
        live = sum(1 for v in leases if v.agent == name and not v.reclaim_reason)
        planned = [s for s in result.spawns if s.agent == name]
        assert len(planned) <= max(agent.limit - live, 0)
        if pauses.everything or name in pauses.agents:
            assert planned == []
    kinds = {skip.task_id: skip.kind for skip in result.skips}
    for task in tasks:
        paused = pauses.everything or task.assignee in pauses.agents
        if task.assignee in agents and paused and kinds.get(task.id) not in (
                "leased", "parked", "backoff", "blocked"):
            assert kinds.get(task.id) == "paused", (task.id, kinds.get(task.id))
    for spawn in result.spawns:
        task = spawn.task
        if task.assignee:
            assert spawn.agent == task.assignee
        else:
            assert not registry.legacy and task.queue == agents[spawn.agent].queue
            assert task.queue not in pauses.queues


def check_order(result, candidates, tasks) -> None:
    """A task is never passed over for a less important one that competes for the same
    slots (same assignee, or same queue when unassigned)."""
    spawned = {s.task.id for s in result.spawns}
    rank = importance(tasks)
    for a in candidates:
        if a.id in spawned:
            continue
        for b in candidates:
            if b.id in spawned and rank(a) < rank(b):
                same = (a.assignee and a.assignee == b.assignee) or (
                    not a.assignee and not b.assignee and a.queue == b.queue)
                assert not same, (a.id, "passed over for", b.id)


# --- settings parsing ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def empty_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from([option.name for option in OPTIONS]),
       text=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                    max_size=40))
def test_any_value_of_any_setting_loads_or_fails_cleanly(empty_dir: Path, name: str,
                                                         text: str) -> None:
    option = next(o for o in OPTIONS if o.name == name)
    try:
        loaded = load_settings(environ={option.env: text}, cwd=empty_dir)
    except ConfigError as exc:
        message = str(exc)
        assert option.env in message  # names the variable
        assert "\n" not in message  # one line, whatever the value held
        if option.secret:  # masked; a value of a character or two may occur in any text
            assert f"{option.env}=******** " in message
            assert len(text.strip()) < 4 or text.strip() not in message
        return
    if text.strip():  # an empty value counts as unset
        assert loaded.origins[option.name] == "environment"


def highest(name: str) -> int:
    bounds = next(o for o in OPTIONS if o.name == name).bounds
    assert bounds is not None, name
    return bounds.high


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(number=st.one_of(st.integers(-10**6, 10**6), st.integers(-10**9, 10**9)),
       padding=st.sampled_from(["", " ", "\t"]))
def test_whole_number_settings_accept_exactly_their_range(empty_dir: Path, number: int,
                                                          padding: str) -> None:
    for name, minimum in MINIMUMS.items():
        text = f"{padding}{number}{padding}"
        high = highest(name)
        if minimum <= number <= high:
            loaded = load_settings(environ={PREFIX + name: text}, cwd=empty_dir)
            assert getattr(loaded, name.lower()) == number
        else:
            with pytest.raises(ConfigError, match=f"whole number from {minimum} to {high}"):
                load_settings(environ={PREFIX + name: text}, cwd=empty_dir)


#: The documented minimum of every whole-number setting (docs/configuration.md). Written
#: out, not read from the code: lowering one in the code must fail here.
MINIMUMS = {
    "DEFAULT_AGENT_LIMIT": 0, "LOOP_INTERVAL_SEC": 1, "HEARTBEAT_SEC": 1,
    "STALE_MULTIPLIER": 2, "MAX_RUNTIME_SEC": 1, "IDLE_TIMEOUT_SEC": 0, "KILL_GRACE_SEC": 0,
    "SPAWN_TIMEOUT_SEC": 1, "MAX_ATTEMPTS": 1, "RETRY_BACKOFF_SEC": 0,
    "RATE_LIMIT_BACKOFF_SEC": 1, "RATE_LIMIT_BACKOFF_MAX_SEC": 1, "MAX_TOTAL_RUNTIME_SEC": 0,
}


@pytest.mark.parametrize(("name", "minimum"), sorted(MINIMUMS.items()))
def test_each_whole_number_setting_rejects_one_below_its_minimum(empty_dir: Path, name: str,
                                                                 minimum: int) -> None:
    assert getattr(load_settings(environ={PREFIX + name: str(minimum)}, cwd=empty_dir),
                   name.lower()) == minimum
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={PREFIX + name: str(minimum - 1)}, cwd=empty_dir)
    assert str(raised.value) == (f"{PREFIX}{name}='{minimum - 1}' (from environment) is "
                                 f"invalid: accepted: a whole number from {minimum} to "
                                 f"{highest(name)}")


def test_the_minimums_written_here_are_whole_number_settings() -> None:
    """MINIMUMS pins the safety-relevant lower bounds; each names a whole-number setting."""
    def takes_seven(option) -> bool:
        try:
            return type(option.parse("7")) is int
        except ValueError:
            return False

    assert set(MINIMUMS) <= {o.name for o in OPTIONS if takes_seven(o)}


# --- the argv template --------------------------------------------------------------------

titles = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=200)


@settings(max_examples=300, deadline=None)
@given(title=titles, task_id=st.from_regex(r"[A-Za-z0-9_.-]{1,16}", fullmatch=True))
def test_any_title_is_one_argument_verbatim(title: str, task_id: str) -> None:
    template = "agent --id {task_id} --title {title} --both={task_id}:{title} '{title} x'"
    argv = build_argv(template, {"title": title, "task_id": task_id})
    assert argv == ["agent", "--id", task_id, "--title", title,
                    f"--both={task_id}:{title}", f"{title} x"]


@settings(max_examples=50, deadline=None)
@given(before=titles, after=titles)
def test_a_title_with_a_nul_is_refused_cleanly(before: str, after: str) -> None:
    """An argument cannot carry NUL: a clean launch error, never a truncated argument."""
    with pytest.raises(LaunchError, match="NUL"):
        build_argv("agent --title {title}", {"title": f"{before}\x00{after}", "task_id": "1"})
