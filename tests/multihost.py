"""Helpers for tests with several scheduler "hosts" on one PostgreSQL: each host is a base
directory with its own state, HOSTNAME and agents, all sharing one database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from test_reconciler import Scheduler

from scheduler.sources.postgres.store import PostgresStore


class Host(Scheduler):
    """A scheduler host on PostgreSQL (``TASK_SOURCE=postgres``)."""

    def __init__(self, base: Path, url: str, name: str, agents: dict[str, str],
                 limits: dict[str, int], **settings: object) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.name = name
        defaults: dict[str, object] = {"TASK_SOURCE": "postgres", "DATABASE_URL": url,
                                       "HOSTNAME": name, "HOST_TIMEOUT_SEC": 10,
                                       "HEARTBEAT_SEC": 1, "STALE_MULTIPLIER": 3}
        defaults.update(settings)
        super().__init__(base, agents, limits, **defaults)

    @contextmanager
    def store(self) -> Iterator[PostgresStore]:  # type: ignore[override]
        opened = PostgresStore(self.url, host=self.name)
        try:
            yield opened
        finally:
            opened.close()

    def runs(self) -> list[tuple]:
        with self.store() as store:
            return store.db.query("SELECT task_id, host, agent, token, fence "
                                  "FROM tinyscheduler.runs ORDER BY fence")
