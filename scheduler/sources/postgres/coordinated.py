"""TinyTask with a PostgreSQL coordinator (``TASK_SOURCE=tinytask``,
``COORDINATOR=postgres``): tasks stay in TinyTask; claims, runs, global limits and host
liveness live in PostgreSQL, so several hosts can share one TinyTask server.

TinyTask's claim is a read then a write, safe only under one scheduler's lock. Here the
run row (one per task, the primary key) is inserted first and the TinyTask claim runs
inside that transaction: a second host claiming the same task waits on the row, then
finds it taken. A result is reported to TinyTask with the run row locked, then the row is
deleted; TinyTask ignores a result it has applied already (by token), so a delivery
repeated after a failure in between changes nothing.
"""

from __future__ import annotations

from typing import Any

from scheduler.errors import SourceError
from scheduler.sources.base import Applied, Health, Result, RetryPolicy, Task
from scheduler.sources.postgres.coordinator import Coordinator, notify


class CoordinatedSource:
    """A task source whose claims and results are coordinated in PostgreSQL."""

    def __init__(self, inner: Any, coordinator: Coordinator) -> None:
        self.inner = inner
        self.coordinator = coordinator
        self.name = inner.name

    @classmethod
    def from_settings(cls, settings: Any, inner: Any) -> CoordinatedSource:
        return cls(inner, Coordinator.from_settings(settings))

    @property
    def skipped(self) -> int:
        return getattr(self.inner, "skipped", 0)

    def assigned_idle(self, agent: str) -> list[Task]:
        return self.inner.assigned_idle(agent)

    def queue_idle_unassigned(self, queue: str) -> list[Task]:
        return self.inner.queue_idle_unassigned(queue)

    def current(self, task_ids: list[str]) -> dict[str, Task | None]:
        return self.inner.current(task_ids)

    def working(self) -> list[Task]:
        return self.inner.working()

    def note(self, task_id: str, text: str, actor: str = "tinyscheduler") -> None:
        self.inner.note(task_id, text, actor)

    def claim(self, task_id: str, agent: str, token: str) -> None:
        with self.coordinator.db.transaction() as cur:
            self.coordinator.claim_run(cur, str(task_id), agent, 0, token)
            self.inner.claim(task_id, agent, token)  # raises: the run row is rolled back

    def report(self, result: Result, policy: RetryPolicy) -> Applied:
        with self.coordinator.db.transaction() as cur:
            return self._apply(cur, result, policy)

    def _apply(self, cur: Any, result: Result, policy: RetryPolicy) -> Applied:
        applied = self.inner.report(result, policy)
        if self.coordinator.end_run(cur, str(result.task_id), result.token):
            notify(cur, f"result {result.task_id}")
        return applied

    def reclaim_dead_hosts(self, policy: RetryPolicy) -> list[Result]:
        return self.coordinator.reclaim_dead(
            lambda cur, result: self.inner.report(result, policy))

    def health(self) -> Health:
        inner = self.inner.health()
        try:
            self.coordinator.host_heartbeat_check()
        except SourceError as exc:
            return Health(False, f"{inner.detail}; coordinator: {exc}")
        return Health(inner.ok, f"{inner.detail}; coordinator {self.coordinator.db.server}")

    def before_fork(self) -> None:
        self.inner.before_fork()
        self.coordinator.db.close()

    def close(self) -> None:
        self.inner.close()
        self.coordinator.close()
