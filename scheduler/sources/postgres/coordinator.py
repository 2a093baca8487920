"""Runs, hosts and global limits in PostgreSQL: what lets several schedulers share one
backlog without running a task twice.

- A run row per task in flight (task, host, agent, attempt, spawn token, a fencing number
  from a sequence, heartbeat) is the global lease: the primary key allows one per task.
  It is inserted in the claim's transaction and deleted with the result's.
- A global limit per agent (GLOBAL_LIMITS) is checked in the claim's transaction under a
  per-agent transaction lock, so hosts claiming at once never exceed it.
- Each scheduler heartbeats its host row every pass; wrappers heartbeat their run rows.
  A run whose host and own heartbeat are both older than HOST_TIMEOUT_SEC is dead and is
  reclaimed by any other host, exactly once (the row is locked, reported and deleted in
  one transaction).
- A wrapper whose run row is gone, or names another token, has been fenced: it stops its
  agent and reports nothing; a late result carries the old token and is ignored.
- NOTIFY on the ``tinyscheduler_wake`` channel wakes the daemons of every host.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from scheduler import clock
from scheduler.errors import InvalidTransition, SourceError
from scheduler.sources.base import RECLAIMED, Result
from scheduler.sources.postgres.db import Database
from scheduler.sources.postgres.schema import SCHEMA, ensure_schema

CHANNEL = "tinyscheduler_wake"
#: A daemon woken many times a second heartbeats its host at most this often.
HOST_HEARTBEAT_EVERY_SEC = 1.0
#: Namespace of the per-agent transaction locks that serialise global-limit checks.
_LIMIT_LOCK_SPACE = 0x7473


class GlobalLimitReached(InvalidTransition):
    """The agent already has its global number of runs across all hosts."""


def notify(cur: Any, why: str = "") -> None:
    """Wake every listening daemon when the caller's transaction commits."""
    cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, why[:100]))


class Coordinator:
    """Run rows, host rows and wake-ups of one host, over one :class:`Database`."""

    def __init__(self, db: Database, *, host: str,
                 global_limits: Mapping[str, int] | None = None,
                 host_timeout_sec: int = 120) -> None:
        self.db = db
        self.host = host
        self.global_limits = dict(global_limits or {})
        self.host_timeout_sec = host_timeout_sec
        self._last_heartbeat = float("-inf")
        self._last_reclaim_check = float("-inf")

    @classmethod
    def from_settings(cls, settings: Any, db: Database | None = None) -> Coordinator:
        db = db or Database(settings.database_url)
        ensure_schema(db)
        return cls(db, host=settings.hostname, global_limits=settings.global_limits,
                   host_timeout_sec=settings.host_timeout_sec)

    # -- inside a claim's or a result's transaction ----------------------------------------

    def claim_run(self, cur: Any, task_id: str, agent: str, attempt: int,
                  token: str) -> int:
        """Insert the run row of a claim; its fencing number. Raises
        :class:`GlobalLimitReached` or :class:`InvalidTransition` (a run exists)."""
        limit = self.global_limits.get(agent)
        if limit is not None:
            cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                        (_LIMIT_LOCK_SPACE, agent))
            cur.execute(f"SELECT count(*) FROM {SCHEMA}.runs WHERE agent = %s", (agent,))
            running = cur.fetchone()[0]
            if running >= limit:
                raise GlobalLimitReached(
                    f"task {task_id}: agent {agent} has {running} run(s) across all hosts; "
                    f"global limit {limit}")
        cur.execute(
            f"INSERT INTO {SCHEMA}.runs (task_id, host, agent, attempt, token) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (task_id) DO NOTHING RETURNING fence",
            (task_id, self.host, agent, attempt, token))
        row = cur.fetchone()
        if row is None:
            cur.execute(f"SELECT host FROM {SCHEMA}.runs WHERE task_id = %s", (task_id,))
            other = cur.fetchone()
            raise InvalidTransition(f"task {task_id} already runs on host "
                                    f"{other[0] if other else '?'}")
        return int(row[0])

    @staticmethod
    def end_run(cur: Any, task_id: str, token: str) -> bool:
        """Delete the run of this attempt (if it is still this attempt's)."""
        cur.execute(f"DELETE FROM {SCHEMA}.runs WHERE task_id = %s AND token = %s",
                    (task_id, token))
        return cur.rowcount > 0

    # -- each pass -----------------------------------------------------------------------

    def host_heartbeat_check(self) -> int:
        """Reachable, schema current: the schema version (raises SourceError)."""
        from scheduler.sources.postgres.schema import SCHEMA_VERSION

        ensure_schema(self.db)
        return SCHEMA_VERSION

    def host_heartbeat(self) -> None:
        """Record this host as alive (at most once a second: passes woken in a burst
        skip it)."""
        if time.monotonic() - self._last_heartbeat < HOST_HEARTBEAT_EVERY_SEC:
            return
        ensure_schema(self.db)
        with self.db.transaction() as cur:
            cur.execute(
                f"INSERT INTO {SCHEMA}.hosts (name, pid) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET heartbeat_at = now(), pid = EXCLUDED.pid",
                (self.host, os.getpid()))
        self._last_heartbeat = time.monotonic()

    def reclaim_dead(self, apply: Callable[[Any, Result], object]) -> list[Result]:
        """Reclaim the runs of dead hosts: for each, ``apply(cur, result)`` records a
        ``reclaimed`` result (an attempt) in the same transaction as the row's deletion.
        Another host reclaiming at once skips the locked rows: exactly once. Checked at
        most every HOST_TIMEOUT_SEC / 10 (a host is dead only after HOST_TIMEOUT_SEC)."""
        now = time.monotonic()
        if now - self._last_reclaim_check < self.host_timeout_sec / 10:
            return []
        self._last_reclaim_check = now
        timeout = f"{int(self.host_timeout_sec)} seconds"
        ensure_schema(self.db)
        with self.db.transaction() as cur:
            cur.execute(
                f"SELECT r.task_id, r.host, r.agent, r.attempt, r.token, r.fence "
                f"FROM {SCHEMA}.runs r LEFT JOIN {SCHEMA}.hosts h ON h.name = r.host "
                "WHERE r.host <> %s AND r.heartbeat_at < now() - %s::interval "
                "AND (h.heartbeat_at IS NULL OR h.heartbeat_at < now() - %s::interval) "
                "ORDER BY r.fence FOR UPDATE OF r SKIP LOCKED",
                (self.host, timeout, timeout))
            rows = cur.fetchall()
            results = []
            for task_id, host, agent, attempt, token, fence in rows:
                result = Result(
                    task_id=task_id, agent=agent, attempt=attempt, outcome=RECLAIMED,
                    token=token, host=host, finished_at=clock.now(),
                    summary=f"reclaimed: host {host} silent for more than "
                            f"{self.host_timeout_sec} s (attempt {attempt}, run {fence}, "
                            f"reclaimed by {self.host})",
                    detail={"reason": f"host {host} dead"})
                apply(cur, result)
                self.end_run(cur, task_id, token)
                results.append(result)
            if results:
                notify(cur, "reclaimed")
        return results

    # -- wrappers ------------------------------------------------------------------------

    def renew(self, task_id: str, token: str) -> bool:
        """Heartbeat this attempt's run; False when it is gone (fenced). Raises
        :class:`SourceError` when the server cannot be reached."""
        ensure_schema(self.db)
        with self.db.transaction() as cur:
            cur.execute(f"UPDATE {SCHEMA}.runs SET heartbeat_at = now() "
                        "WHERE task_id = %s AND token = %s", (task_id, token))
            return cur.rowcount > 0

    def run_of(self, task_id: str) -> dict | None:
        rows = self.db.query(f"SELECT host, agent, token, fence FROM {SCHEMA}.runs "
                             "WHERE task_id = %s", (task_id,))
        if not rows:
            return None
        host, agent, token, fence = rows[0]
        return {"host": host, "agent": agent, "token": token, "fence": fence}

    # -- status --------------------------------------------------------------------------

    def cluster(self) -> dict:
        """Hosts (last heartbeat, age, alive) and the runs of each, for ``status``."""
        ensure_schema(self.db)
        with self.db.transaction() as cur:
            cur.execute(f"SELECT name, pid, heartbeat_at, "
                        "extract(epoch FROM now() - heartbeat_at) "
                        f"FROM {SCHEMA}.hosts ORDER BY name")
            hosts = cur.fetchall()
            cur.execute(f"SELECT task_id, host, agent, attempt, fence, started_at, "
                        "extract(epoch FROM now() - heartbeat_at) "
                        f"FROM {SCHEMA}.runs ORDER BY host, fence")
            runs = cur.fetchall()
        by_host: dict[str, list[dict]] = {}
        for task_id, host, agent, attempt, fence, started, age in runs:
            by_host.setdefault(host, []).append({
                "task": task_id, "agent": agent, "attempt": attempt, "run": fence,
                "started_at": clock.to_iso(started), "heartbeat_age_sec": round(age, 1)})
        names = [h[0] for h in hosts] + sorted(set(by_host) - {h[0] for h in hosts})
        info = {h[0]: h for h in hosts}
        return {"hosts": [
            {"host": name,
             "heartbeat_at": clock.to_iso(info[name][2]) if name in info else None,
             "heartbeat_age_sec": round(info[name][3], 1) if name in info else None,
             "alive": name in info and info[name][3] <= self.host_timeout_sec,
             "runs": by_host.get(name, [])}
            for name in names]}

    def listener(self) -> Listener:
        return Listener(self.db)

    def close(self) -> None:
        self.db.close()


class Listener:
    """A daemon's LISTEN connection: a descriptor to wait on and a drain."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn = db.connect()
        try:
            self._conn.execute(f"LISTEN {CHANNEL}")
        except Exception as exc:
            self._conn.close()
            raise db.error(exc, "LISTEN") from None

    def fileno(self) -> int:
        return int(self._conn.pgconn.socket)

    def drain(self) -> int:
        """Consume what arrived; the number of notifications. Raises SourceError when
        the connection is gone (the caller then makes a new listener)."""
        pgconn = self._conn.pgconn
        try:
            pgconn.consume_input()
        except Exception as exc:
            raise SourceError(f"postgres {self._db.server}: wake-up channel lost: "
                              f"{' '.join(str(exc).split())}") from None
        count = 0
        while pgconn.notifies() is not None:
            count += 1
        return count

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception:
            pass

