"""What the planner is shown: the idle work of every agent and queue this scheduler serves.

Two ways to list it:

* **full**: every idle task of every served agent and queue, blocked ones included, and up
  to ``MAX_UNRUNNABLE_LISTED`` that no agent can run. Dry runs, the rollback switch
  ``DISABLE_BLOCKING`` and sources that cannot do better (TinyTask) use it; its cost grows
  with the backlog.
* **windowed** (sources with ``ready_window``): each agent's and queue's listing is asked
  only for its first ready tasks, as many as the slots it could fill plus a margin, and not
  at all when it can fill none. What each task blocks is counted by the source over its
  whole backlog (``idle_blocker_edges``), and every unblocked task that blocks something is
  shown whatever its place, so the planner orders the window exactly as it would order the
  whole backlog. A listing whose window ran out while its agents still have free slots is
  widened and the plan made again. The spawns are therefore those of the full listing, at a
  cost set by the free slots instead of the backlog.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from scheduler.config.registry import Registry
from scheduler.reconcile.planner import Plan, counts_from_edges
from scheduler.sources.base import COMPLETE, IDLE, Task
from scheduler.state.pauses import Pauses

#: At most this many tasks that no agent can run are listed per pass.
MAX_UNRUNNABLE_LISTED = 100
#: A window holds the slots its listing could fill plus this many tasks.
WINDOW_MARGIN = 8
#: A window that ran out too early is widened this many times over.
WINDOW_GROWTH = 4
#: A long-lived scheduler (the daemon) looks for tasks no agent can run at most this
#: often when it lists windows: the look reads every idle task.
UNRUNNABLE_EVERY_SEC = 30.0


@dataclass
class Listing:
    """The tasks shown to the planner and what the source counted for them."""

    tasks: list[Task]
    counts: dict[str, int] | None = None  #: what each task blocks (None: count from tasks)
    blocked: int | None = None  #: idle tasks waiting for a blocker (None: the plan's count)
    skipped_invalid: int = 0  #: tasks the source left out for invalid data


def can_window(source, dry_run: bool, disable_blocking: bool) -> bool:
    return (not dry_run and not disable_blocking and hasattr(source, "ready_window")
            and hasattr(source, "idle_blocker_edges"))


def store_counts(source) -> tuple[dict[str, int], set[str]] | None:
    """What each idle task blocks and which idle tasks are blocked, from the source's
    blocker edges; None when the source does not keep them."""
    reader = getattr(source, "idle_blocker_edges", None)
    if reader is None:
        return None
    edges = reader()
    blocked = {waiting for waiting, _blocker, status in edges if status != COMPLETE}
    idle_edges = [(waiting, blocker) for waiting, blocker, status in edges if status == IDLE]
    ids = list(dict.fromkeys(task for edge in idle_edges for task in edge))
    return counts_from_edges(ids, idle_edges), blocked


class Lister:
    """Lists idle work for one reconciler; remembers when it last looked for tasks no
    agent can run."""

    def __init__(self, registry: Registry, *, margin: int = WINDOW_MARGIN,
                 monotonic: Callable[[], float] = time.monotonic):
        self.registry = registry
        self.margin = margin
        self._monotonic = monotonic
        self._unrunnable: list[Task] = []
        self._unrunnable_at: float | None = None

    def full(self, source) -> Listing:
        """Every idle task of every served agent and queue (raises SourceError)."""
        tasks: list[Task] = []
        skipped = 0
        for listing, name in self._listings(source):
            tasks += listing(name)
            skipped += getattr(source, "skipped", 0)  # invalid tasks, per listing
        tasks += self._unrunnable_now(source)
        counted = store_counts(source)
        counts = counted[0] if counted is not None else None
        return Listing(tasks, counts, None, skipped)

    def windowed(self, source, free: dict[str, int], pauses: Pauses,
                 make_plan: Callable[[Listing], Plan]) -> tuple[Listing, Plan]:
        """The first ready tasks of each listing that has slots to fill, widened until
        the plan leaves no free slot a further task could have taken (raises
        SourceError)."""
        counts, blocked = store_counts(source) or ({}, set())
        important = [task_id for task_id, count in counts.items()
                     if count and task_id not in blocked]
        shown = [task for task in source.current(important).values()
                 if task is not None and task.status == IDLE] if important else []
        limits = {key: need + self.margin for key, need in self._needs(free, pauses).items()
                  if need + self.margin > 0}
        skipped = 0
        windows = {}
        for key, limit in limits.items():
            windows[key] = self._window(source, key, limit)
            skipped += getattr(source, "skipped", 0)  # invalid tasks, per listing
        extra = self._unrunnable_due(source)
        while True:
            tasks = shown + [task for window in windows.values() for task in window] + extra
            listing = Listing(tasks, counts, len(blocked), skipped)
            the_plan = make_plan(listing)
            short = [key for key, window in windows.items()
                     if len(window) == limits[key] and self._unfilled(key, the_plan, free)]
            if not short:
                return listing, the_plan
            for key in short:
                limits[key] = max(limits[key] * WINDOW_GROWTH, 1)
                windows[key] = self._window(source, key, limits[key])

    def _needs(self, free: dict[str, int], pauses: Pauses) -> dict[tuple[str, str], int]:
        """The slots each listing could fill: an agent's own free slots for the tasks
        assigned to it, its pool's for a queue (none while the queue is paused). A
        listing that can fill none still shows its first few tasks (the margin), so the
        pass says why they wait: no free slot, paused, over budget."""
        needs = {("agent", agent.name): free.get(agent.name, 0)
                 for agent in self.registry.agents}
        if not self.registry.legacy:
            for queue, pool in self.registry.queues().items():
                paused = pauses.everything or queue in pauses.queues
                needs[("queue", queue)] = 0 if paused else sum(free.get(a.name, 0)
                                                               for a in pool)
        return needs

    def _unfilled(self, key: tuple[str, str], the_plan: Plan, free: dict[str, int]) -> bool:
        """Could a task past this listing's window have taken a slot? Tasks assigned to an
        agent come before every queued task, so an agent's listing is short while fewer of
        its tasks were planned than it had free slots; a queue's listing (planned after all
        of them) while a member of its pool still has a free slot."""
        kind, name = key
        if kind == "agent":
            planned = sum(1 for spawn in the_plan.spawns if spawn.task.assignee == name)
            return planned < free.get(name, 0)
        pool = {agent.name for agent in self.registry.queues()[name]}
        return any(free.get(load.name, 0) > load.planned for load in the_plan.agents
                   if load.name in pool)

    def _listings(self, source) -> list[tuple[Callable[[str], list[Task]], str]]:
        listings = [(source.assigned_idle, agent.name) for agent in self.registry.agents]
        if not self.registry.legacy:
            listings += [(source.queue_idle_unassigned, q) for q in self.registry.queues()]
        return listings

    @staticmethod
    def _window(source, key: tuple[str, str], limit: int) -> list[Task]:
        kind, name = key
        if kind == "agent":
            return source.ready_window(agent=name, limit=limit)
        return source.ready_window(queue=name, limit=limit)

    def _unrunnable_now(self, source) -> list[Task]:
        finder = getattr(source, "idle_unrunnable", None)
        if finder is None:
            return []
        agents = [a.name for a in self.registry.agents]
        queues: Sequence[str] | None = None if self.registry.legacy else list(
            self.registry.queues())
        self._unrunnable = finder(agents, queues, limit=MAX_UNRUNNABLE_LISTED)
        self._unrunnable_at = self._monotonic()
        return self._unrunnable

    def _unrunnable_due(self, source) -> list[Task]:
        """Tasks no agent can run, looked up again only when the last look is old."""
        if (self._unrunnable_at is not None
                and self._monotonic() - self._unrunnable_at < UNRUNNABLE_EVERY_SEC):
            return self._unrunnable
        return self._unrunnable_now(source)
