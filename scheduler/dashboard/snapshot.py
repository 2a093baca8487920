"""What the dashboard shows, as plain data: the status report (``status --json``) plus the
last output line of each running task, why the next waiting tasks wait, the latest
outcomes and the activity chart; and one task with its blockers, history and logs.

Read-only: leases are read without quarantining, liveness locks are never probed (the
waiting reasons come from the pure planner, with every lease taken as alive), and the
task source is only queried.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from scheduler import clock
from scheduler.config.registry import load_registry
from scheduler.dashboard.history import OutcomeHistory, PassHistory, chart_series
from scheduler.errors import ConfigError, SourceError, TaskNotFound
from scheduler.logs import get_logger
from scheduler.names import check_name, is_valid_name
from scheduler.reconcile import status
from scheduler.reconcile.planner import LeaseView, plan
from scheduler.reconcile.task_view import task_document
from scheduler.sources.base import FAILED, task_to_dict
from scheduler.state import pauses as pauses_mod
from scheduler.state import tasklog
from scheduler.state.leases import LEASE_NAME, LeaseStore

log = get_logger("dashboard")

#: How many waiting tasks and recent outcomes the page lists.
WAITING_SHOWN = 20
OUTCOMES_SHOWN = 20
#: The waiting list is planned in the background at most this often, and at most this
#: share of the time (it lists every idle task: ~0.1-0.3 s for 10,000 of them) ...
WAITING_MIN_INTERVAL_SEC = 2.0
WAITING_MAX_DUTY = 0.1
#: ... and only while someone has looked at the state in the last this many seconds.
WAITING_IDLE_SEC = 30.0


class TaskSourceDown(Exception):
    """The task source could not answer about a task this host knows nothing of: the
    dashboard answers 503 with this message (naming the source), never "no such task"."""


class Snapshot:
    """Builds the dashboard's data for one state directory; keeps one task source open
    and the record aggregates between calls. Not thread-safe: the app calls it from its
    event loop only."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.outcomes = OutcomeHistory(settings.outcomes_file)
        self.passes = PassHistory(settings.metrics_file)
        self.leases = LeaseStore(settings.running_dir)
        self.lease_cache = LeaseCache(self.leases)
        self._source: Any = None
        self.waiting = WaitingPlanner(settings)
        self._last_lines: dict[str, tuple[int, int, str | None]] = {}

    def close(self) -> None:
        self.waiting.close()
        if self._source is not None:
            self._source.close()
            self._source = None

    def source(self):
        """The task source, opened on first use; None while the local store does not
        exist yet (the dashboard never creates it)."""
        if self._source is None:
            if self.settings.task_source == "local" and not self.settings.tasks_db.exists():
                return None
            from scheduler.sources import open_source

            self._source = open_source(self.settings)
        return self._source

    # --- the whole page ----------------------------------------------------------------

    def state(self) -> dict:
        report = status.collect(self.settings, source=self.source(),
                                leases=self.lease_cache.leases(), probe_locks=False,
                                check_paths=False)  # checked once, at start-up
        lines: dict[str, tuple[int, int, str | None]] = {}
        for row in report["leases"]:
            row["last_line"] = self._last_line(row["log"], lines)
        self._last_lines = lines  # only the logs of running tasks stay cached
        self.outcomes.refresh()
        self.passes.refresh()
        report["outcomes"] = self._recent_outcomes()
        report["waiting"] = self._waiting_tasks(report)
        now = clock.now()
        report["chart"] = chart_series(self.outcomes, self.passes, now)
        report["generated_at"] = clock.to_iso(now)
        return report

    def _last_line(self, path: str, seen: dict) -> str | None:
        """The log's last output line, read again only when the log changed."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        cached = self._last_lines.get(path)
        if cached is not None and cached[:2] == (st.st_size, st.st_mtime_ns):
            line = cached[2]
        else:
            line = tasklog.last_output_line(Path(path))
        seen[path] = (st.st_size, st.st_mtime_ns, line)
        return line

    def _recent_outcomes(self) -> list[dict]:
        recent = list(reversed(self.outcomes.recent))[:OUTCOMES_SHOWN]
        titles = self._titles([str(entry.get("task")) for entry in recent])
        return [{**entry, "title": titles.get(str(entry.get("task")))} for entry in recent]

    def _titles(self, task_ids: list[str]) -> dict[str, str]:
        source = self.source()
        if source is None or not task_ids:
            return {}
        try:
            current = source.current(task_ids)
        except (SourceError, OSError):
            return {}
        return {task_id: task.title for task_id, task in current.items() if task is not None}

    def _waiting_tasks(self, report: dict) -> list[dict] | None:
        views = [(row["task"], row["agent"]) for row in report["leases"]]
        if not report["source"]["ok"] or self.source() is None:
            return []
        return self.waiting.rows(views)

    # --- one task ----------------------------------------------------------------------

    def task(self, task_id: str) -> dict | None:
        """The task (``task show --json`` shape for the local store), its lease if it
        runs, and its attempt logs; None when no such task exists. When the task source
        cannot answer, what this host knows (lease, logs) is returned with
        ``source_error`` naming the source, and :class:`TaskSourceDown` is raised when
        this host knows nothing of the task (it may exist: not a "no such task")."""
        check_name(task_id)
        data: dict[str, Any] | None = None
        source_error: str | None = None
        try:
            source = self.source()
            if source is not None:
                data = self._task_from_source(source, task_id)
        except (SourceError, OSError) as exc:
            source_error = f"task source {self.settings.task_source} unavailable: {exc}"
        lease = self.leases.read(task_id, quarantine=False)
        attempts = tasklog.attempts(self.settings.task_log_dir, task_id)
        if data is None and lease is None and not attempts:
            if source_error is not None:
                raise TaskSourceDown(source_error)
            return None
        if data is None:
            title = lease.metadata.get("title") if lease else None
            data = {"id": task_id, "title": title if isinstance(title, str) else None}
        if source_error is not None:
            data["source_error"] = source_error
        now = clock.now()
        data["lease"] = None if lease is None else {
            "agent": lease.agent, "state": lease.state, "attempt": lease.attempt,
            "host": lease.host, "pid": lease.pid,
            "age_sec": round((now - lease.started_at).total_seconds(), 1),
            "heartbeat_age_sec": round((now - lease.heartbeat).total_seconds(), 1)}
        running = lease.attempt if lease is not None else None
        data["attempt_logs"] = sorted(set(attempts) | ({running} if running else set()))
        data["running_attempt"] = running
        return data

    def _task_from_source(self, source, task_id: str) -> dict | None:
        try:
            if hasattr(source, "history"):  # the local store: the full ``task show --json``
                data = task_document(self.settings, source, task_id)
                return {**data, "parked": data["status"] == FAILED}
            current = source.current([task_id]).get(task_id)
            return None if current is None else {**task_to_dict(current),
                                                 "parked": current.parked}
        except TaskNotFound:
            return None

    def log_chunk(self, task_id: str, attempt: int, offset: int) -> dict:
        """New text of one attempt's log from ``offset`` (bytes), for the page's live log:
        the text, the next offset, and whether the attempt still runs."""
        check_name(task_id)
        path = tasklog.attempt_path(self.settings.task_log_dir, task_id, attempt)
        running = tasklog.running_attempt(self.settings.running_dir, task_id) == attempt
        chunk = tasklog.read_chunk(path, offset, limit=256 * 1024)
        data, end = chunk if chunk is not None else (b"", 0)
        reset = chunk is not None and end - len(data) != offset  # the log was replaced
        whole = _whole_utf8(data)  # a character cut in two waits for the next read
        end -= len(data) - len(whole)
        return {"attempt": attempt, "offset": end, "text": whole.decode("utf-8", "replace"),
                "running": running, "exists": chunk is not None, "reset": reset}


def _whole_utf8(data: bytes) -> bytes:
    """``data`` without a trailing, incomplete UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return data
        if byte >= 0xC0:  # a lead byte: is its sequence complete?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return data if back >= need else data[:-back]
    return data


class WaitingPlanner:
    """Works out the next waiting tasks and why they wait, in a background thread, so
    that no request waits for the planner: a request gets the latest list (None until the
    first one is ready) and the thread plans again at most every
    ``WAITING_MIN_INTERVAL_SEC`` (longer when planning is slow), and only while requests
    keep coming. The thread has its own task source (a SQLite connection belongs to the
    thread that opened it)."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._views: list[tuple[str, str]] = []
        self._rows: list[dict] | None = None
        self._asked = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rows(self, views: list[tuple[str, str]]) -> list[dict] | None:
        with self._lock:
            self._views = views
            self._asked = time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="waiting-planner",
                                                daemon=True)
                self._thread.start()
            self._wake.set()
            return self._rows

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        from scheduler.sources import open_source

        source = None
        try:
            while not self._stop.is_set():
                self._wake.wait()
                self._wake.clear()
                if self._stop.is_set() or time.monotonic() - self._asked > WAITING_IDLE_SEC:
                    continue  # stopping, or nobody looks: wait for the next request
                if source is None:
                    source = open_source(self.settings)
                with self._lock:
                    views = list(self._views)
                started = time.monotonic()
                try:
                    rows = self._plan(source, views)
                    with self._lock:
                        self._rows = rows
                except Exception as exc:  # keep the last list; try again later
                    log.warning("planning the waiting list failed",
                                extra={"fields": {"error": str(exc)}})
                took = time.monotonic() - started
                self._stop.wait(max(WAITING_MIN_INTERVAL_SEC, took / WAITING_MAX_DUTY))
        finally:
            if source is not None:
                source.close()

    def _plan(self, source, views: list[tuple[str, str]]) -> list[dict]:
        """The next waiting tasks and why: would start at the next pass, blocked by N,
        no free slot, backoff until T, paused, parked."""
        s = self.settings
        try:
            registry = load_registry(s.agent_control_file, s.agent_limits,
                                     s.default_agent_limit)
        except ConfigError:
            return []
        listings = [(source.assigned_idle, agent.name) for agent in registry.agents]
        if not registry.legacy:
            listings += [(source.queue_idle_unassigned, q) for q in registry.queues()]
        tasks = [task for listing, name in listings for task in listing(name)]
        the_plan = plan([LeaseView(task_id, agent, None) for task_id, agent in views], tasks,
                        registry, clock.now(), disable_blocking=s.disable_blocking,
                        pauses=pauses_mod.load(s.pause_file))
        by_id = {task.id: task for task in tasks}
        rows = [{"task": spawn.task.id, "title": spawn.task.title, "queue": spawn.task.queue,
                 "kind": "next", "reason": f"starts at the next pass on {spawn.agent}"}
                for spawn in the_plan.spawns]
        for skip in the_plan.skips:
            if skip.kind == "leased":
                continue
            task = by_id.get(skip.task_id)
            rows.append({"task": skip.task_id, "title": task.title if task else None,
                         "queue": task.queue if task else None, "kind": skip.kind,
                         "reason": skip.reason})
        return rows[:WAITING_SHOWN]


class LeaseCache:
    """The leases, each decoded again only when its file changed (a lease is rewritten
    at every heartbeat; most are unchanged between two looks). Read-only: a bad file is
    skipped and left where it is."""

    def __init__(self, store: LeaseStore) -> None:
        self.store = store
        self._known: dict[str, tuple[tuple[int, int, int], Any]] = {}

    def leases(self) -> list:
        found: dict[str, tuple[tuple[int, int, int], Any]] = {}
        try:
            scan = os.scandir(self.store.running_dir)
        except OSError:
            self._known = {}
            return []
        with scan:
            for entry in scan:
                match = LEASE_NAME.fullmatch(entry.name)
                if match is None or not is_valid_name(match.group(1)):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                key = (st.st_ino, st.st_mtime_ns, st.st_size)
                cached = self._known.get(entry.name)
                lease = cached[1] if cached is not None and cached[0] == key else \
                    self.store.read(match.group(1), quarantine=False)
                if lease is not None:
                    found[entry.name] = (key, lease)
        self._known = found
        return sorted((lease for _, lease in found.values()), key=lambda lease: lease.task_id)
