"""The embedded task source (``TASK_SOURCE=local``): SQLite at ``TASKS_DB``.

Tasks have a queue, an assignee, a priority, any number of blockers, an attempt counter,
a retry time (``not_before``) and a result; every status change is validated against a
small state machine, runs in one ``BEGIN IMMEDIATE`` transaction and appends a row to the
``history`` table, which is append-only (triggers refuse UPDATE and DELETE).

``task edit`` changes the fields of a task that is not running; ``task delete`` removes a
task that never ran, ``task prune`` finished tasks, each with its history.

Allowed changes: idle -> working (claim); working -> complete, idle (requeued with a
retry time), failed (parked after the last attempt) or cancelled; idle -> cancelled;
failed or cancelled -> idle (retry, attempts reset).

One :class:`LocalStore` holds one connection, opened lazily in the process that uses it;
a forked child never reuses its parent's connection (it opens its own).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from scheduler import clock as _clock
from scheduler.errors import (
    InputError,
    InvalidTransition,
    SourceError,
    TaskNotFound,
    UnsafePath,
)
from scheduler.fsutil import ensure_private_dir, open_private
from scheduler.names import NAME_RULE, is_valid_name
from scheduler.sources.base import (
    ACTOR_SCHEDULER,
    CANCELLED,
    COMPLETE,
    IDLE,
    LAUNCH_FAILED,
    WORKING,
    Applied,
    Health,
    Result,
    RetryPolicy,
    Task,
)
from scheduler.sources.rules import (  # noqa: F401 - re-exported for callers of this module
    EDIT_FIELDS,
    FAILED,
    IMPORT_FIELDS,
    MAX_DESCRIPTION_BYTES,
    MAX_DETAIL_BYTES,
    MAX_ERROR_CHARS,
    MAX_TITLE_CHARS,
    RECIPE_RULE,
    STATUSES,
    TRANSITIONS,
    by_task_id,
    check_edit,
    check_edit_request,
    check_files,
    check_new_task,
    check_spec,
    check_transition,
    decide_report,
    field_errors,
    import_fields,
    int_id,
    is_valid_recipe,
    missing_blockers,
    parse_blocker_ids,
    parse_import,
    ref_cycles,
    task_filter,
    truncate_bytes,
)

BUSY_TIMEOUT_MS = 5000
#: Ids per ``IN (...)`` list, well under SQLite's bound-parameter limit.
CHUNK = 500



# --- schema -----------------------------------------------------------------------------


def _migration_1(conn: sqlite3.Connection) -> None:
    statuses = ", ".join(f"'{status}'" for status in STATUSES)
    for statement in (
        f"""CREATE TABLE tasks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            title TEXT NOT NULL CHECK (length(title) BETWEEN 1 AND {MAX_TITLE_CHARS}),
            description TEXT NOT NULL DEFAULT '',
            queue TEXT,
            assignee TEXT,
            status TEXT NOT NULL DEFAULT 'idle' CHECK (status IN ({statuses})),
            priority INTEGER NOT NULL DEFAULT 0,
            recipe TEXT,
            attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            last_error TEXT,
            result_summary TEXT,
            lease_token TEXT,
            not_before TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )""",
        # The primary key serves "what does this task wait for" (the ready query);
        # the blocker index serves "what waits for this task".
        """CREATE TABLE blockers (
            task_id INTEGER NOT NULL REFERENCES tasks(id),
            blocker_id INTEGER NOT NULL REFERENCES tasks(id),
            PRIMARY KEY (task_id, blocker_id),
            CHECK (task_id != blocker_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX idx_blockers_blocker ON blockers(blocker_id)",
        "CREATE INDEX idx_tasks_status_queue_assignee ON tasks(status, queue, assignee)",
        "CREATE INDEX idx_tasks_assignee_status ON tasks(assignee, status)",
        """CREATE TABLE history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            task_id INTEGER NOT NULL REFERENCES tasks(id),
            at TEXT NOT NULL,
            from_status TEXT,
            to_status TEXT NOT NULL,
            actor TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX idx_history_task ON history(task_id, id)",
        """CREATE TRIGGER history_append_only_update BEFORE UPDATE ON history
           BEGIN SELECT RAISE(ABORT, 'history is append-only'); END""",
        """CREATE TRIGGER history_append_only_delete BEFORE DELETE ON history
           BEGIN SELECT RAISE(ABORT, 'history is append-only'); END""",
    ):
        conn.execute(statement)


def _migration_2(conn: sqlite3.Connection) -> None:
    """What a task's attempts have used so far: runtime, cost and tokens (budgets)."""
    for column in ("runtime_sec REAL NOT NULL DEFAULT 0", "cost_usd REAL NOT NULL DEFAULT 0",
                   "tokens_in INTEGER NOT NULL DEFAULT 0",
                   "tokens_out INTEGER NOT NULL DEFAULT 0"):
        conn.execute(f"ALTER TABLE tasks ADD COLUMN {column}")


def _migration_3(conn: sqlite3.Connection) -> None:
    """Declared files: a JSON array of the patterns a task expects to touch."""
    conn.execute("ALTER TABLE tasks ADD COLUMN files TEXT NOT NULL DEFAULT ''")


def _migration_4(conn: sqlite3.Connection) -> None:
    """History stays append-only while its task exists; ``task delete`` and ``task prune``
    remove a task's rows together with the task (task row first, in one transaction)."""
    conn.execute("DROP TRIGGER history_append_only_delete")
    conn.execute(
        """CREATE TRIGGER history_append_only_delete BEFORE DELETE ON history
           WHEN EXISTS (SELECT 1 FROM tasks WHERE id = OLD.task_id)
           BEGIN SELECT RAISE(ABORT, 'history is append-only'); END""")


def _migration_5(conn: sqlite3.Connection) -> None:
    """The merge queue: the commit a task's work landed as, the target's commit before
    it, and the files it changed."""
    conn.execute("ALTER TABLE tasks ADD COLUMN merge_commit TEXT")
    conn.execute("ALTER TABLE tasks ADD COLUMN merge_base TEXT")
    conn.execute("ALTER TABLE tasks ADD COLUMN changed_files TEXT NOT NULL DEFAULT ''")


def _migration_6(conn: sqlite3.Connection) -> None:
    """Ready windows: idle tasks of a queue or an agent in the planner's order (priority,
    age, id), read from an index and stopped after the first few; the old two indexes
    are prefixes of these. History by time: each pass looks for the launch failures
    since the previous one."""
    conn.execute("DROP INDEX idx_tasks_status_queue_assignee")
    conn.execute("DROP INDEX idx_tasks_assignee_status")
    conn.execute("CREATE INDEX idx_tasks_ready_queue ON tasks"
                 "(status, queue, assignee, priority DESC, created_at, id)")
    conn.execute("CREATE INDEX idx_tasks_ready_assignee ON tasks"
                 "(assignee, status, priority DESC, created_at, id)")
    conn.execute("CREATE INDEX idx_history_at ON history(at)")


#: Forward migrations; ``PRAGMA user_version`` is the number applied. Append, never edit.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migration_1, _migration_2,
                                                          _migration_3, _migration_4,
                                                          _migration_5, _migration_6]
SCHEMA_VERSION = len(MIGRATIONS)


# --- queries ----------------------------------------------------------------------------

_COLUMNS = """
    t.id, t.title, t.description, t.queue, t.assignee, t.status, t.priority, t.recipe,
    t.attempts, t.last_error, t.not_before, t.created_at, t.files,
    (SELECT group_concat(b.blocker_id) FROM blockers b WHERE b.task_id = t.id) AS blocker_ids,
    EXISTS (SELECT 1 FROM blockers b JOIN tasks bt ON bt.id = b.blocker_id
            WHERE b.task_id = t.id AND bt.status != 'complete') AS blocked,
    t.lease_token
"""
SELECT_TASKS = f"SELECT {_COLUMNS} FROM tasks t"
READY_QUEUE_SQL = (
    f"{SELECT_TASKS} WHERE t.status = 'idle' AND t.queue = ? AND t.assignee IS NULL"
    " ORDER BY t.id"
)
READY_ASSIGNED_SQL = (
    f"{SELECT_TASKS} WHERE t.assignee = ? AND t.status = 'idle' ORDER BY t.id"
)
#: A ready window: the idle tasks of one listing that are neither blocked nor in retry
#: backoff, in the planner's order after blocker counts (priority, age, id), the first few.
_WINDOW_WHERE = """t.status = 'idle' AND (t.not_before IS NULL OR t.not_before <= ?)
    AND NOT EXISTS (SELECT 1 FROM blockers b JOIN tasks bt ON bt.id = b.blocker_id
                    WHERE b.task_id = t.id AND bt.status != 'complete')
    ORDER BY t.priority DESC, t.created_at, t.id LIMIT ?"""
WINDOW_QUEUE_SQL = f"{SELECT_TASKS} WHERE t.queue = ? AND t.assignee IS NULL AND {_WINDOW_WHERE}"
WINDOW_ASSIGNED_SQL = f"{SELECT_TASKS} WHERE t.assignee = ? AND {_WINDOW_WHERE}"
#: Every blocker edge of an idle task, with its blocker's status. Read from the blocker
#: table (usually far smaller than the backlog: most tasks wait for nothing).
IDLE_EDGES_SQL = """
    SELECT b.task_id, b.blocker_id, bt.status FROM blockers b
    CROSS JOIN tasks t ON t.id = b.task_id JOIN tasks bt ON bt.id = b.blocker_id
    WHERE t.status = 'idle'
"""
#: Tasks per queue, status, blocked and in retry backoff (idle ones only); see backlog_counts.
BACKLOG_SQL = """
    SELECT t.queue, t.status,
        t.status = 'idle' AND EXISTS (SELECT 1 FROM blockers b JOIN tasks bt ON bt.id = b.blocker_id
                                      WHERE b.task_id = t.id AND bt.status != 'complete'),
        t.status = 'idle' AND t.not_before IS NOT NULL AND t.not_before > ?,
        count(*)
    FROM tasks t GROUP BY 1, 2, 3, 4
"""
BACKLOG_KINDS = ("ready", "blocked", "backoff", "working", "parked", "complete", "cancelled")
BLOCKING_SQL = "SELECT task_id FROM blockers WHERE blocker_id = ? ORDER BY task_id"
BLOCKERS_OF_SQL = "SELECT blocker_id FROM blockers WHERE task_id = ? ORDER BY blocker_id"


def _parse_time(text: str | None) -> datetime | None:
    """Times this store wrote itself (``...Z``, see clock.to_iso); anything else via
    clock.from_iso. The fast path matters: ready lists convert thousands of rows."""
    if not text:
        return None
    if text[-1] == "Z":
        try:
            return datetime.fromisoformat(text[:-1]).replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    return _clock.from_iso(text)


def _row_to_task(row: Sequence[Any]) -> Task:
    """One row of ``SELECT_TASKS`` (a tuple or sqlite3.Row), read by position."""
    (task_id, title, description, queue, assignee, status, priority, recipe, attempts,
     last_error, not_before, created_at, files, blockers, blocked, lease_token) = row
    blocked_by = tuple(str(i) for i in sorted(int(x) for x in blockers.split(","))) \
        if blockers else ()
    return Task(
        id=str(task_id), title=title, description=description, queue=queue,
        assignee=assignee, status=status, priority=priority,
        created_at=_parse_time(created_at), blocked_by=blocked_by, is_blocked=bool(blocked),
        recipe=recipe, attempts=attempts, not_before=_parse_time(not_before),
        parked=status == FAILED, last_error=last_error,
        files=tuple(json.loads(files)) if files else (), lease_token=lease_token,
    )


# --- the store --------------------------------------------------------------------------

_Found = TypeVar("_Found")

#: Connections inherited through fork: kept referenced so a child never finalizes
#: (closes) its parent's connection; the child opens its own.
_INHERITED: list[sqlite3.Connection] = []


class LocalStore:
    """The local task source and its management API (``tinyscheduler task ...``)."""

    name = "local"
    coordinator = None  #: one host: the lease files are the whole truth

    def __init__(self, path: Path, *, clock: Callable[[], datetime] = _clock.now) -> None:
        self.path = Path(path)
        self._now = clock
        self._conn: sqlite3.Connection | None = None
        self._pid = 0

    @classmethod
    def from_settings(cls, settings: Any) -> LocalStore:
        return cls(settings.tasks_db)

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.path)!r})"

    # -- connection ----------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid != os.getpid():
            _INHERITED.append(self._conn)
            self._conn = None
        if self._conn is None:
            try:
                self._conn = self._open()
            except sqlite3.Error as exc:
                raise SourceError(f"local store {self.path}: cannot open: {exc}") from None
            self._pid = os.getpid()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        try:
            ensure_private_dir(self.path.parent)
            # The database and SQLite's side files must be regular files of this user
            # (created 0600): SQLite would follow a link planted at any of them.
            for suffix in ("", "-wal", "-shm", "-journal"):
                try:
                    os.close(open_private(f"{self.path}{suffix}", os.O_RDWR,
                                          create=not suffix))
                except FileNotFoundError:
                    pass
        except UnsafePath:
            raise
        except OSError as exc:
            raise SourceError(f"local store {self.path}: cannot create: {exc}") from None
        conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000,
                               isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise SourceError(f"local store {self.path}: cannot enable WAL (mode {mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # re-read, locked
            if version > SCHEMA_VERSION:
                raise SourceError(
                    f"local store {self.path}: schema v{version} is newer than this "
                    f"tinyscheduler supports (v{SCHEMA_VERSION}); upgrade tinyscheduler"
                )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[number - 1](conn)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def before_fork(self) -> None:
        """SQLite forbids carrying an open connection across fork(): close it; the next
        call reopens it."""
        self.close()

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    @contextmanager
    def _write(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction; SQLite errors become :class:`SourceError`.

        The store runs with ``synchronous=NORMAL`` (in WAL mode a commit is not fsynced
        and may roll back after a power loss); a ``durable`` transaction is committed
        with ``synchronous=FULL``, so it is on disk when this returns."""
        conn = self._connection()
        try:
            if durable:
                conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._normal_sync(conn, durable)
            raise SourceError(f"local store {self.path}: {exc}") from None
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise SourceError(f"local store {self.path}: {exc}") from None
            raise
        finally:
            self._normal_sync(conn, durable)

    @staticmethod
    def _normal_sync(conn: sqlite3.Connection, durable: bool) -> None:
        if durable:
            try:
                conn.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.Error:
                pass  # the connection is broken: it is reopened with NORMAL anyway

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several statements."""
        conn = self._connection()
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise SourceError(f"local store {self.path}: {exc}") from None

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise SourceError(f"local store {self.path}: {exc}") from None

    # -- helpers used inside transactions ------------------------------------------------

    def _iso_now(self) -> str:
        return _clock.to_iso(self._now())

    @staticmethod
    def _status_row(conn: sqlite3.Connection, task_id: object) -> sqlite3.Row:
        number = int_id(task_id)
        row = None
        if number is not None:
            row = conn.execute(
                "SELECT id, status, queue, assignee, attempts, lease_token, last_error, "
                "runtime_sec, cost_usd FROM tasks WHERE id = ?", (number,)).fetchone()
        if row is None:
            raise TaskNotFound(f"no task with id {task_id}")
        return row

    def _move(self, conn: sqlite3.Connection, row: sqlite3.Row, to_status: str, *,
              action: str, actor: str, detail: str, **fields: Any) -> str:
        """Validate and apply one status change with its field updates and history row."""
        check_transition(str(row["id"]), row["status"], to_status, action)
        now = self._iso_now()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        sql = "UPDATE tasks SET status = ?, updated_at = ?"
        sql += f", {assignments}" if assignments else ""
        conn.execute(sql + " WHERE id = ?", (to_status, now, *fields.values(), row["id"]))
        self._log(conn, row["id"], row["status"], to_status, actor, detail, now)
        return now

    @staticmethod
    def _log(conn: sqlite3.Connection, task_id: int, from_status: str | None,
             to_status: str, actor: str, detail: str, at: str) -> None:
        conn.execute(
            "INSERT INTO history (task_id, at, from_status, to_status, actor, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (task_id, at, from_status, to_status, actor,
             truncate_bytes(detail or "", MAX_DETAIL_BYTES)),
        )

    def _fetch(self, conn: sqlite3.Connection, number: int) -> Task:
        row = conn.execute(f"{SELECT_TASKS} WHERE t.id = ?", (number,)).fetchone()
        if row is None:
            raise TaskNotFound(f"no task with id {number}")
        return _row_to_task(row)

    # -- TaskSource protocol -------------------------------------------------------------

    def assigned_idle(self, agent: str) -> list[Task]:
        return self._ready(READY_ASSIGNED_SQL, agent)

    def queue_idle_unassigned(self, queue: str) -> list[Task]:
        return self._ready(READY_QUEUE_SQL, queue)

    def _ready(self, sql: str, name: str) -> list[Task]:
        """A ready list, read as plain tuples (no sqlite3.Row: thousands of rows a pass)."""
        try:
            cursor = self._connection().cursor()
            cursor.row_factory = None
            rows = cursor.execute(sql, (name,)).fetchall()
        except sqlite3.Error as exc:
            raise SourceError(f"local store {self.path}: {exc}") from None
        return [_row_to_task(row) for row in rows]

    def ready_window(self, *, agent: str | None = None, queue: str | None = None,
                     limit: int) -> list[Task]:
        """The first ``limit`` ready tasks (idle, not blocked, not in retry backoff)
        assigned to ``agent``, or unassigned in ``queue``, by priority, age and id."""
        sql, name = (WINDOW_ASSIGNED_SQL, agent) if agent is not None else (
            WINDOW_QUEUE_SQL, queue)
        try:
            cursor = self._connection().cursor()
            cursor.row_factory = None
            rows = cursor.execute(sql, (name, self._iso_now(), limit)).fetchall()
        except sqlite3.Error as exc:
            raise SourceError(f"local store {self.path}: {exc}") from None
        return [_row_to_task(row) for row in rows]

    def idle_blocker_edges(self) -> list[tuple[str, str, str]]:
        """(idle task, its blocker, the blocker's status) for every blocker of an idle
        task: enough to count what each task unblocks and which tasks are blocked without
        reading the backlog."""
        try:
            cursor = self._connection().cursor()
            cursor.row_factory = None
            rows = cursor.execute(IDLE_EDGES_SQL).fetchall()
        except sqlite3.Error as exc:
            raise SourceError(f"local store {self.path}: {exc}") from None
        return [(str(task), str(blocker), status) for task, blocker, status in rows]

    def idle_unrunnable(self, agents: Sequence[str], queues: Sequence[str] | None,
                        limit: int = 100) -> list[Task]:
        """Idle tasks no agent can take: assigned to none of ``agents``, or unassigned
        with a queue outside ``queues`` (None: legacy mode, no queue is served)."""
        agent_marks = ",".join("?" * len(agents))
        served = list(queues or ())
        queue_marks = ",".join("?" * len(served))
        sql = (f"{SELECT_TASKS} WHERE t.status = 'idle' AND ("
               f"(t.assignee IS NOT NULL AND t.assignee NOT IN ({agent_marks})) OR "
               f"(t.assignee IS NULL AND (t.queue IS NULL OR t.queue NOT IN ({queue_marks}))))"
               " ORDER BY t.id LIMIT ?")
        try:
            cursor = self._connection().cursor()
            cursor.row_factory = None
            rows = cursor.execute(sql, (*agents, *served, limit)).fetchall()
        except sqlite3.Error as exc:
            raise SourceError(f"local store {self.path}: {exc}") from None
        return [_row_to_task(row) for row in rows]

    def current(self, task_ids: list[str]) -> dict[str, Task | None]:
        return self._by_id(task_ids, f"{SELECT_TASKS} WHERE t.id", _row_to_task)

    def working(self) -> list[Task]:
        return self._ready(f"{SELECT_TASKS} WHERE t.status = ? ORDER BY t.id", WORKING)

    def states(self, task_ids: list[str]) -> dict[str, tuple[str, str | None] | None]:
        """(status, assignee) of each task as it is now, None for one that is gone: what
        a pass asks about its running tasks, without reading whole tasks."""
        return self._by_id(task_ids, "SELECT id, status, assignee FROM tasks WHERE id",
                           lambda row: (row["status"], row["assignee"]))

    def _by_id(self, task_ids: list[str], select: str,
               convert: Callable[[sqlite3.Row], _Found]) -> dict[str, _Found | None]:
        """``convert(row)`` for each of ``task_ids`` (None for a task that is not here),
        read in chunks of CHUNK ids in one snapshot; ``select`` ends with the id column,
        which ``IN (...)`` follows."""
        def read(numbers: list[int]) -> dict[int, _Found]:
            by_number: dict[int, _Found] = {}
            with self._read() as conn:
                for start in range(0, len(numbers), CHUNK):
                    chunk = numbers[start:start + CHUNK]
                    marks = ",".join("?" * len(chunk))
                    for row in conn.execute(f"{select} IN ({marks})", chunk):
                        by_number[row["id"]] = convert(row)
            return by_number

        return by_task_id(task_ids, read)

    def claimed(self) -> list[tuple[str, str | None]]:
        """(id, lease token) of every working task, in id order: the cheap first look for
        stranded tasks (:meth:`working` reads whole tasks)."""
        rows = self._query("SELECT id, lease_token FROM tasks WHERE status = ? ORDER BY id",
                           (WORKING,))
        return [(str(row[0]), row[1]) for row in rows]

    def claim(self, task_id: str, agent: str, token: str) -> None:
        if not is_valid_name(agent):
            raise InputError(f"agent is {agent!r}; accepted: {NAME_RULE}")
        with self._write() as conn:
            row = self._status_row(conn, task_id)
            self._move(conn, row, WORKING, action="claim", actor=ACTOR_SCHEDULER,
                       detail=f"claimed by {agent}",
                       assignee=agent, lease_token=token)

    def report(self, result: Result, policy: RetryPolicy) -> Applied:
        # Durable: the caller drops the result's outbox entry (its only other copy) once
        # this returns, and an outbox entry's removal may reach the disk first.
        with self._write(durable=True) as conn:
            try:
                row = self._status_row(conn, result.task_id)
            except TaskNotFound:
                return Applied("ignored", f"no task with id {result.task_id}")
            decision = decide_report(dict(row), result, policy, self._now())
            if decision.to_status is None:
                return decision.applied
            runtime, cost, tokens_in, tokens_out = decision.usage
            conn.execute("UPDATE tasks SET runtime_sec = runtime_sec + ?, cost_usd = cost_usd "
                         "+ ?, tokens_in = tokens_in + ?, tokens_out = tokens_out + ? "
                         "WHERE id = ?", (runtime, cost, tokens_in, tokens_out, row["id"]))
            fields = dict(decision.fields, lease_token=None)
            if fields.get("not_before") is not None:
                fields["not_before"] = _clock.to_iso(fields["not_before"])
            detail = decision.detail
            if decision.merge is not None:
                files = [f for f in decision.merge.get("changed_files") or ()
                         if isinstance(f, str)]
                before = decision.merge.get("before")
                fields.update(merge_commit=decision.merge["commit"],
                              merge_base=before if isinstance(before, str) else None,
                              changed_files=json.dumps(files) if files else "")
                also = self._also_changed(conn, row["id"], files)
                detail += also
                if "result_summary" in fields:
                    fields["result_summary"] += also
            self._move(conn, row, decision.to_status, action=decision.action,
                       actor=ACTOR_SCHEDULER, detail=detail, **fields)
            return decision.applied

    def reclaim_dead_hosts(self, policy: RetryPolicy) -> list[Result]:
        return []  # one host: nothing to reclaim from others

    def _also_changed(self, conn: sqlite3.Connection, task: int, files: list[str]) -> str:
        """Note files this merge changed that the task merged before it (the last one per
        file) changed too, in both histories; the text for this task's history."""
        if not files:
            return ""
        by_task: dict[int, list[str]] = {}
        marks = ",".join("?" * len(files[:CHUNK]))
        rows = conn.execute(
            "SELECT f.value, t.id FROM tasks t, json_each(t.changed_files) f "
            f"WHERE t.changed_files != '' AND t.id != ? AND f.value IN ({marks}) "
            "ORDER BY t.updated_at DESC, t.id DESC", (task, *files[:CHUNK])).fetchall()
        seen: set[str] = set()
        for name, other in rows:
            if name not in seen:
                seen.add(name)
                by_task.setdefault(other, []).append(name)
        now = self._iso_now()
        notes = []
        for other, names in sorted(by_task.items()):
            shown = ", ".join(sorted(names)[:20])
            notes.append(f"also changed by task {other}: {shown}")
            self._log(conn, other, COMPLETE, COMPLETE, ACTOR_SCHEDULER,
                      f"also changed by task {task} (merged later): {shown}", now)
        return "".join(f"\n{note}" for note in notes)

    def note(self, task_id: str, text: str, actor: str = ACTOR_SCHEDULER) -> None:
        """Append a history row that changes nothing (e.g. "merging", "reverted")."""
        with self._write() as conn:
            row = self._status_row(conn, task_id)
            self._log(conn, row["id"], row["status"], row["status"], actor, text,
                      self._iso_now())

    def health(self) -> Health:
        try:
            with self._read() as conn:
                count = conn.execute("SELECT count(*) FROM tasks").fetchone()[0]
                version = conn.execute("PRAGMA user_version").fetchone()[0]
        except (SourceError, OSError) as exc:
            return Health(False, str(exc))
        return Health(True, f"local store {self.path}: {count} tasks, schema v{version}")

    def backlog_counts(self) -> dict[str, dict[str, int]]:
        """Tasks per queue ("-" for none) and state: ``ready``, ``blocked``, ``backoff``
        (idle, waiting for its retry time), ``working``, ``parked`` (failed after the last
        attempt), ``complete``, ``cancelled``. One grouped query."""
        now = self._iso_now()
        counts: dict[str, dict[str, int]] = {}
        for queue, status, blocked, backoff, number in self._query(BACKLOG_SQL, (now,)):
            if status == IDLE:
                kind = "blocked" if blocked else "backoff" if backoff else "ready"
            else:
                kind = {FAILED: "parked"}.get(status, status)
            row = counts.setdefault(queue or "-", dict.fromkeys(BACKLOG_KINDS, 0))
            row[kind] += number
        return dict(sorted(counts.items()))

    # -- management API ------------------------------------------------------------------

    def add_task(
        self, title: str, *, description: str = "", queue: str | None = None,
        assignee: str | None = None, priority: int = 0, blocked_by: Iterable[str] = (),
        recipe: str | None = None, files: Iterable[str] = (), actor: str = "cli",
    ) -> Task:
        """Add one idle task; raises :class:`InputError` naming the bad field."""
        patterns, blocker_numbers = check_new_task(
            title=title, description=description, queue=queue, assignee=assignee,
            priority=priority, recipe=recipe, files=files, blocked_by=blocked_by)
        with self._write() as conn:
            self._check_exist(conn, blocker_numbers, "blocked_by")
            number = self._insert(conn, title=title.strip(), description=description,
                                  queue=queue, assignee=assignee, priority=priority,
                                  recipe=recipe, files=patterns, actor=actor)
            for blocker in sorted(blocker_numbers):
                conn.execute("INSERT INTO blockers (task_id, blocker_id) VALUES (?, ?)",
                             (number, blocker))
            return self._fetch(conn, number)

    def add_blockers(self, task_id: str, blocker_ids: Iterable[str],
                     actor: str = "cli") -> Task:
        """Make ``task_id`` also wait for ``blocker_ids``; unknown ids and cycles rejected."""
        numbers, bad = parse_blocker_ids(blocker_ids)
        if bad:
            raise InputError(f"blocked_by {bad[0]!r} is not a task id; accepted: the id of an "
                             "existing task")
        with self._write() as conn:
            row = self._status_row(conn, task_id)
            self._check_exist(conn, numbers, "blocked_by")
            for blocker in sorted(numbers):
                if blocker == row["id"] or self._reaches(conn, blocker, row["id"]):
                    raise InputError(
                        f"task {blocker} cannot block task {row['id']}: task {row['id']} "
                        f"would (transitively) block itself"
                    )
                conn.execute("INSERT OR IGNORE INTO blockers (task_id, blocker_id) "
                             "VALUES (?, ?)", (row["id"], blocker))
            self._log(conn, row["id"], row["status"], row["status"], actor,
                      "now blocked by " + ", ".join(str(n) for n in sorted(numbers)),
                      self._iso_now())
            return self._fetch(conn, row["id"])

    @staticmethod
    def _reaches(conn: sqlite3.Connection, start: int, target: int) -> bool:
        """True when ``start`` waits, directly or transitively, for ``target``."""
        row = conn.execute(
            "WITH RECURSIVE up(id) AS (SELECT ? UNION "
            "SELECT b.blocker_id FROM blockers b JOIN up ON b.task_id = up.id) "
            "SELECT 1 FROM up WHERE id = ? LIMIT 1", (start, target)).fetchone()
        return row is not None

    @staticmethod
    def _missing(conn: sqlite3.Connection, numbers: Iterable[int]) -> set[int]:
        """Which of ``numbers`` are not task ids."""
        wanted = sorted(set(numbers))
        known: set[int] = set()
        for start in range(0, len(wanted), CHUNK):
            chunk = wanted[start:start + CHUNK]
            marks = ",".join("?" * len(chunk))
            known.update(r[0] for r in conn.execute(
                f"SELECT id FROM tasks WHERE id IN ({marks})", chunk))
        return set(wanted) - known

    def _check_exist(self, conn: sqlite3.Connection, numbers: Iterable[int],
                     what: str) -> None:
        missing = self._missing(conn, numbers)
        if missing:
            ids = ", ".join(str(n) for n in sorted(missing))
            raise InputError(f"{what}: no task with id {ids}")

    def _insert(self, conn: sqlite3.Connection, *, title: str, description: str,
                queue: str | None, assignee: str | None, priority: int,
                recipe: str | None, actor: str, files: tuple[str, ...] = (),
                status: str = IDLE, attempts: int = 0, last_error: str | None = None,
                result_summary: str | None = None, created_at: datetime | None = None,
                history: list | None = None, runtime_sec: float = 0.0, cost_usd: float = 0.0,
                tokens_in: int = 0, tokens_out: int = 0) -> int:
        now = self._iso_now()
        cursor = conn.execute(
            "INSERT INTO tasks (title, description, queue, assignee, status, priority, "
            "recipe, attempts, last_error, result_summary, created_at, updated_at, "
            "runtime_sec, cost_usd, tokens_in, tokens_out, files) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (title, description, queue, assignee, status, priority, recipe, attempts,
             last_error, result_summary,
             _clock.to_iso(created_at) if created_at else now, now,
             runtime_sec, cost_usd, tokens_in, tokens_out,
             json.dumps(list(files)) if files else ""),
        )
        number = cursor.lastrowid
        assert number is not None  # an INSERT always sets it
        for entry in history or []:
            self._log(conn, number, entry.get("from_status"), entry["to_status"],
                      entry["actor"], entry.get("detail") or "",
                      _clock.to_iso(_clock.from_iso(entry["at"])))
        if not history:
            self._log(conn, number, None, IDLE, actor, "added", now)
        return number

    def get(self, task_id: str) -> Task:
        number = int_id(task_id)
        rows = self._query(f"{SELECT_TASKS} WHERE t.id = ?", (number,)) if number else []
        if not rows:
            raise TaskNotFound(f"no task with id {task_id}")
        return _row_to_task(rows[0])

    def details(self, task_id: str) -> dict[str, Any]:
        """Columns that :class:`Task` does not carry: ``result_summary``, ``updated_at``,
        what its attempts used: ``runtime_sec``, ``cost_usd``, ``tokens_in``,
        ``tokens_out``, and what its merge landed: ``merge_commit``, ``merge_base`` (the
        target before it), ``changed_files`` (a list)."""
        number = int_id(task_id)
        rows = self._query("SELECT result_summary, updated_at, runtime_sec, cost_usd, "
                           "tokens_in, tokens_out, merge_commit, merge_base, changed_files "
                           "FROM tasks WHERE id = ?",
                           (number,)) if number else []
        if not rows:
            raise TaskNotFound(f"no task with id {task_id}")
        found = dict(rows[0])
        found["changed_files"] = json.loads(found["changed_files"]) \
            if found["changed_files"] else []
        return found

    def list_tasks(self, *, status: str | None = None, queue: str | None = None,
                   assignee: str | None = None) -> list[Task]:
        where, params = task_filter("?", status=status, queue=queue, assignee=assignee)
        return [_row_to_task(row)
                for row in self._query(f"{SELECT_TASKS}{where} ORDER BY t.id", params)]

    def history(self, task_id: str) -> list[dict[str, Any]]:
        """The task's transitions, oldest first: ``at`` (ISO text), ``from_status``
        (None for the creation row), ``to_status``, ``actor``, ``detail``."""
        number = self.get(task_id).id
        return [
            {"at": row["at"], "from_status": row["from_status"],
             "to_status": row["to_status"], "actor": row["actor"], "detail": row["detail"]}
            for row in self._query(
                "SELECT at, from_status, to_status, actor, detail FROM history "
                "WHERE task_id = ? ORDER BY id", (int(number),))
        ]

    def launch_failures(self, after: str, until: str, limit: int = 20) -> list[tuple[str, str]]:
        """(task id, why) of attempts whose agent could not start, recorded in the history
        after ``after`` and up to ``until`` (ISO times as :func:`clock.to_iso` writes)."""
        rows = self._query(
            "SELECT task_id, detail FROM history WHERE at > ? AND at <= ? AND detail LIKE ? "
            "ORDER BY id LIMIT ?", (after, until, f"{LAUNCH_FAILED}:%", limit))
        found = []
        for task_id, detail in rows:
            lines = detail.splitlines()
            reasons = [line[len("reason: "):] for line in lines if line.startswith("reason: ")]
            found.append((str(task_id), reasons[0] if reasons else lines[0]))
        return found

    def run_counts(self, task_ids: Iterable[str]) -> dict[str, int]:
        """How many times each task was started (claims in its history)."""
        numbers = sorted({n for n in (int_id(t) for t in task_ids) if n is not None})
        counts = {str(n): 0 for n in numbers}
        for start in range(0, len(numbers), CHUNK):
            chunk = numbers[start:start + CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in self._query(
                    f"SELECT task_id, count(*) FROM history WHERE to_status = 'working' "
                    f"AND from_status = 'idle' AND task_id IN ({marks}) GROUP BY task_id",
                    chunk):
                counts[str(row[0])] = row[1]
        return counts

    def blockers_of(self, task_id: str) -> list[str]:
        """Ids of the tasks ``task_id`` waits for."""
        number = self.get(task_id).id
        return [str(row[0]) for row in self._query(BLOCKERS_OF_SQL, (int(number),))]

    def blocking(self, task_id: str) -> list[str]:
        """Ids of the tasks waiting for ``task_id``."""
        number = self.get(task_id).id
        return [str(row[0]) for row in self._query(BLOCKING_SQL, (int(number),))]

    def retry(self, task_id: str, actor: str = "cli") -> Task:
        """failed/cancelled -> idle: attempts reset, ``not_before`` and ``last_error``
        cleared (the previous error stays in the history). Like a requeue, a task with a
        queue goes back to its pool; one without keeps its agent."""
        with self._write() as conn:
            row = self._status_row(conn, task_id)
            detail = "retried"
            if row["last_error"]:
                detail += f"; previous error: {row['last_error']}"
            assignee = None if row["queue"] is not None else row["assignee"]
            self._move(conn, row, IDLE, action="retry", actor=actor, detail=detail,
                       attempts=0, not_before=None, last_error=None, lease_token=None,
                       assignee=assignee)
            return self._fetch(conn, row["id"])

    def cancel(self, task_id: str, actor: str = "cli", detail: str = "") -> Task:
        """idle/working -> cancelled. A working task's wrapper is not stopped here (see
        :func:`scheduler.reconcile.cancel.request_cancel`); its later report is ignored."""
        with self._write() as conn:
            row = self._status_row(conn, task_id)
            self._move(conn, row, CANCELLED, action="cancel", actor=actor,
                       detail=detail or "cancelled", lease_token=None)
            return self._fetch(conn, row["id"])

    def edit(self, task_id: str, changes: dict[str, Any], *, block: Iterable[str] = (),
             unblock: Iterable[str] = (), actor: str = "cli") -> Task:
        """Change ``changes`` (title, description, queue, assignee, priority, recipe; None
        clears queue, assignee and recipe) and the blockers of a task that is not working
        or complete, with the checks of :meth:`add_task`; one history row says what
        changed."""
        check_edit_request(changes)
        with self._write() as conn:
            row = self._status_row(conn, task_id)
            current = dict(conn.execute(
                "SELECT title, description, queue, assignee, priority, recipe FROM tasks "
                "WHERE id = ?", (row["id"],)).fetchone())
            wanted, add_numbers, drop_numbers, said = check_edit(dict(row), current, changes,
                                                                 block, unblock)
            self._check_exist(conn, add_numbers, "blocked_by")
            for blocker in sorted(add_numbers):
                if blocker == row["id"] or self._reaches(conn, blocker, row["id"]):
                    raise InputError(f"task {blocker} cannot block task {row['id']}: task "
                                     f"{row['id']} would (transitively) block itself")
                if conn.execute("INSERT OR IGNORE INTO blockers (task_id, blocker_id) "
                                "VALUES (?, ?)", (row["id"], blocker)).rowcount:
                    said.append(f"now blocked by {blocker}")
            for blocker in sorted(drop_numbers):
                if not conn.execute("DELETE FROM blockers WHERE task_id = ? AND "
                                    "blocker_id = ?", (row["id"], blocker)).rowcount:
                    raise InputError(f"task {row['id']} is not blocked by {blocker}; nothing "
                                     "to unblock")
                said.append(f"no longer blocked by {blocker}")
            if not said:
                raise InputError(f"task {row['id']}: nothing to change (give a new value)")
            now = self._iso_now()
            conn.execute(
                "UPDATE tasks SET title = ?, description = ?, queue = ?, assignee = ?, "
                "priority = ?, recipe = ?, updated_at = ? WHERE id = ?",
                (wanted["title"], wanted["description"], wanted["queue"], wanted["assignee"],
                 wanted["priority"], wanted["recipe"], now, row["id"]))
            self._log(conn, row["id"], row["status"], row["status"], actor,
                      "edited: " + "; ".join(said), now)
            return self._fetch(conn, row["id"])

    def delete(self, task_id: str) -> Task:
        """Remove a task that never ran, with its history; refused for a task that ran
        (its history is kept: cancel it instead) or that another task waits for."""
        with self._write() as conn:
            row = self._status_row(conn, task_id)
            found = self._fetch(conn, row["id"])
            ran = conn.execute("SELECT 1 FROM history WHERE task_id = ? AND to_status = ? "
                               "LIMIT 1", (row["id"], WORKING)).fetchone()
            if ran or row["status"] != IDLE and row["status"] != CANCELLED:
                raise InvalidTransition(
                    f"task {row['id']} has run, so its history is kept; accepted: a task "
                    "that never ran (cancel a task to stop it for good; 'task prune' "
                    "removes finished ones)")
            self._refuse_if_waited_for(conn, [row["id"]])
            self._remove(conn, [row["id"]])
            return found

    def prune(self, older_than: timedelta, *, dry_run: bool = False) -> tuple[list[str],
                                                                              list[str]]:
        """Remove complete and cancelled tasks finished longer than ``older_than`` ago,
        with their history. Returns (removed ids, kept ids): a finished task that a task
        not complete still waits for (it may be retried) is kept."""
        cutoff = _clock.to_iso(self._now() - older_than)
        with self._write() as conn:
            candidates = [r[0] for r in conn.execute(
                "SELECT id FROM tasks WHERE status IN (?, ?) AND updated_at < ? ORDER BY id",
                (COMPLETE, CANCELLED, cutoff))]
            waited: set[int] = set()
            for start in range(0, len(candidates), CHUNK):
                chunk = candidates[start:start + CHUNK]
                marks = ",".join("?" * len(chunk))
                waited.update(r[0] for r in conn.execute(
                    f"SELECT b.blocker_id FROM blockers b JOIN tasks t ON t.id = b.task_id "
                    f"WHERE b.blocker_id IN ({marks}) AND t.status != ?",
                    (*chunk, COMPLETE)))
            removed = [n for n in candidates if n not in waited]
            if not dry_run:
                self._remove(conn, removed)
        return [str(n) for n in removed], [str(n) for n in sorted(waited)]

    def _refuse_if_waited_for(self, conn: sqlite3.Connection, numbers: list[int]) -> None:
        marks = ",".join("?" * len(numbers))
        waiting = [str(r[0]) for r in conn.execute(
            f"SELECT DISTINCT task_id FROM blockers WHERE blocker_id IN ({marks}) "
            "ORDER BY task_id", numbers)]
        if waiting:
            raise InputError(f"task {', '.join(map(str, numbers))} is a blocker of task "
                             f"{', '.join(waiting)}; remove it there first "
                             f"('task edit {waiting[0]} --unblock {numbers[0]}')")

    @staticmethod
    def _remove(conn: sqlite3.Connection, numbers: list[int]) -> None:
        """Delete tasks, their blocker edges and then their history (allowed once the task
        row is gone; foreign keys are checked at commit)."""
        conn.execute("PRAGMA defer_foreign_keys = ON")
        for start in range(0, len(numbers), CHUNK):
            chunk = numbers[start:start + CHUNK]
            marks = ",".join("?" * len(chunk))
            conn.execute(f"DELETE FROM blockers WHERE task_id IN ({marks}) "
                         f"OR blocker_id IN ({marks})", (*chunk, *chunk))
            conn.execute(f"DELETE FROM tasks WHERE id IN ({marks})", chunk)
            conn.execute(f"DELETE FROM history WHERE task_id IN ({marks})", chunk)

    def import_tasks(self, specs: list, actor: str = "import") -> list[Task]:
        """Add every task of ``specs`` (a parsed JSON list) or none: all items are
        validated first; an error names the item index and the field."""
        parsed = parse_import(specs)
        with self._write() as conn:
            missing = self._missing(conn, (n for _, existing, _ in parsed for n in existing))
            if missing:
                raise missing_blockers(parsed, missing)
            numbers = [self._insert(conn, actor=actor, **import_fields(spec))
                       for spec, _, _ in parsed]
            for number, (_, existing, refs) in zip(numbers, parsed, strict=True):
                for blocker in sorted(set(existing) | {numbers[r] for r in refs}):
                    conn.execute("INSERT INTO blockers (task_id, blocker_id) VALUES (?, ?)",
                                 (number, blocker))
            return [self._fetch(conn, number) for number in numbers]


# --- helpers ------------------------------------------------------------------------------


def _shown(value: object) -> str:
    return "-" if value is None or value == "" else repr(value)
