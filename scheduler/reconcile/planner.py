"""The planner: a pure function from what is running and what is waiting to what to do.

No I/O here: the reconciler gathers leases (already judged by the lease rules), idle tasks
and the registry, calls :func:`plan`, and carries the plan out. Every ordering and
balancing rule is therefore a fast table-driven test.

Rules, in order:

* a task that already has a lease is never planned again;
* parked tasks and tasks in retry backoff are skipped with their reason;
* blocked tasks are skipped (unless ``disable_blocking``, the rollback switch that keeps the
  source's own order with no filtering or sorting);
* the rest are ordered by how many tasks each blocks, directly or transitively (more
  first), then priority (higher first), then age (older first), then id;
* per agent, free slots = limit - its live leases; tasks already assigned to an agent go
  first, since they can run nowhere else;
* per queue, unassigned tasks go one by one to the pool member with the most free slots,
  ties broken by name; legacy mode (no registry file) runs assigned tasks only;
* with too little free disk for workspaces (``low_disk``, measured by the caller), every
  task that could run is skipped with that reason instead (not failed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from scheduler.agents.holds import Hold
from scheduler.clock import to_iso
from scheduler.config.registry import Agent, Registry
from scheduler.file_patterns import clash
from scheduler.sources.base import Task
from scheduler.state.pauses import NO_PAUSES, Pauses

_NEVER = datetime.max.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Reclaim:
    """A lease the lease rules judged dead (or hung): reclaim it and requeue its task."""

    task_id: str
    agent: str
    reason: str


@dataclass(frozen=True)
class Spawn:
    """Run ``task`` on ``agent``; ``why`` says how it was chosen."""

    task: Task
    agent: str
    why: str


@dataclass(frozen=True)
class Skip:
    task_id: str
    reason: str
    kind: str  #: leased | parked | backoff | blocked | paused | no-slot | unknown-agent | low-disk


@dataclass(frozen=True)
class AgentLoad:
    name: str
    queue: str | None
    limit: int
    used: int
    planned: int
    paused: bool
    held: str = ""  #: why the agent is held back (rate-limited, over budget), if it is


@dataclass(frozen=True)
class Plan:
    reclaims: tuple[Reclaim, ...] = ()
    spawns: tuple[Spawn, ...] = ()
    skips: tuple[Skip, ...] = ()
    agents: tuple[AgentLoad, ...] = ()
    legacy: bool = False

    def skipped(self, kind: str) -> int:
        return sum(1 for skip in self.skips if skip.kind == kind)


@dataclass(frozen=True)
class LeaseView:
    """What the planner needs of a lease: whose slot it holds and whether it is dead."""

    task_id: str
    agent: str
    reclaim_reason: str | None = None


@dataclass
class _Slots:
    free: dict[str, int] = field(default_factory=dict)
    planned: dict[str, int] = field(default_factory=dict)

    def take(self, agent: str) -> None:
        self.free[agent] -= 1
        self.planned[agent] = self.planned.get(agent, 0) + 1


def plan(
    leases: Sequence[LeaseView],
    tasks: Iterable[Task],
    registry: Registry,
    now: datetime,
    *,
    disable_blocking: bool = False,
    pauses: Pauses = NO_PAUSES,
    holds: Mapping[str, Hold] | None = None,
    occupied: Mapping[str, Sequence[str]] | None = None,
    low_disk: str | None = None,
    counts: Mapping[str, int] | None = None,
) -> Plan:
    """Decide reclaims and spawns. ``tasks`` are the idle tasks the source returned (assigned
    to registry agents, and unassigned in registry queues), blocked ones included.
    ``holds`` are agents held back (rate-limited, over budget): they get no new task and
    their queue's other agents take its work. ``occupied`` maps the tasks running or
    waiting to merge to their declared (or changed) files: a task whose declared files
    overlap any of them, or those of a task planned earlier in this pass, waits.
    ``low_disk`` says why there is not enough free disk for a workspace (None: enough).
    ``counts`` are how many tasks each task blocks when the source counted them over its
    whole backlog (``tasks`` is then only the top of it); None: counted from ``tasks``."""
    holds = holds or {}
    claimed = {task_id: tuple(files) for task_id, files in (occupied or {}).items() if files}
    tasks = _unique(tasks)
    reclaims = tuple(Reclaim(v.task_id, v.agent, v.reclaim_reason)
                     for v in leases if v.reclaim_reason)
    leased = {view.task_id for view in leases}
    used = _used(leases)
    agents = registry.by_name()
    slots = _Slots(free=free_slots(leases, registry, pauses=pauses, holds=holds))

    skips: list[Skip] = []
    eligible = _eligible(tasks, leased, now, disable_blocking, skips)
    ordered = eligible if disable_blocking else _by_importance(
        eligible, blocking_counts(tasks) if counts is None else counts)
    if low_disk is not None:
        skips += [Skip(task.id, f"low disk: {low_disk}", "low-disk") for task in ordered]
        ordered = []

    spawns: list[Spawn] = []
    assigned = [t for t in ordered if t.assignee]
    unassigned = [t for t in ordered if not t.assignee]
    for task in assigned:
        _collect(_overlap(task, claimed)
                 or _place_assigned(task, agents, slots, pauses, holds, registry),
                 spawns, skips, claimed)
    if not registry.legacy:
        pools = registry.queues()
        for task in unassigned:
            _collect(_overlap(task, claimed)
                     or _place_queued(task, pools, slots, pauses, holds, registry),
                     spawns, skips, claimed)
    else:
        skips += [Skip(t.id, str(registry.cannot_run(t.queue, None)), "unknown-agent")
                  for t in unassigned]

    loads = tuple(
        AgentLoad(a.name, a.queue, a.limit, used.get(a.name, 0), slots.planned.get(a.name, 0),
                  pauses.everything or a.name in pauses.agents,
                  holds[a.name].reason if a.name in holds else "")
        for a in registry.agents
    )
    return Plan(reclaims, tuple(spawns), tuple(skips), loads, registry.legacy)


def _used(leases: Sequence[LeaseView]) -> dict[str, int]:
    used: dict[str, int] = {}
    for view in leases:
        if not view.reclaim_reason:
            used[view.agent] = used.get(view.agent, 0) + 1
    return used


def free_slots(leases: Sequence[LeaseView], registry: Registry, *,
               pauses: Pauses = NO_PAUSES,
               holds: Mapping[str, Hold] | None = None) -> dict[str, int]:
    """Free slots per agent: its limit minus its live leases; none while it is paused or
    held back."""
    used = _used(leases)
    holds = holds or {}
    return {agent.name: 0 if (pauses.everything or agent.name in pauses.agents
                              or agent.name in holds)
            else max(agent.limit - used.get(agent.name, 0), 0)
            for agent in registry.agents}


def _unique(tasks: Iterable[Task]) -> list[Task]:
    seen: dict[str, Task] = {}
    for task in tasks:
        seen.setdefault(task.id, task)
    return list(seen.values())


def _eligible(tasks: list[Task], leased: set[str], now: datetime, disable_blocking: bool,
              skips: list[Skip]) -> list[Task]:
    eligible = []
    for task in tasks:
        if task.id in leased:
            skips.append(Skip(task.id, "already leased", "leased"))
        elif task.parked:
            skips.append(Skip(task.id, f"parked: {task.last_error or 'too many attempts'}",
                              "parked"))
        elif task.not_before is not None and task.not_before > now:
            skips.append(Skip(task.id, f"retry backoff until {to_iso(task.not_before)}",
                              "backoff"))
        elif task.is_blocked and not disable_blocking:
            blockers = ", ".join(task.blocked_by) or "an unfinished task"
            skips.append(Skip(task.id, f"blocked by {blockers}", "blocked"))
        else:
            eligible.append(task)
    return eligible


def blocking_counts(tasks: Sequence[Task]) -> dict[str, int]:
    """How many of ``tasks`` each task blocks, directly or transitively (cycle-safe)."""
    ids = list(dict.fromkeys(task.id for task in tasks))
    known = set(ids)
    edges = [(task.id, blocker) for task in tasks for blocker in task.blocked_by
             if blocker in known]
    return counts_from_edges(ids, edges)


def counts_from_edges(ids: Sequence[str], edges: Iterable[tuple[str, str]]) -> dict[str, int]:
    """How many tasks each of ``ids`` blocks, directly or transitively, along ``edges``
    (waiting task, its blocker), both ends among ``ids``; cycle-safe.

    One pass over the blocker graph in topological order: strongly connected components
    first (members of a cycle block each other), then each component's dependents from
    its children's. When no task waits for two different components (always so with
    TinyTask's single blocker) the counts are plain sums, linear in tasks + blockers;
    otherwise each component carries the set of what it reaches as a bit set, so a task
    reached along two paths is counted once.
    """
    index = {task_id: i for i, task_id in enumerate(ids)}
    dependents: list[list[int]] = [[] for _ in ids]
    for waiting, blocker in edges:
        i, j = index[blocker], index[waiting]
        if i != j:
            dependents[i].append(j)
    components = _strong_components(dependents)  # every component after its dependents
    component_of = [0] * len(ids)
    for c, members in enumerate(components):
        for member in members:
            component_of[member] = c
    children: list[set[int]] = []
    parents = [0] * len(components)
    for c, members in enumerate(components):
        mine = {component_of[d] for m in members for d in dependents[m]} - {c}
        children.append(mine)
        for child in mine:
            parents[child] += 1
    reached = (_reach_counts_forest(components, children) if max(parents, default=0) <= 1
               else _reach_counts_shared(components, children, parents))
    return {ids[m]: reached[c] + len(members) - 1
            for c, members in enumerate(components) for m in members}


def _reach_counts_forest(components: list[list[int]], children: list[set[int]]) -> list[int]:
    """Tasks each component reaches outside itself, when no component has two parents."""
    reached = [0] * len(components)
    for c in range(len(components)):
        reached[c] = sum(len(components[child]) + reached[child] for child in children[c])
    return reached


def _reach_counts_shared(components: list[list[int]], children: list[set[int]],
                         parents: list[int]) -> list[int]:
    """The same with shared descendants: bit sets, each freed once its parents used it."""
    bits: dict[int, int] = {}
    reached = [0] * len(components)
    waiting = list(parents)
    for c in range(len(components)):
        mine = 0
        for child in children[c]:
            for member in components[child]:
                mine |= 1 << member
            mine |= bits[child]
            waiting[child] -= 1
            if waiting[child] == 0:
                del bits[child]
        reached[c] = mine.bit_count()
        if parents[c]:
            bits[c] = mine
    return reached


def _strong_components(edges: list[list[int]]) -> list[list[int]]:
    """Tarjan's strongly connected components, iteratively; each component is listed after
    every component it reaches."""
    count = len(edges)
    order, low = [-1] * count, [0] * count
    on_stack = [False] * count
    stack: list[int] = []
    components: list[list[int]] = []
    counter = 0
    for root in range(count):
        if order[root] != -1:
            continue
        order[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        work = [(root, 0)]
        while work:
            node, next_edge = work[-1]
            if next_edge < len(edges[node]):
                work[-1] = (node, next_edge + 1)
                target = edges[node][next_edge]
                if order[target] == -1:
                    order[target] = low[target] = counter
                    counter += 1
                    stack.append(target)
                    on_stack[target] = True
                    work.append((target, 0))
                elif on_stack[target]:
                    low[node] = min(low[node], order[target])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == order[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack[member] = False
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
    return components


def _id_key(task_id: str) -> tuple[int, int, str]:
    return (0, int(task_id), "") if task_id.isdigit() else (1, 0, task_id)


def _by_importance(eligible: list[Task], counts: Mapping[str, int]) -> list[Task]:
    return sorted(eligible, key=lambda t: (-counts.get(t.id, 0), -t.priority,
                                           t.created_at or _NEVER, _id_key(t.id)))


def _place_assigned(task: Task, agents: Mapping[str, Agent], slots: _Slots,
                    pauses: Pauses, holds: Mapping[str, Hold],
                    registry: Registry) -> Spawn | Skip:
    agent = agents.get(task.assignee) if task.assignee else None
    if agent is None:
        return Skip(task.id, str(registry.cannot_run(task.queue, task.assignee)),
                    "unknown-agent")
    if pauses.everything or agent.name in pauses.agents:
        return Skip(task.id, f"agent {agent.name} is paused", "paused")
    if agent.name in holds:
        return Skip(task.id, holds[agent.name].reason, holds[agent.name].kind)
    if slots.free[agent.name] <= 0:
        return Skip(task.id, f"no free slot for {agent.name} (limit {agent.limit})", "no-slot")
    slots.take(agent.name)
    return Spawn(task, agent.name, f"assigned to {agent.name}")


def _place_queued(task: Task, pools: Mapping[str, list[Agent]], slots: _Slots,
                  pauses: Pauses, holds: Mapping[str, Hold],
                  registry: Registry) -> Spawn | Skip:
    queue = task.queue
    pool = pools.get(queue) if queue else None
    if not pool:
        return Skip(task.id, str(registry.cannot_run(queue, None)), "unknown-agent")
    if pauses.everything or queue in pauses.queues:
        return Skip(task.id, f"queue {queue} is paused", "paused")
    best = min(pool, key=lambda a: (-slots.free[a.name], a.name))
    if slots.free[best.name] <= 0:
        paused = [a.name for a in pool if a.name in pauses.agents]
        held = [holds[a.name] for a in pool if a.name in holds and a.name not in pauses.agents]
        if len(paused) + len(held) == len(pool):
            if held:
                return Skip(task.id, "; ".join(h.reason for h in held), held[0].kind)
            return Skip(task.id, f"every agent of queue {queue} is paused", "paused")
        unavailable = [f"paused: {', '.join(paused)}"] if paused else []
        unavailable += [f"held: {a.name}" for a in pool if a.name in holds
                        and a.name not in pauses.agents]
        note = f" ({'; '.join(unavailable)})" if unavailable else ""
        return Skip(task.id, f"queue {queue} has no free slot{note}", "no-slot")
    slots.take(best.name)
    return Spawn(task, best.name, f"queue {queue} -> {best.name} "
                                  f"({slots.free[best.name] + 1} free)")


def _overlap(task: Task, claimed: Mapping[str, tuple[str, ...]]) -> Skip | None:
    """A task whose declared files overlap those of a running, merging or just planned
    task waits; a task that declares nothing is not held back by declarations."""
    if not task.files:
        return None
    for other, files in claimed.items():
        found = clash(task.files, files)
        if found is not None and other != task.id:
            return Skip(task.id, f"overlaps files of task {other} ({found.theirs})", "overlap")
    return None


def _collect(result: Spawn | Skip, spawns: list[Spawn], skips: list[Skip],
             claimed: dict[str, tuple[str, ...]]) -> None:
    if isinstance(result, Spawn):
        spawns.append(result)
        if result.task.files:
            claimed[result.task.id] = result.task.files
    else:
        skips.append(result)
