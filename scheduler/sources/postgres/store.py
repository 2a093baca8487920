"""The PostgreSQL task store (``TASK_SOURCE=postgres``): the embedded store's model,
transitions, blockers, history and ``task`` CLI, shared by several hosts.

The rules (statuses, transitions, validation, import format, what a result does) are
those of :mod:`scheduler.sources.rules`, applied in one transaction per change with the
task row locked. A claim also inserts the run row (the global lease, with the global
limit checked) and a result deletes it, in the same transaction; changes that free work
NOTIFY the daemons of every host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from scheduler import clock as _clock
from scheduler.errors import InputError, InvalidTransition, SourceError, TaskNotFound
from scheduler.names import NAME_RULE, is_valid_name
from scheduler.sources.base import (
    ACTOR_SCHEDULER,
    CANCELLED,
    COMPLETE,
    FAILED,
    IDLE,
    LAUNCH_FAILED,
    WORKING,
    Applied,
    Health,
    Result,
    RetryPolicy,
    Task,
)
from scheduler.sources.postgres.coordinator import Coordinator, notify
from scheduler.sources.postgres.db import Database
from scheduler.sources.postgres.schema import (
    SCHEMA,
    SCHEMA_VERSION,
    current_version,
    ensure_schema,
)
from scheduler.sources.rules import (
    EDIT_FIELDS,
    MAX_DETAIL_BYTES,
    by_task_id,
    check_edit,
    check_edit_request,
    check_new_task,
    check_transition,
    decide_report,
    import_fields,
    int_id,
    missing_blockers,
    parse_blocker_ids,
    parse_import,
    task_filter,
    truncate_bytes,
)

T = f"{SCHEMA}.tasks"
B = f"{SCHEMA}.blockers"
H = f"{SCHEMA}.history"

_COLUMNS = f"""
    t.id, t.title, t.description, t.queue, t.assignee, t.status, t.priority, t.recipe,
    t.attempts, t.last_error, t.not_before, t.created_at, t.files,
    (SELECT array_agg(b.blocker_id ORDER BY b.blocker_id) FROM {B} b
     WHERE b.task_id = t.id) AS blocker_ids,
    EXISTS (SELECT 1 FROM {B} b JOIN {T} bt ON bt.id = b.blocker_id
            WHERE b.task_id = t.id AND bt.status <> 'complete') AS blocked,
    t.lease_token
"""
SELECT_TASKS = f"SELECT {_COLUMNS} FROM {T} t"
READY_QUEUE_SQL = (f"{SELECT_TASKS} WHERE t.status = 'idle' AND t.queue = %s "
                   "AND t.assignee IS NULL ORDER BY t.id")
READY_ASSIGNED_SQL = f"{SELECT_TASKS} WHERE t.assignee = %s AND t.status = 'idle' ORDER BY t.id"
#: A ready window: the idle tasks of one listing that are neither blocked nor in retry
#: backoff, in the planner's order after blocker counts (priority, age, id), the first few.
_WINDOW_WHERE = f"""t.status = 'idle' AND (t.not_before IS NULL OR t.not_before <= %s)
    AND NOT EXISTS (SELECT 1 FROM {B} b JOIN {T} bt ON bt.id = b.blocker_id
                    WHERE b.task_id = t.id AND bt.status <> 'complete')
    ORDER BY t.priority DESC, t.created_at, t.id LIMIT %s"""
WINDOW_QUEUE_SQL = (f"{SELECT_TASKS} WHERE t.queue = %s AND t.assignee IS NULL "
                    f"AND {_WINDOW_WHERE}")
WINDOW_ASSIGNED_SQL = f"{SELECT_TASKS} WHERE t.assignee = %s AND {_WINDOW_WHERE}"
#: Every blocker edge of an idle task, with its blocker's status: read from the blocker
#: table (usually far smaller than the backlog), each task looked up by its key. Scalar
#: subqueries cost about 2 µs per edge whatever the statistics say; a join is faster with
#: fresh statistics, but with none (a blocker table never analyzed) or stale ones it
#: hashed the whole task table: 18-44 ms per pass at 100,000 tasks.
IDLE_EDGES_SQL = f"""SELECT edge.task_id, edge.blocker_id, edge.blocker_status FROM (
    SELECT b.task_id, b.blocker_id,
        (SELECT t.status FROM {T} t WHERE t.id = b.task_id) AS task_status,
        (SELECT bt.status FROM {T} bt WHERE bt.id = b.blocker_id) AS blocker_status
    FROM {B} b) edge WHERE edge.task_status = 'idle'"""
_STATUS_COLUMNS = ("id, status, queue, assignee, attempts, lease_token, last_error, "
                   "runtime_sec, cost_usd")
_STATUS_KEYS = _STATUS_COLUMNS.split(", ")

def _row_to_task(row: tuple) -> Task:
    (task_id, title, description, queue, assignee, status, priority, recipe, attempts,
     last_error, not_before, created_at, files, blockers, blocked, lease_token) = row
    return Task(
        id=str(task_id), title=title, description=description, queue=queue,
        assignee=assignee, status=status, priority=priority, created_at=created_at,
        blocked_by=tuple(str(b) for b in blockers or ()), is_blocked=bool(blocked),
        recipe=recipe, attempts=attempts, not_before=not_before,
        parked=status == FAILED, last_error=last_error, files=tuple(files or ()),
        lease_token=lease_token,
    )


#: What :meth:`PostgresStore._by_id` makes of each row.
_Found = TypeVar("_Found")


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class PostgresStore:
    """The PostgreSQL task source, its management API and its coordinator."""

    name = "postgres"

    def __init__(self, url: str, *, host: str = "localhost",
                 global_limits: dict[str, int] | None = None, host_timeout_sec: int = 120,
                 clock: Callable[[], datetime] = _clock.now) -> None:
        self.db = Database(url)
        self.coordinator = Coordinator(self.db, host=host, global_limits=global_limits,
                                       host_timeout_sec=host_timeout_sec)
        self._now = clock

    @classmethod
    def from_settings(cls, settings: Any) -> PostgresStore:
        return cls(settings.database_url, host=settings.hostname,
                   global_limits=dict(settings.global_limits),
                   host_timeout_sec=settings.host_timeout_sec)

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self.db.server!r})"

    @property
    def server(self) -> str:
        return self.db.server

    # -- plumbing ------------------------------------------------------------------------

    def _tx(self) -> Any:
        ensure_schema(self.db)
        return self.db.transaction()

    def _query(self, sql: str, params: Any = ()) -> list[tuple]:
        ensure_schema(self.db)
        return self.db.query(sql, params)

    def _status_row(self, cur: Any, task_id: object, *, lock: bool = True) -> dict[str, Any]:
        number = int_id(task_id)
        row = None
        if number is not None:
            cur.execute(f"SELECT {_STATUS_COLUMNS} FROM {T} WHERE id = %s"
                        + (" FOR UPDATE" if lock else ""), (number,))
            row = cur.fetchone()
        if row is None:
            raise TaskNotFound(f"no task with id {task_id}")
        return dict(zip(_STATUS_KEYS, row, strict=True))

    def _move(self, cur: Any, row: dict[str, Any], to_status: str, *, action: str,
              actor: str, detail: str, **fields: Any) -> None:
        check_transition(str(row["id"]), row["status"], to_status, action)
        now = self._now()
        assignments = "".join(f", {name} = %s" for name in fields)
        cur.execute(f"UPDATE {T} SET status = %s, updated_at = %s{assignments} WHERE id = %s",
                    (to_status, now, *fields.values(), row["id"]))
        self._log(cur, row["id"], row["status"], to_status, actor, detail, now)

    @staticmethod
    def _log(cur: Any, task_id: int, from_status: str | None, to_status: str, actor: str,
             detail: str, at: datetime) -> None:
        cur.execute(f"INSERT INTO {H} (task_id, at, from_status, to_status, actor, detail) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    (task_id, at, from_status, to_status, actor,
                     truncate_bytes(detail or "", MAX_DETAIL_BYTES)))

    @staticmethod
    def _fetch(cur: Any, number: int) -> Task:
        cur.execute(f"{SELECT_TASKS} WHERE t.id = %s", (number,))
        row = cur.fetchone()
        if row is None:
            raise TaskNotFound(f"no task with id {number}")
        return _row_to_task(row)

    # -- TaskSource protocol -------------------------------------------------------------

    def assigned_idle(self, agent: str) -> list[Task]:
        return [_row_to_task(r) for r in self._query(READY_ASSIGNED_SQL, (agent,))]

    def queue_idle_unassigned(self, queue: str) -> list[Task]:
        return [_row_to_task(r) for r in self._query(READY_QUEUE_SQL, (queue,))]

    def ready_window(self, *, agent: str | None = None, queue: str | None = None,
                     limit: int) -> list[Task]:
        """The first ``limit`` ready tasks (idle, not blocked, not in retry backoff)
        assigned to ``agent``, or unassigned in ``queue``, by priority, age and id."""
        sql, name = (WINDOW_ASSIGNED_SQL, agent) if agent is not None else (
            WINDOW_QUEUE_SQL, queue)
        return [_row_to_task(r) for r in self._query(sql, (name, self._now(), limit))]

    def idle_blocker_edges(self) -> list[tuple[str, str, str]]:
        """(idle task, its blocker, the blocker's status) for every blocker of an idle
        task: what each task unblocks and which are blocked, without reading the backlog."""
        return [(str(task), str(blocker), status)
                for task, blocker, status in self._query(IDLE_EDGES_SQL)]

    def current(self, task_ids: list[str]) -> dict[str, Task | None]:
        return self._by_id(task_ids, f"{SELECT_TASKS} WHERE t.id", _row_to_task)

    def states(self, task_ids: list[str]) -> dict[str, tuple[str, str | None] | None]:
        """(status, assignee) of each task as it is now, None for one that is gone: what
        a pass asks about its running tasks, without reading whole tasks."""
        return self._by_id(task_ids, f"SELECT id, status, assignee FROM {T} WHERE id",
                           lambda row: (row[1], row[2]))

    def _by_id(self, task_ids: list[str], select: str,
               convert: Callable[[tuple], _Found]) -> dict[str, _Found | None]:
        """``convert(row)`` for each of ``task_ids`` (None for a task that is not here);
        ``select`` ends with the id column (the row's first), which ``= ANY`` follows."""
        return by_task_id(task_ids, lambda numbers: {
            row[0]: convert(row) for row in self._query(f"{select} = ANY(%s)", (numbers,))})

    def claimed(self) -> list[tuple[str, str | None]]:
        """(id, lease token) of every working task on any host, in id order: the cheap
        first look for stranded tasks (:meth:`working` reads whole tasks)."""
        return [(str(task_id), token) for task_id, token in self._query(
            f"SELECT id, lease_token FROM {T} WHERE status = 'working' ORDER BY id")]

    def working(self) -> list[Task]:
        """Every working task, on any host, with its lease token (a scheduler requeues only
        those under its own tokens)."""
        return [_row_to_task(r) for r in self._query(
            f"{SELECT_TASKS} WHERE t.status = 'working' ORDER BY t.id")]

    def claim(self, task_id: str, agent: str, token: str) -> None:
        """idle -> working and the run row, in one transaction; the task row is taken
        with SKIP LOCKED (another host claiming it at this moment wins)."""
        if not is_valid_name(agent):
            raise InputError(f"agent is {agent!r}; accepted: {NAME_RULE}")
        number = int_id(task_id)
        with self._tx() as cur:
            row = None
            if number is not None:
                cur.execute(f"SELECT {_STATUS_COLUMNS} FROM {T} WHERE id = %s "
                            "FOR UPDATE SKIP LOCKED", (number,))
                found = cur.fetchone()
                row = dict(zip(_STATUS_KEYS, found, strict=True)) if found else None
            if row is None:
                self._status_row(cur, task_id, lock=False)  # TaskNotFound if missing
                raise InvalidTransition(f"task {task_id} is being changed by another host")
            check_transition(str(row["id"]), row["status"], WORKING, "claim")
            fence = self.coordinator.claim_run(cur, str(row["id"]), agent,
                                               row["attempts"] + 1, token)
            self._move(cur, row, WORKING, action="claim", actor=ACTOR_SCHEDULER,
                       detail=f"claimed by {agent} on host {self.coordinator.host} "
                              f"(run {fence})",
                       assignee=agent, lease_token=token)

    def report(self, result: Result, policy: RetryPolicy) -> Applied:
        with self._tx() as cur:
            applied = self.apply_result(cur, result, policy)
        return applied

    def apply_result(self, cur: Any, result: Result, policy: RetryPolicy) -> Applied:
        """:meth:`report` inside the caller's transaction; the run row of the attempt goes
        whatever the result does (an ignored one included)."""
        self.coordinator.end_run(cur, str(result.task_id), result.token)
        try:
            row = self._status_row(cur, result.task_id)
        except TaskNotFound:
            return Applied("ignored", f"no task with id {result.task_id}")
        decision = decide_report(row, result, policy, self._now())
        if decision.to_status is not None:
            cur.execute(f"UPDATE {T} SET runtime_sec = runtime_sec + %s, cost_usd = cost_usd "
                        "+ %s, tokens_in = tokens_in + %s, tokens_out = tokens_out + %s "
                        "WHERE id = %s", (*decision.usage, row["id"]))
            self._move(cur, row, decision.to_status, action=decision.action,
                       actor=ACTOR_SCHEDULER, detail=decision.detail,
                       **decision.fields, lease_token=None)
            notify(cur, f"result {row['id']}")
        return decision.applied

    def reclaim_dead_hosts(self, policy: RetryPolicy) -> list[Result]:
        ensure_schema(self.db)
        return self.coordinator.reclaim_dead(
            lambda cur, result: self.apply_result(cur, result, policy))

    def health(self) -> Health:
        try:
            with self.db.transaction() as cur:
                version = current_version(cur)
                count = None
                if version:
                    cur.execute(f"SELECT count(*) FROM {T}")
                    count = cur.fetchone()[0]
        except (SourceError, OSError) as exc:
            return Health(False, str(exc))
        if version != SCHEMA_VERSION:
            state = "not created yet" if version == 0 else f"v{version}"
            return Health(version < SCHEMA_VERSION,
                          f"postgres {self.server}: schema {state}, this tinyscheduler uses "
                          f"v{SCHEMA_VERSION} (migrated at first use)"
                          if version < SCHEMA_VERSION else
                          f"postgres {self.server}: schema v{version} is newer than this "
                          f"tinyscheduler supports (v{SCHEMA_VERSION}); upgrade tinyscheduler")
        return Health(True, f"postgres {self.server}: {count} tasks, schema v{version}")

    def before_fork(self) -> None:
        """A child must never use (or close) this process's session: drop it; the next
        call reconnects."""
        self.db.close()

    def close(self) -> None:
        self.db.close()

    # -- management API ------------------------------------------------------------------

    def add_task(self, title: str, *, description: str = "", queue: str | None = None,
                 assignee: str | None = None, priority: int = 0,
                 blocked_by: Iterable[str] = (), recipe: str | None = None,
                 files: Iterable[str] = (), actor: str = "cli") -> Task:
        patterns, blocker_numbers = check_new_task(
            title=title, description=description, queue=queue, assignee=assignee,
            priority=priority, recipe=recipe, files=files, blocked_by=blocked_by)
        with self._tx() as cur:
            self._check_exist(cur, blocker_numbers, "blocked_by")
            number = self._insert(cur, title=title.strip(), description=description,
                                  queue=queue, assignee=assignee, priority=priority,
                                  recipe=recipe, files=patterns, actor=actor)
            self._block(cur, number, blocker_numbers)
            notify(cur, "added")
            return self._fetch(cur, number)

    @staticmethod
    def _block(cur: Any, number: int, blockers: Iterable[int]) -> None:
        for blocker in sorted(set(blockers)):
            cur.execute(f"INSERT INTO {B} (task_id, blocker_id) VALUES (%s, %s) "
                        "ON CONFLICT DO NOTHING", (number, blocker))

    def add_blockers(self, task_id: str, blocker_ids: Iterable[str],
                     actor: str = "cli") -> Task:
        numbers, bad = parse_blocker_ids(blocker_ids)
        if bad:
            raise InputError(f"blocked_by {bad[0]!r} is not a task id; accepted: the id of an "
                             "existing task")
        with self._tx() as cur:
            # One writer of the blocker graph at a time, so two hosts cannot close a cycle.
            cur.execute(f"LOCK TABLE {B} IN SHARE ROW EXCLUSIVE MODE")
            row = self._status_row(cur, task_id)
            self._check_exist(cur, numbers, "blocked_by")
            for blocker in sorted(numbers):
                if blocker == row["id"] or self._reaches(cur, blocker, row["id"]):
                    raise InputError(f"task {blocker} cannot block task {row['id']}: task "
                                     f"{row['id']} would (transitively) block itself")
            self._block(cur, row["id"], numbers)
            self._log(cur, row["id"], row["status"], row["status"], actor,
                      "now blocked by " + ", ".join(str(n) for n in sorted(numbers)),
                      self._now())
            return self._fetch(cur, row["id"])

    @staticmethod
    def _reaches(cur: Any, start: int, target: int) -> bool:
        cur.execute(f"WITH RECURSIVE up(id) AS (SELECT %s::bigint UNION "
                    f"SELECT b.blocker_id FROM {B} b JOIN up ON b.task_id = up.id) "
                    "SELECT 1 FROM up WHERE id = %s LIMIT 1", (start, target))
        return cur.fetchone() is not None

    @staticmethod
    def _missing(cur: Any, numbers: Iterable[int]) -> set[int]:
        wanted = sorted(set(numbers))
        if not wanted:
            return set()
        cur.execute(f"SELECT id FROM {T} WHERE id = ANY(%s)", (wanted,))
        return set(wanted) - {r[0] for r in cur.fetchall()}

    def _check_exist(self, cur: Any, numbers: Iterable[int], what: str) -> None:
        missing = self._missing(cur, numbers)
        if missing:
            raise InputError(f"{what}: no task with id "
                             + ", ".join(str(n) for n in sorted(missing)))

    def _insert(self, cur: Any, *, title: str, description: str, queue: str | None,
                assignee: str | None, priority: int, recipe: str | None, actor: str,
                files: tuple[str, ...] = (), status: str = IDLE, attempts: int = 0,
                last_error: str | None = None,
                result_summary: str | None = None, created_at: datetime | None = None,
                history: list[dict] | None = None, runtime_sec: float = 0.0,
                cost_usd: float = 0.0, tokens_in: int = 0, tokens_out: int = 0) -> int:
        now = self._now()
        cur.execute(
            f"INSERT INTO {T} (title, description, queue, assignee, status, priority, recipe, "
            "attempts, last_error, result_summary, created_at, updated_at, runtime_sec, "
            "cost_usd, tokens_in, tokens_out, files) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
            "%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (title, description, queue, assignee, status, priority, recipe, attempts,
             last_error, result_summary, created_at or now, now, runtime_sec, cost_usd,
             tokens_in, tokens_out, list(files)))
        number = int(cur.fetchone()[0])
        for entry in history or []:
            self._log(cur, number, entry.get("from_status"), entry["to_status"],
                      entry["actor"], entry.get("detail") or "",
                      _clock.from_iso(entry["at"]))
        if not history:
            self._log(cur, number, None, IDLE, actor, "added", now)
        return number

    def get(self, task_id: str) -> Task:
        number = int_id(task_id)
        rows = self._query(f"{SELECT_TASKS} WHERE t.id = %s", (number,)) if number else []
        if not rows:
            raise TaskNotFound(f"no task with id {task_id}")
        return _row_to_task(rows[0])

    def details(self, task_id: str) -> dict[str, Any]:
        number = int_id(task_id)
        rows = self._query(f"SELECT result_summary, updated_at, runtime_sec, cost_usd, "
                           f"tokens_in, tokens_out FROM {T} WHERE id = %s",
                           (number,)) if number else []
        if not rows:
            raise TaskNotFound(f"no task with id {task_id}")
        summary, updated, runtime, cost, tokens_in, tokens_out = rows[0]
        return {"result_summary": summary, "updated_at": _clock.to_iso(updated),
                "runtime_sec": runtime, "cost_usd": cost, "tokens_in": tokens_in,
                "tokens_out": tokens_out}

    def list_tasks(self, *, status: str | None = None, queue: str | None = None,
                   assignee: str | None = None) -> list[Task]:
        where, params = task_filter("%s", status=status, queue=queue, assignee=assignee)
        return [_row_to_task(r)
                for r in self._query(f"{SELECT_TASKS}{where} ORDER BY t.id", params)]

    def history(self, task_id: str) -> list[dict[str, Any]]:
        number = self.get(task_id).id
        return [
            {"at": _clock.to_iso(_aware(at)), "from_status": from_status,
             "to_status": to_status, "actor": actor, "detail": detail}
            for at, from_status, to_status, actor, detail in self._query(
                f"SELECT at, from_status, to_status, actor, detail FROM {H} "
                "WHERE task_id = %s ORDER BY id", (int(number),))
        ]

    def blockers_of(self, task_id: str) -> list[str]:
        number = self.get(task_id).id
        return [str(r[0]) for r in self._query(
            f"SELECT blocker_id FROM {B} WHERE task_id = %s ORDER BY blocker_id",
            (int(number),))]

    def blocking(self, task_id: str) -> list[str]:
        number = self.get(task_id).id
        return [str(r[0]) for r in self._query(
            f"SELECT task_id FROM {B} WHERE blocker_id = %s ORDER BY task_id",
            (int(number),))]

    def note(self, task_id: str, text: str, actor: str = "tinyscheduler") -> None:
        """A history row that changes nothing (e.g. "merging", "reverted")."""
        with self._tx() as cur:
            row = self._status_row(cur, task_id, lock=False)
            self._log(cur, row["id"], row["status"], row["status"], actor, text, self._now())

    def retry(self, task_id: str, actor: str = "cli") -> Task:
        with self._tx() as cur:
            row = self._status_row(cur, task_id)
            detail = "retried"
            if row["last_error"]:
                detail += f"; previous error: {row['last_error']}"
            assignee = None if row["queue"] is not None else row["assignee"]
            self._move(cur, row, IDLE, action="retry", actor=actor, detail=detail,
                       attempts=0, not_before=None, last_error=None, lease_token=None,
                       assignee=assignee)
            notify(cur, "retried")
            return self._fetch(cur, row["id"])

    def cancel(self, task_id: str, actor: str = "cli", detail: str = "") -> Task:
        with self._tx() as cur:
            row = self._status_row(cur, task_id)
            self._move(cur, row, CANCELLED, action="cancel", actor=actor,
                       detail=detail or "cancelled", lease_token=None)
            notify(cur, "cancelled")
            return self._fetch(cur, row["id"])

    def run_counts(self, task_ids: Iterable[str]) -> dict[str, int]:
        """How many times each task was started (claims in its history)."""
        numbers = sorted({n for n in (int_id(t) for t in task_ids) if n is not None})
        counts = {str(n): 0 for n in numbers}
        if numbers:
            for task_id, count in self._query(
                    f"SELECT task_id, count(*) FROM {H} WHERE to_status = 'working' AND "
                    "from_status = 'idle' AND task_id = ANY(%s) GROUP BY task_id", (numbers,)):
                counts[str(task_id)] = count
        return counts

    def idle_unrunnable(self, agents: Sequence[str], queues: Sequence[str] | None,
                        limit: int = 100) -> list[Task]:
        """Idle tasks no agent can take (see the embedded store)."""
        return [_row_to_task(r) for r in self._query(
            f"{SELECT_TASKS} WHERE t.status = 'idle' AND ("
            "(t.assignee IS NOT NULL AND NOT t.assignee = ANY(%s)) OR "
            "(t.assignee IS NULL AND (t.queue IS NULL OR NOT t.queue = ANY(%s)))) "
            "ORDER BY t.id LIMIT %s", (list(agents), list(queues or ()), limit))]

    def launch_failures(self, after: str, until: str, limit: int = 20) -> list[tuple[str, str]]:
        """(task id, why) of attempts whose agent could not start, recorded after
        ``after`` and up to ``until`` (ISO times)."""
        rows = self._query(
            f"SELECT task_id, detail FROM {H} WHERE at > %s AND at <= %s AND detail LIKE %s "
            "ORDER BY id LIMIT %s", (_clock.from_iso(after), _clock.from_iso(until),
                                     f"{LAUNCH_FAILED}:%", limit))
        found = []
        for task_id, detail in rows:
            lines = detail.splitlines()
            reasons = [line[len("reason: "):] for line in lines if line.startswith("reason: ")]
            found.append((str(task_id), reasons[0] if reasons else lines[0]))
        return found

    def edit(self, task_id: str, changes: dict[str, Any], *, block: Iterable[str] = (),
             unblock: Iterable[str] = (), actor: str = "cli") -> Task:
        """Change the fields and blockers of a task that is not working or complete (the
        rules of the embedded store); one history row says what changed."""
        check_edit_request(changes)
        with self._tx() as cur:
            cur.execute(f"LOCK TABLE {B} IN SHARE ROW EXCLUSIVE MODE")
            row = self._status_row(cur, task_id)
            cur.execute(f"SELECT {', '.join(EDIT_FIELDS)} FROM {T} WHERE id = %s",
                        (row["id"],))
            current = dict(zip(EDIT_FIELDS, cur.fetchone(), strict=True))
            wanted, add_numbers, drop_numbers, said = check_edit(dict(row), current, changes,
                                                                 block, unblock)
            self._check_exist(cur, add_numbers, "blocked_by")
            for blocker in sorted(add_numbers):
                if blocker == row["id"] or self._reaches(cur, blocker, row["id"]):
                    raise InputError(f"task {blocker} cannot block task {row['id']}: task "
                                     f"{row['id']} would (transitively) block itself")
                cur.execute(f"INSERT INTO {B} (task_id, blocker_id) VALUES (%s, %s) "
                            "ON CONFLICT DO NOTHING", (row["id"], blocker))
                if cur.rowcount:
                    said.append(f"now blocked by {blocker}")
            for blocker in sorted(drop_numbers):
                cur.execute(f"DELETE FROM {B} WHERE task_id = %s AND blocker_id = %s",
                            (row["id"], blocker))
                if not cur.rowcount:
                    raise InputError(f"task {row['id']} is not blocked by {blocker}; nothing "
                                     "to unblock")
                said.append(f"no longer blocked by {blocker}")
            if not said:
                raise InputError(f"task {row['id']}: nothing to change (give a new value)")
            now = self._now()
            cur.execute(f"UPDATE {T} SET title = %s, description = %s, queue = %s, "
                        "assignee = %s, priority = %s, recipe = %s, updated_at = %s "
                        "WHERE id = %s",
                        (*(wanted[name] for name in EDIT_FIELDS), now, row["id"]))
            self._log(cur, row["id"], row["status"], row["status"], actor,
                      "edited: " + "; ".join(said), now)
            notify(cur, "edited")
            return self._fetch(cur, row["id"])

    def delete(self, task_id: str) -> Task:
        """Remove a task that never ran, with its history (see the embedded store)."""
        with self._tx() as cur:
            row = self._status_row(cur, task_id)
            found = self._fetch(cur, row["id"])
            cur.execute(f"SELECT 1 FROM {H} WHERE task_id = %s AND to_status = %s LIMIT 1",
                        (row["id"], WORKING))
            if cur.fetchone() or row["status"] not in (IDLE, CANCELLED):
                raise InvalidTransition(
                    f"task {row['id']} has run, so its history is kept; accepted: a task "
                    "that never ran (cancel a task to stop it for good; 'task prune' "
                    "removes finished ones)")
            cur.execute(f"SELECT DISTINCT task_id FROM {B} WHERE blocker_id = %s "
                        "ORDER BY task_id", (row["id"],))
            waiting = [str(r[0]) for r in cur.fetchall()]
            if waiting:
                raise InputError(f"task {row['id']} is a blocker of task {', '.join(waiting)}; "
                                 f"remove it there first ('task edit {waiting[0]} --unblock "
                                 f"{row['id']}')")
            self._remove(cur, [row["id"]])
            return found

    def prune(self, older_than: timedelta, *,
              dry_run: bool = False) -> tuple[list[str], list[str]]:
        """Remove complete and cancelled tasks finished longer than ``older_than`` ago
        (kept: those a task not complete still waits for). (removed ids, kept ids)."""
        cutoff = self._now() - older_than
        with self._tx() as cur:
            cur.execute(f"SELECT id FROM {T} WHERE status IN (%s, %s) AND updated_at < %s "
                        "ORDER BY id FOR UPDATE", (COMPLETE, CANCELLED, cutoff))
            candidates = [r[0] for r in cur.fetchall()]
            cur.execute(f"SELECT DISTINCT b.blocker_id FROM {B} b JOIN {T} t ON t.id = "
                        "b.task_id WHERE b.blocker_id = ANY(%s) AND t.status <> %s",
                        (candidates, COMPLETE))
            waited = {r[0] for r in cur.fetchall()}
            removed = [n for n in candidates if n not in waited]
            if not dry_run:
                self._remove(cur, removed)
        return [str(n) for n in removed], [str(n) for n in sorted(waited)]

    @staticmethod
    def _remove(cur: Any, numbers: list[int]) -> None:
        """Delete tasks, their blocker edges, then their history (allowed once the task row
        is gone; the history's foreign key is checked at commit)."""
        if not numbers:
            return
        cur.execute("SET CONSTRAINTS ALL DEFERRED")
        cur.execute(f"DELETE FROM {B} WHERE task_id = ANY(%s) OR blocker_id = ANY(%s)",
                    (numbers, numbers))
        cur.execute(f"DELETE FROM {T} WHERE id = ANY(%s)", (numbers,))
        cur.execute(f"DELETE FROM {H} WHERE task_id = ANY(%s)", (numbers,))

    def import_tasks(self, specs: list, actor: str = "import") -> list[Task]:
        """Add every task of ``specs`` or none (see the embedded store); items exported
        with ``task export`` keep their status, attempts, result and history."""
        parsed = parse_import(specs)
        with self._tx() as cur:
            missing = self._missing(cur, (n for _, existing, _ in parsed for n in existing))
            if missing:
                raise missing_blockers(parsed, missing)
            numbers = [self._insert(cur, actor=actor, **import_fields(spec))
                       for spec, _, _ in parsed]
            for number, (_, existing, refs) in zip(numbers, parsed, strict=True):
                self._block(cur, number, set(existing) | {numbers[r] for r in refs})
            notify(cur, "imported")
            return [self._fetch(cur, number) for number in numbers]
