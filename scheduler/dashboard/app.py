"""The dashboard's web application (Starlette): pages, fragments for live updates, the JSON
API, ``/metrics``, the login form and, when enabled, the action buttons.

Every page is rendered by Jinja2 with autoescaping: task titles, descriptions and log
lines are hostile input and only ever reach the page as text. The Content-Security-Policy
allows scripts and styles from this server only (no inline script, no inline handler),
and the page needs nothing from anywhere else.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from scheduler import clock
from scheduler.dashboard import auth, chart, metrics
from scheduler.dashboard.snapshot import Snapshot, TaskSourceDown
from scheduler.errors import InvalidName, TinySchedulerError
from scheduler.logs import get_logger
from scheduler.names import is_valid_name
from scheduler.reconcile.status import shorten

HERE = Path(__file__).parent
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
#: The state is built at most this often, however many pages poll it.
STATE_TTL_SEC = 0.5
#: Longest accepted form body (login, actions).
MAX_FORM_BYTES = 4096
ACTIONS = ("cancel", "retry", "pause", "resume")
#: The page lists this many running tasks (the API all of them).
RUNNING_SHOWN = 100

log = get_logger("dashboard")


class StateCache:
    """One snapshot shared by every request within ``STATE_TTL_SEC``."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self._at = 0.0
        self._state: dict | None = None

    def get(self) -> dict:
        if self._state is None or time.monotonic() - self._at >= STATE_TTL_SEC:
            self._state = self.snapshot.state()
            self._at = time.monotonic()
        return self._state

    def invalidate(self) -> None:
        self._state = None


def _ago(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _clock_time(text) -> str:
    try:
        return clock.from_iso(text).strftime("%H:%M:%S")
    except (ValueError, TypeError):
        return "-"


def make_templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ago=_ago, short=shorten, clocktime=_clock_time)
    return env


class SecurityMiddleware:
    """Adds the security headers to every response and turns away requests without the
    token (401) when one is set. ``/static/`` and ``/login`` are open: they hold nothing."""

    def __init__(self, app, token: str, templates: Environment) -> None:
        self.app = app
        self.token = token
        self.templates = templates

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += SECURITY_HEADERS
                if not scope["path"].startswith("/static/"):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        path = scope["path"]
        if self.token and not (path.startswith("/static/") or path == "/login"):
            request = Request(scope)
            if not auth.allowed(self.token, request.headers.get("authorization"),
                                request.cookies.get(auth.COOKIE)):
                await self._unauthorized(path)(scope, receive, send_with_headers)
                return
        await self.app(scope, receive, send_with_headers)

    def _unauthorized(self, path: str) -> Response:
        challenge = {"www-authenticate": 'Bearer realm="tinyscheduler"'}
        if path.startswith("/api/"):
            return JSONResponse({"error": "unauthorized: send the dashboard token as "
                                          "'Authorization: Bearer TOKEN'"}, 401, challenge)
        if path == "/metrics":
            return Response("unauthorized: send the dashboard token as a bearer token\n",
                            401, challenge, media_type="text/plain")
        html = self.templates.get_template("login.html").render(error=None)
        return HTMLResponse(html, 401, challenge)


class Dashboard:
    """The request handlers, sharing one snapshot, its cache and the templates."""

    def __init__(self, settings, snapshot: Snapshot) -> None:
        self.settings = settings
        self.snapshot = snapshot
        self.cache = StateCache(snapshot)
        self.templates = make_templates()
        self.token = settings.dashboard_token
        self.actions_on = bool(settings.dashboard_actions and self.token)
        self.csrf = auth.csrf_token(self.token) if self.token else ""
        self.notes: OrderedDict[str, str] = OrderedDict()  # action results, shown by id

    def page(self, name: str, status_code: int = 200, **context) -> HTMLResponse:
        context.update(actions=self.actions_on, csrf=self.csrf, has_token=bool(self.token),
                       running_shown=RUNNING_SHOWN)
        return HTMLResponse(self.templates.get_template(name).render(**context), status_code)

    def _note(self, request: Request) -> str | None:
        return self.notes.get(request.query_params.get("note", ""))

    # --- the overview ------------------------------------------------------------------

    def _state_context(self, request: Request) -> dict:
        state = self.cache.get()
        return {"state": state, "chart": chart.geometry(state["chart"]),
                "note": self._note(request)}

    async def index(self, request: Request) -> Response:
        return self.page("index.html", **self._state_context(request))

    async def state_fragment(self, request: Request) -> Response:
        return self.page("_state.html", **self._state_context(request))

    # --- one task ----------------------------------------------------------------------

    def _task_context(self, request: Request) -> dict | None:
        """The task page's data; None when there is no such task (raises
        :class:`TaskSourceDown` when the source cannot say)."""
        task_id = request.path_params["task_id"]
        task = self.snapshot.task(task_id) if is_valid_name(task_id) else None
        if task is None:
            return None
        attempts = task["attempt_logs"]
        wanted = request.query_params.get("attempt", "")
        attempt = int(wanted) if wanted.isdigit() and int(wanted) in attempts else (
            attempts[-1] if attempts else None)
        chunk = self.snapshot.log_chunk(task_id, attempt, 0) if attempt else None
        return {"task": task, "attempt": attempt, "log": chunk, "note": self._note(request)}

    async def task_page(self, request: Request) -> Response:
        return self._task_response(request, "task.html")

    async def task_fragment(self, request: Request) -> Response:
        return self._task_response(request, "_task.html")

    def _task_response(self, request: Request, template: str) -> Response:
        try:
            context = self._task_context(request)
        except TaskSourceDown as exc:
            return self.page("missing.html", 503, task_id=request.path_params["task_id"],
                             error=str(exc))
        if context is None:
            return self.page("missing.html", 404, task_id=request.path_params["task_id"])
        return self.page(template, **context)

    # --- the API -----------------------------------------------------------------------

    async def api_state(self, request: Request) -> Response:
        return _json(self.cache.get())

    async def api_task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        try:
            task = self.snapshot.task(task_id) if is_valid_name(task_id) else None
        except TaskSourceDown as exc:
            return _json({"error": str(exc)}, 503)
        if task is None:
            return _json({"error": f"no task with id {task_id}"}, 404)
        return _json(task)

    async def api_log(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        attempt = request.query_params.get("attempt", "")
        offset = request.query_params.get("offset", "0")
        if not (is_valid_name(task_id) and attempt.isdigit() and offset.isdigit()
                and 0 < int(attempt) < 10**9 and len(offset) < 19):
            return _json({"error": "expected a task id, attempt=N (1 or more) and "
                                   "offset=BYTES"}, 400)
        return _json(self.snapshot.log_chunk(task_id, int(attempt), int(offset)))

    async def metrics(self, request: Request) -> Response:
        return Response(metrics.render(self.snapshot), media_type=CONTENT_TYPE_LATEST)

    # --- login and actions -------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            if not self.token:
                return RedirectResponse("/", 303)
            return self.page("login.html", error=None)
        form = await _small_form(request)
        if form is None or not auth.token_matches(self.token, form.get("token", "")):
            return self.page("login.html", 401, error="That token is not right.")
        response = RedirectResponse("/", 303)
        response.set_cookie(auth.COOKIE, auth.session_value(self.token), httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/login", 303)
        response.delete_cookie(auth.COOKIE)
        return response

    async def action(self, request: Request) -> Response:
        verb = request.path_params["verb"]
        if not self.actions_on or verb not in ACTIONS:
            return _json({"error": "actions are off (TINYSCHEDULER_DASHBOARD_ACTIONS)"}, 404)
        form = await _small_form(request)
        if form is None or not auth.token_matches(self.csrf, form.get("csrf", "")) \
                or not _same_origin(request):
            return _json({"error": "forbidden: missing or wrong CSRF token, or another "
                                   "origin"}, 403)
        try:
            message = _run_action(self.settings, self.snapshot, verb, form)
        except TinySchedulerError as exc:
            message = f"{verb} failed: {exc}"
        log.info("dashboard action", extra={"fields": {"action": verb, "result": message}})
        self.cache.invalidate()
        note_id = secrets.token_hex(8)
        self.notes[note_id] = message
        while len(self.notes) > 50:
            self.notes.popitem(last=False)
        back = _local_path(form.get("next", "/"))
        return RedirectResponse(f"{back}{'&' if '?' in back else '?'}note={note_id}", 303)


def create_app(settings, *, snapshot: Snapshot | None = None) -> Starlette:
    """The ASGI application for one state directory."""
    snapshot = snapshot or Snapshot(settings)
    d = Dashboard(settings, snapshot)
    routes = [
        Route("/", d.index),
        Route("/fragments/state", d.state_fragment),
        Route("/tasks/{task_id}", d.task_page),
        Route("/fragments/tasks/{task_id}", d.task_fragment),
        Route("/api/v1/state", d.api_state),
        Route("/api/v1/tasks/{task_id}", d.api_task),
        Route("/api/v1/tasks/{task_id}/log", d.api_log),
        Route("/metrics", d.metrics),
        Route("/login", d.login, methods=["GET", "POST"]),
        Route("/logout", d.logout, methods=["POST"]),
        Route("/actions/{verb}", d.action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        snapshot.close()

    return Starlette(routes=routes, lifespan=lifespan, middleware=[
        Middleware(SecurityMiddleware, token=d.token, templates=d.templates)])


def _local_path(back: str) -> str:
    """Where to send the browser after an action: a path on this server, else ``/``."""
    if not back.startswith("/") or back.startswith("//") or "\\" in back:
        return "/"
    return back


def _json(data, status_code: int = 200) -> Response:
    body = json.dumps(data, default=str, ensure_ascii=False).encode()
    return Response(body, status_code, media_type="application/json")


async def _small_form(request: Request) -> dict[str, str] | None:
    """A urlencoded form body of at most MAX_FORM_BYTES, or None."""
    if request.headers.get("content-type", "").split(";")[0].strip() != \
            "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    from urllib.parse import parse_qsl

    try:
        return dict(parse_qsl(body.decode("utf-8"), max_num_fields=10))
    except (UnicodeDecodeError, ValueError):
        return None


def _same_origin(request: Request) -> bool:
    """A browser's Origin (or Referer) header, when sent, must name this server."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


def _run_action(settings, snapshot: Snapshot, verb: str, form: dict[str, str]) -> str:
    from scheduler.reconcile import actions

    if verb in ("pause", "resume"):
        agent, queue = form.get("agent") or None, form.get("queue") or None
        if agent and queue:
            raise InvalidName("give an agent or a queue, not both")
        return actions.set_paused(settings, pause=verb == "pause", agent=agent, queue=queue)
    source = snapshot.source()
    if source is None or not hasattr(source, "retry"):
        raise InvalidName("cancel and retry manage the embedded local store; manage "
                          "TinyTask tasks on the TinyTask server")
    task_id = form.get("task", "")
    if verb == "cancel":
        return actions.cancel(settings, source, task_id)
    return actions.retry(settings, source, task_id)
