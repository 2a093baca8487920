"""An in-process fake TinyTask server for tests and benchmarks.

It follows ``shared/tinytask/openapi.json`` for the endpoints tinyscheduler uses, with the
same response shapes and status codes (ParsedTask, TaskWithRelations, TaskList = a bare
JSON array, CommentData, ErrorResponse ``{"error": ...}`` with 400/401/404)::

    GET    /health                            {"status": "ok"} (not in the contract)
    GET    /api/v1/tasks                      assigned_to, status, queue_name,
                                              include_archived, limit (default 100), offset
    POST   /api/v1/tasks                      create (title and created_by required) -> 201
    GET    /api/v1/tasks/{id}                 TaskWithRelations (comments, links)
    PATCH  /api/v1/tasks/{id}                 update -> ParsedTask
    DELETE /api/v1/tasks/{id}                 -> {"success": true, "id": N}
    GET    /api/v1/tasks/{id}/comments        CommentList
    POST   /api/v1/tasks/{id}/comments        content required, created_by -> 201 CommentData
    GET    /api/v1/queues                     queue names
    GET    /api/v1/queues/{name}/tasks        assigned_to, status, include_archived,
                                              limit, offset

Usage::

    with FakeTinyTask() as fake:                  # 127.0.0.1, a free port, own thread
        task_id = fake.add_task("Fix bug", queue="dev", priority=5, tags=["recipe:fix"])
        source = TinyTaskSource(fake.url)
        ...
        fake.requests            # [(method, path-with-query), ...] in arrival order
        fake.comments_of(task_id)

Fault injection applies to the next requests of any path, in arrival order (a request is
logged in ``requests`` before its fault): ``fail_next(n, status=500)`` answers with that
status and an ErrorResponse; ``delay_next(n, seconds)`` sleeps before answering (cut short
when the server closes); ``garbage_next(n)`` answers 200 with a body that is not JSON.
Hostile modes, each still answering in the contract's shapes: ``lose_next(n, method=None)``
applies the request and then closes the connection without an answer (a lost answer);
``trickle_next(n, interval)`` sends the answer one byte per ``interval`` seconds (defeats
a per-read timeout); ``endless_pages = True`` makes every listing answer full pages of
new ParsedTask objects whatever the offset (pagination that never ends); ``ignore_limit =
True`` answers every listing whole, whatever ``limit`` asks for.
``answer_next(method, path, status, data)`` answers the next request of ``method`` whose
path (query excluded) is ``path`` with ``status`` and ``data`` (JSON-encoded; bytes as they
are) without applying it: a server that answers in the wrong shape.
``FakeTinyTask(require_token="s3cr3t")`` answers 401 unless ``Authorization: Bearer
s3cr3t`` is sent; ``FakeTinyTask(health=False)`` has no ``/health`` (404), as in the
contract. ``set_task(task_id, **fields)`` overwrites raw fields (bad data included).

Efficiency: the server speaks HTTP/1.1 keep-alive with TCP_NODELAY (about a millisecond per
request). Tasks live in a dict keyed by id (in id order); a filtered listing is computed
once (O(n)) and cached until the next change, so paging through 10,000 tasks is O(n) in
total rather than O(n) per page; ``is_currently_blocked`` is a dict lookup.
"""

from __future__ import annotations

import json
import socket
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

STATUSES = ("idle", "working", "complete")
_STRING_FIELDS = ("title", "description", "assigned_to", "queue_name")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Problem(Exception):
    """Answer with an ErrorResponse."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status, self.error = status, error


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class FakeTinyTask:
    """A fake TinyTask server on 127.0.0.1 in a background thread (see the module doc)."""

    def __init__(self, *, require_token: str | None = None, health: bool = True) -> None:
        self.require_token = require_token
        self.health = health  #: False: no /health route (404), as the contract has none
        self.tasks: dict[int, dict] = {}
        self.comments: dict[int, list[dict]] = {}
        self.requests: list[tuple[str, str]] = []
        self.last_headers: dict[str, str] = {}
        self._lock = threading.Lock()
        self._next_task = 1
        self._next_comment = 1
        self._cache: dict[tuple, list[int]] = {}
        self._fail = (0, 500)
        self._delay = (0, 0.0)
        self._garbage = 0
        self._lose: tuple[int, str | None] = (0, None)
        self._trickle = (0, 0.0)
        self._scripted: list[tuple[str, str, int, object]] = []
        self.endless_pages = False
        self.ignore_limit = False
        self._closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> FakeTinyTask:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        server.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever,
                                        kwargs={"poll_interval": 0.01},
                                        name="fake-tinytask", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is None:
            return
        self._closing.set()
        self._server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # wake handler threads parked on keep-alive reads
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None

    def __enter__(self) -> FakeTinyTask:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- seeding and inspection -------------------------------------------------------

    def add_task(self, title: str, queue: str | None = None, assigned_to: str | None = None,
                 priority: int = 0, blocked_by: int | None = None, tags=(), *,
                 status: str = "idle", description: str | None = None,
                 created_by: str = "tests") -> int:
        """Store a task as the server would create it; return its id."""
        with self._lock:
            return self._create({
                "title": title, "queue_name": queue, "assigned_to": assigned_to,
                "priority": priority, "blocked_by_task_id": blocked_by, "tags": list(tags),
                "status": status, "description": description, "created_by": created_by,
            })

    def set_task(self, task_id: int, **fields) -> None:
        """Overwrite raw fields of a stored task (no validation: for bad-data tests)."""
        with self._lock:
            self.tasks[task_id].update(fields)
            self._cache.clear()

    def task(self, task_id: int) -> dict:
        """A task as GET /api/v1/tasks/{id} would show it (without relations)."""
        with self._lock:
            return self._view(self.tasks[task_id])

    def comments_of(self, task_id: int) -> list[str]:
        with self._lock:
            return [comment["content"] for comment in self.comments.get(task_id, [])]

    def count(self, method: str, path_prefix: str = "") -> int:
        """How many requests with this method (and path prefix) arrived."""
        return sum(1 for m, p in list(self.requests) if m == method and p.startswith(path_prefix))

    # --- fault injection --------------------------------------------------------------

    def fail_next(self, n: int, status: int = 500) -> None:
        with self._lock:
            self._fail = (n, status)

    def delay_next(self, n: int, seconds: float) -> None:
        with self._lock:
            self._delay = (n, seconds)

    def garbage_next(self, n: int) -> None:
        with self._lock:
            self._garbage = n

    def lose_next(self, n: int, method: str | None = None) -> None:
        """Apply the next ``n`` requests (of ``method``, if given), answer none of them."""
        with self._lock:
            self._lose = (n, method)

    def trickle_next(self, n: int, interval: float) -> None:
        """Send the next ``n`` answers one byte every ``interval`` seconds."""
        with self._lock:
            self._trickle = (n, interval)

    def answer_next(self, method: str, path: str, status: int, data: object) -> None:
        """Answer the next ``method`` request to ``path`` (e.g. ``/api/v1/queues``) with
        ``status`` and ``data``, without applying it (queued: one answer per call)."""
        with self._lock:
            self._scripted.append((method, path, status, data))

    def _take_scripted(self, method: str, path: str) -> tuple[int, bytes] | None:
        with self._lock:
            for n, (m, p, status, data) in enumerate(self._scripted):
                if (m, p) == (method, path):
                    del self._scripted[n]
                    return status, data if isinstance(data, bytes) else _json(data)
        return None

    # --- the model (called with the lock held) ----------------------------------------

    def _create(self, fields: dict) -> int:
        task_id = self._next_task
        self._next_task += 1
        stamp = _now()
        self.tasks[task_id] = {
            "id": task_id,
            "title": fields["title"],
            "description": fields.get("description"),
            "status": fields.get("status", "idle"),
            "assigned_to": fields.get("assigned_to"),
            "previous_assigned_to": None,
            "created_by": fields.get("created_by"),
            "priority": fields.get("priority", 0),
            "tags": list(fields.get("tags") or []),
            "parent_task_id": fields.get("parent_task_id"),
            "queue_name": fields.get("queue_name"),
            "blocked_by_task_id": fields.get("blocked_by_task_id"),
            "created_at": stamp,
            "updated_at": stamp,
            "archived_at": None,
        }
        self._cache.clear()
        return task_id

    def _view(self, task: dict) -> dict:
        view = dict(task)
        view["tags"] = list(task["tags"]) if isinstance(task["tags"], list) else task["tags"]
        blocker_id = task["blocked_by_task_id"]
        blocker = self.tasks.get(int(blocker_id)) if _is_number(blocker_id) else None
        view["is_currently_blocked"] = blocker is not None and blocker["status"] != "complete"
        return view

    def _select(self, queue: str | None, query: dict[str, str]) -> list[dict]:
        status = query.get("status")
        if status is not None and status not in STATUSES:
            raise _Problem(400, f"Invalid status: {status}")
        limit = _number_param(query, "limit", 100)
        offset = _number_param(query, "offset", 0)
        if self.endless_pages:  # always a full page of tasks never seen before
            stamp = _now()
            return [{**self._view(next(iter(self.tasks.values()))), "id": 10**9 + offset + i,
                     "status": status or "idle", "created_at": stamp}
                    for i in range(limit)] if self.tasks else []
        if self.ignore_limit:
            limit = len(self.tasks)
        assigned = query.get("assigned_to")
        archived = query.get("include_archived", "false").lower() == "true"
        if queue is None:
            queue = query.get("queue_name")
        key = (queue, status, assigned, archived)
        ids = self._cache.get(key)
        if ids is None:
            ids = [
                task_id for task_id, task in self.tasks.items()
                if (queue is None or task["queue_name"] == queue)
                and (status is None or task["status"] == status)
                and (assigned is None or task["assigned_to"] == assigned)
                and (archived or task["archived_at"] is None)
            ]
            self._cache[key] = ids
        return [self._view(self.tasks[task_id]) for task_id in ids[offset:offset + limit]]

    def _get(self, task_id: int) -> dict:
        task = self.tasks.get(task_id)
        if task is None:
            raise _Problem(404, f"Task {task_id} not found")
        return task

    def _patch(self, task_id: int, body: dict) -> dict:
        task = self._get(task_id)
        for field, value in body.items():
            if field in _STRING_FIELDS and not isinstance(value, str):
                raise _Problem(400, f"{field} must be a string")
            if field == "status" and value not in STATUSES:
                raise _Problem(400, f"Invalid status: {value!r}")
            if field in ("priority", "parent_task_id") and not _is_number(value):
                raise _Problem(400, f"{field} must be a number")
            if field == "blocked_by_task_id" and value is not None and not _is_number(value):
                raise _Problem(400, "blocked_by_task_id must be a number or null")
            if field == "tags" and (not isinstance(value, list)
                                    or not all(isinstance(tag, str) for tag in value)):
                raise _Problem(400, "tags must be an array of strings")
        if "assigned_to" in body and body["assigned_to"] != task["assigned_to"]:
            task["previous_assigned_to"] = task["assigned_to"]
        known = set(_STRING_FIELDS) | {"status", "priority", "tags", "parent_task_id",
                                       "blocked_by_task_id"}
        task.update({field: value for field, value in body.items() if field in known})
        task["updated_at"] = _now()
        self._cache.clear()
        return self._view(task)

    def _add_comment(self, task_id: int, body: dict) -> dict:
        self._get(task_id)
        if not isinstance(body.get("content"), str) or not body["content"]:
            raise _Problem(400, "content is required")
        created_by = body.get("created_by")
        if created_by is not None and not isinstance(created_by, str):
            raise _Problem(400, "created_by must be a string")
        stamp = _now()
        comment = {"id": self._next_comment, "task_id": task_id, "content": body["content"],
                   "created_by": created_by, "created_at": stamp, "updated_at": stamp}
        self._next_comment += 1
        self.comments.setdefault(task_id, []).append(comment)
        return dict(comment)

    def _create_from_body(self, body: dict) -> dict:
        if not isinstance(body.get("title"), str) or not body["title"]:
            raise _Problem(400, "title is required")
        if not isinstance(body.get("created_by"), str) or not body["created_by"]:
            raise _Problem(400, "created_by is required")
        fields = {field: body[field] for field in (
            "title", "description", "assigned_to", "created_by", "priority", "tags",
            "parent_task_id", "queue_name", "blocked_by_task_id") if field in body}
        if "status" in body:
            raise _Problem(400, "status cannot be set on create")
        task_id = self._create(fields)
        try:
            self._patch(task_id, {k: v for k, v in fields.items() if k != "created_by"})
        except _Problem:
            del self.tasks[task_id]
            raise
        return self._view(self.tasks[task_id])

    def _route_task(self, method: str, task_id: int, sub: list[str],
                    body: object) -> tuple[int, object] | None:
        if not sub:
            if method == "GET":
                view = self._view(self._get(task_id))
                view["comments"] = [dict(c) for c in self.comments.get(task_id, [])]
                view["links"] = []
                return 200, view
            if method == "PATCH":
                return 200, self._patch(task_id, body)
            if method == "DELETE":
                self._get(task_id)
                del self.tasks[task_id]
                self.comments.pop(task_id, None)
                self._cache.clear()
                return 200, {"success": True, "id": task_id}
        elif sub == ["comments"]:
            if method == "GET":
                self._get(task_id)
                return 200, [dict(c) for c in self.comments.get(task_id, [])]
            if method == "POST":
                return 201, self._add_comment(task_id, body)
        return None

    def _route(self, method: str, parts: list[str], query: dict[str, str],
               body: object) -> tuple[int, object]:
        """(status, JSON) for one request; raises _Problem for error answers."""
        if parts == ["health"] and method == "GET" and self.health:
            return 200, {"status": "ok"}
        if parts[:2] != ["api", "v1"] or len(parts) < 3:
            raise _Problem(404, "Not found")
        rest = parts[2:]
        if method in ("POST", "PATCH") and not isinstance(body, dict):
            raise _Problem(400, "Request body must be a JSON object")
        if rest == ["tasks"]:
            if method == "GET":
                return 200, self._select(None, query)
            if method == "POST":
                return 201, self._create_from_body(body)
        elif rest[0] == "tasks" and len(rest) in (2, 3):
            answer = self._route_task(method, _task_id(rest[1]), rest[2:], body)
            if answer is not None:
                return answer
        elif rest == ["queues"] and method == "GET":
            return 200, sorted({t["queue_name"] for t in self.tasks.values()
                                if isinstance(t["queue_name"], str)})
        elif rest[0] == "queues" and len(rest) == 3 and rest[2] == "tasks" and method == "GET":
            return 200, self._select(rest[1], query)
        raise _Problem(404, f"No route for {method} /{'/'.join(parts)}")

    # --- one request (called from handler threads) ------------------------------------

    def _take_answer_faults(self, method: str) -> tuple[bool, float]:
        """(lose this answer, trickle interval) for a request of ``method``."""
        with self._lock:
            lose = False
            if self._lose[0] > 0 and self._lose[1] in (None, method):
                self._lose = (self._lose[0] - 1, self._lose[1])
                lose = True
            interval = 0.0
            if not lose and self._trickle[0] > 0:
                self._trickle = (self._trickle[0] - 1, self._trickle[1])
                interval = self._trickle[1]
            return lose, interval

    def _take_faults(self) -> tuple[float, int | None, bool]:
        with self._lock:
            delay = 0.0
            if self._delay[0] > 0:
                self._delay = (self._delay[0] - 1, self._delay[1])
                delay = self._delay[1]
            status = None
            if self._fail[0] > 0:
                self._fail = (self._fail[0] - 1, self._fail[1])
                status = self._fail[1]
            garbage = False
            if status is None and self._garbage > 0:
                self._garbage -= 1
                garbage = True
            return delay, status, garbage

    def _handle(self, method: str, target: str, headers, raw_body: bytes) -> tuple[int, bytes]:
        with self._lock:
            self.requests.append((method, target))
            self.last_headers = dict(headers.items())
        delay, fail_status, garbage = self._take_faults()
        if delay:
            self._closing.wait(delay)
        if fail_status is not None:
            return fail_status, _json({"error": f"Injected failure {fail_status}"})
        if garbage:
            return 200, b"<html>this is not JSON"
        if self.require_token is not None and \
                headers.get("Authorization") != f"Bearer {self.require_token}":
            return 401, _json({"error": "Unauthorized"})
        split = urlsplit(target)
        scripted = self._take_scripted(method, split.path)
        if scripted is not None:
            return scripted
        parts = [unquote(part) for part in split.path.split("/") if part]
        query = {key: values[-1] for key, values in parse_qs(split.query).items()}
        try:
            body = json.loads(raw_body) if raw_body else None
        except ValueError:
            return 400, _json({"error": "Invalid JSON body"})
        try:
            with self._lock:
                status, data = self._route(method, parts, query, body)
        except _Problem as problem:
            return problem.status, _json({"error": problem.error})
        return status, _json(data)


def _json(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _number_param(query: dict[str, str], name: str, default: int) -> int:
    if name not in query:
        return default
    try:
        value = int(float(query[name]))
    except ValueError:
        raise _Problem(400, f"{name} must be a number") from None
    if value < 0:
        raise _Problem(400, f"{name} must not be negative")
    return value


def _task_id(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise _Problem(400, f"Invalid task id: {text}")
    return int(text)


def _handler_for(fake: FakeTinyTask) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with fake._lock:
                fake._connections.add(self.connection)

        def finish(self) -> None:
            with fake._lock:
                fake._connections.discard(self.connection)
            try:
                super().finish()
            except OSError:
                pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw_body = self.rfile.read(length) if length else b""
            status, payload = fake._handle(self.command, self.path, self.headers, raw_body)
            lose, interval = fake._take_answer_faults(self.command)
            if lose:  # applied, never answered: the client sees the connection drop
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if interval:
                    self.wfile.flush()
                    for i in range(len(payload)):
                        if fake._closing.wait(interval):
                            break
                        self.wfile.write(payload[i:i + 1])
                        self.wfile.flush()
                else:
                    self.wfile.write(payload)
            except OSError:  # the client gave up (timeout) or the server is closing
                self.close_connection = True

        do_GET = do_POST = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return Handler
