"""The ``tinytask`` task source: the TinyTask server's REST API (``/api/v1`` and ``/health``).

Contract: ``shared/tinytask/openapi.json``. TinyTask knows three statuses (idle, working,
complete) and free-form tags; everything else tinyscheduler needs is kept in tags it owns:

``recipe:NAME``                         the recipe to run (set by whoever files the task)
``files:GLOB``                          a declared file pattern (any number of such tags)
``tinyscheduler:attempts=N``            attempts made so far
``tinyscheduler:retry-after=ISO``       not eligible before this time (retry backoff)
``tinyscheduler:parked``                parked (failed too often, or cancelled): a human decides
``tinyscheduler:lease=TOKEN``           the attempt in flight (set by ``claim``)
``tinyscheduler:applied=TOKEN``         the last attempt whose result was applied
``tinyscheduler:runtime=S``, ``:cost=USD``  what its attempts used so far (budgets)

httpx and tenacity are imported only when the server is first contacted, and one
``httpx.Client`` is built per source object (per process), so commands that never talk to
TinyTask pay nothing for them.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from scheduler import __version__
from scheduler.bounds import TASK_ID_MAX, TASK_ID_MAX_DIGITS, is_task_number
from scheduler.clock import from_iso, now, to_iso
from scheduler.errors import InvalidTransition, SourceError, SourceUnavailable
from scheduler.file_patterns import BadPattern
from scheduler.file_patterns import check as check_pattern
from scheduler.names import NAME_RULE, TEXT_RULE, is_valid_name, text_problem
from scheduler.redact import mask_url, url_secrets
from scheduler.sources.base import (
    ACTOR_SCHEDULER,
    COMPLETE,
    IDLE,
    NEEDS_HUMAN,
    NOT_STARTED,
    OUTCOME_CANCELLED,
    RATE_LIMITED,
    SUCCEEDED,
    WORKING,
    Applied,
    Health,
    Result,
    RetryPolicy,
    Task,
    agent_summary,
    parks,
    usage_of,
)

log = logging.getLogger("tinyscheduler.tinytask")

API_PREFIX = "/api/v1"
PAGE_SIZE = 100  #: the server's documented default ``limit``
STATUSES = ("idle", "working", "complete")
_DIGITS = re.compile(rf"[0-9]{{1,{TASK_ID_MAX_DIGITS}}}")

#: The longest one API call may take, every retry and wait included (seconds).
CALL_DEADLINE_SEC = 30.0
#: The largest response body read from the server (bytes, after decompression).
MAX_BODY_BYTES = 16 * 2**20
#: The most pages one listing reads (PAGE_SIZE items each).
MAX_LIST_PAGES = 500
#: The most items one listing collects.
MAX_LIST_ITEMS = 50_000

TAG_RECIPE = "recipe:"
TAG_FILES = "files:"
TAG_ATTEMPTS = "tinyscheduler:attempts="
TAG_RETRY_AFTER = "tinyscheduler:retry-after="
TAG_PARKED = "tinyscheduler:parked"
TAG_LEASE = "tinyscheduler:lease="
TAG_APPLIED = "tinyscheduler:applied="
#: What the task's attempts used so far (budgets): seconds of runtime, USD.
TAG_RUNTIME = "tinyscheduler:runtime="
TAG_COST = "tinyscheduler:cost="


class _Retryable(Exception):
    """One attempt failed in a way worth retrying (connection, timeout, 429, 5xx)."""


class _Answer:
    """A response read whole within the call's deadline and size cap."""

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code, self.content = status_code, content

    def json(self) -> Any:
        import json

        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class _BadTask(ValueError):
    """A task object from the server that cannot be used; ``field`` names what is wrong."""

    def __init__(self, task_id: object, field: str, value: object, rule: str) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"task {task_id!r}: invalid {field} {shown} ({rule})")
        self.field = field


def _positive_int(value: object) -> int | None:
    """A task id from a JSON number (``5`` or ``5.0``) that both sources accept (at most
    18 digits), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer() and abs(value) <= TASK_ID_MAX:
        value = int(value)
    return value if is_task_number(value) else None  # type: ignore[return-value]


def _id_number(task_id: object) -> int:
    """A scheduler task id as TinyTask's integer id; SourceError if it is not one."""
    text = str(task_id)
    if not _DIGITS.fullmatch(text) or int(text) < 1:
        raise SourceError(f"TinyTask task id {text[:40]!r} is not a positive integer")
    return int(text)


def _tag_values(tags: list[str], prefix: str) -> list[str]:
    return [tag[len(prefix):] for tag in tags if tag.startswith(prefix)]


def _without(tags: list[str], *prefixes: str) -> list[str]:
    return [tag for tag in tags if not tag.startswith(prefixes)]


def _amount_of(tags: list[str], prefix: str) -> float:
    """A non-negative number kept in a tag (0 when absent or malformed)."""
    for value in _tag_values(tags, prefix):
        try:
            number = float(value)
        except ValueError:
            continue
        if 0 <= number < 1e12:
            return number
    return 0.0


def _with_usage(tags: list[str], result: Result) -> tuple[list[str], float, float]:
    """Tags with the attempt's runtime and cost added; the new totals."""
    if result.outcome == NOT_STARTED:
        return tags, _amount_of(tags, TAG_RUNTIME), _amount_of(tags, TAG_COST)
    runtime = _amount_of(tags, TAG_RUNTIME) + max(float(result.duration_sec or 0.0), 0.0)
    cost = _amount_of(tags, TAG_COST) + usage_of(result)[0]
    kept = _without(tags, TAG_RUNTIME, TAG_COST) + [f"{TAG_RUNTIME}{runtime:.1f}"]
    if cost:
        kept.append(f"{TAG_COST}{cost:.4f}")
    return kept, runtime, cost


def _attempts_of(tags: list[str]) -> int:
    """Attempts recorded in the tags (the largest well-formed value; 0 if none)."""
    counts = [int(value) for value in _tag_values(tags, TAG_ATTEMPTS)
              if value.isdigit() and len(value) < 10]
    return max(counts, default=0)


class _Fields:
    """Typed access to one untrusted task object; every failure raises :class:`_BadTask`."""

    def __init__(self, raw: dict, task_id: str) -> None:
        self.raw, self.task_id = raw, task_id

    def bad(self, field: str, value: object, rule: str) -> _BadTask:
        return _BadTask(self.task_id, field, value, rule)

    def text(self, field: str, nullable: bool = False) -> str | None:
        value = self.raw.get(field)
        if value is None and nullable:
            return None
        if not isinstance(value, str):
            raise self.bad(field, value, "expected a string" + (" or null" * nullable))
        if text_problem(value):
            raise self.bad(field, value, f"expected {TEXT_RULE}")
        return value

    def name(self, field: str) -> str | None:
        value = self.text(field, nullable=True)
        if value is not None and not is_valid_name(value):
            raise self.bad(field, value, f"expected {NAME_RULE}")
        return value

    def number(self, field: str) -> int:
        value = self.raw.get(field, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.bad(field, value, "expected a number")
        try:
            return int(value)
        except (OverflowError, ValueError):  # inf, nan
            raise self.bad(field, value, "expected a finite number") from None

    def flag(self, field: str) -> bool:
        value = self.raw.get(field, False)
        if not isinstance(value, bool):
            raise self.bad(field, value, "expected a boolean")
        return value

    def tags(self) -> list[str]:
        value = self.raw.get("tags")
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
            raise self.bad("tags", value, "expected an array of strings")
        return value

    def blocked_by(self) -> tuple[str, ...]:
        value = self.raw.get("blocked_by_task_id")
        if value is None:
            return ()
        number = _positive_int(value)
        if number is None:
            raise self.bad("blocked_by_task_id", value, "expected a task id or null")
        return (str(number),)

    def time(self, field: str) -> datetime | None:
        value = self.raw.get(field)
        if value is None:
            return None
        try:
            return from_iso(value)
        except ValueError:
            raise self.bad(field, value, "expected an ISO 8601 time") from None


def _retry_after(task_id: str, tags: list[str]) -> datetime | None:
    """The latest well-formed retry-after tag; malformed ones are logged and ignored."""
    latest: datetime | None = None
    for value in _tag_values(tags, TAG_RETRY_AFTER):
        try:
            moment = from_iso(value)
        except ValueError:
            log.warning("TinyTask task %s: ignoring malformed tag %r", task_id,
                        (TAG_RETRY_AFTER + value)[:120])
            continue
        latest = moment if latest is None else max(latest, moment)
    return latest


def to_task(raw: object) -> Task:
    """Convert one ParsedTask object into a :class:`Task`; raise :class:`_BadTask`."""
    if not isinstance(raw, dict):
        raise _BadTask(None, "task", raw, "expected a JSON object")
    number = _positive_int(raw.get("id"))
    if number is None:
        raise _BadTask(raw.get("id"), "id", raw.get("id"),
                       f"expected a positive integer of at most {TASK_ID_MAX_DIGITS} digits")
    fields = _Fields(raw, str(number))
    status = raw.get("status")
    if status not in STATUSES:
        raise fields.bad("status", status, "expected one of " + "|".join(STATUSES))
    tags = fields.tags()
    recipes = _tag_values(tags, TAG_RECIPE)
    if recipes and not is_valid_name(recipes[0]):
        raise fields.bad("recipe", recipes[0], f"expected {NAME_RULE}")
    return Task(
        id=fields.task_id,
        title=fields.text("title") or "",
        description=fields.text("description", nullable=True) or "",
        queue=fields.name("queue_name"),
        assignee=fields.name("assigned_to"),
        status=status,
        priority=fields.number("priority"),
        created_at=fields.time("created_at"),
        blocked_by=fields.blocked_by(),
        is_blocked=fields.flag("is_currently_blocked"),
        recipe=recipes[0] if recipes else None,
        attempts=_attempts_of(tags),
        tags=tuple(tags),
        not_before=_retry_after(fields.task_id, tags),
        parked=TAG_PARKED in tags,
        files=_declared_files(fields.task_id, tags),
        lease_token=next(iter(_tag_values(tags, TAG_LEASE)), None),
    )


def _declared_files(task_id: str, tags: list[str]) -> tuple[str, ...]:
    """``files:<glob>`` tags. A bad pattern is logged and read as ``**`` (everything):
    the task then waits for every other task that declares files, never the reverse of
    safe."""
    patterns = []
    for value in _tag_values(tags, TAG_FILES):
        try:
            patterns.append(check_pattern(value))
        except BadPattern as exc:
            log.warning("TinyTask task %s: %s; taken as '**'", task_id, exc)
            patterns.append("**")
    return tuple(dict.fromkeys(patterns))


class TinyTaskSource:
    """The TaskSource over TinyTask's REST API. See the module docstring for the tags."""

    name = "tinytask"
    coordinator = None  #: one host: the lease files are the whole truth

    def __init__(
        self,
        endpoint: str,
        token: str = "",
        *,
        timeout: float = 10.0,
        retry_attempts: int = 4,
        retry_initial: float = 0.2,
        retry_max: float = 2.0,
        sleep=time.sleep,
        clock=now,
        page_size: int = PAGE_SIZE,
        call_deadline: float = CALL_DEADLINE_SEC,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_pages: int = MAX_LIST_PAGES,
        max_items: int = MAX_LIST_ITEMS,
    ) -> None:
        endpoint = (endpoint or "").strip().rstrip("/")
        if not endpoint.startswith(("http://", "https://")):
            raise SourceError(f"TinyTask endpoint {endpoint!r} is not an http:// or https:// URL")
        if retry_attempts < 1 or page_size < 1:
            raise ValueError("retry_attempts and page_size must be >= 1")
        self._url = endpoint  #: with any credentials: used for requests only
        self.endpoint = mask_url(endpoint)  #: what messages show
        self._secrets = [secret for secret in [token or "", *url_secrets(endpoint)]
                         if secret]
        self._token = token or ""
        self.timeout = timeout
        self.retry_attempts = retry_attempts
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.page_size = page_size
        self.call_deadline = call_deadline
        self.max_body_bytes = max_body_bytes
        self.max_pages = max_pages
        self.max_items = max_items
        #: time.monotonic() after which no call starts or continues (a pass's deadline)
        self.deadline: float | None = None
        self._call_deadline_at = 0.0
        self._sleep = sleep
        self._clock = clock
        self._client: Any = None
        self._client_pid = 0
        self._retrying: Any = None
        #: tasks left out of the last listing because their data was unusable
        self.skipped = 0

    @classmethod
    def from_settings(cls, settings) -> TinyTaskSource:
        return cls(settings.mcp_endpoint, settings.mcp_token)

    def __repr__(self) -> str:
        return f"TinyTaskSource({self.endpoint!r})"

    def __enter__(self) -> TinyTaskSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- HTTP -----------------------------------------------------------------------------

    def _http(self):
        """The one httpx client of this process, built on first use."""
        if self._client is not None and self._client_pid == os.getpid():
            return self._client
        # A forked child never reuses (or closes) its parent's connections.
        import httpx
        import tenacity

        headers = {"User-Agent": f"tinyscheduler/{__version__}", "Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        self._client = httpx.Client(
            base_url=self._url + API_PREFIX,
            headers=headers,
            timeout=httpx.Timeout(connect=min(self.timeout, 5.0), read=self.timeout,
                                  write=self.timeout, pool=self.timeout),
            # Plain http never uses TLS: skip building an SSL context and loading the CA
            # bundle (~50 ms). https keeps full verification. Redirects are not followed.
            verify=not self._url.startswith("http://"),
            follow_redirects=False,
        )
        self._client_pid = os.getpid()
        self._retrying = tenacity.Retrying(
            stop=self._stop,
            wait=self._backoff,
            retry=tenacity.retry_if_exception_type(_Retryable),
            sleep=self._sleep,
            reraise=True,
        )
        return self._client

    def set_deadline(self, deadline: float | None) -> None:
        """No call runs past ``deadline`` (a ``time.monotonic()`` value; None: no limit
        beyond each call's own). The reconciler sets one per pass, the wrapper one per
        report."""
        self.deadline = deadline

    def _stop(self, retry_state) -> bool:
        return (retry_state.attempt_number >= self.retry_attempts
                or time.monotonic() >= self._call_deadline_at)

    def _backoff(self, retry_state) -> float:
        """Seconds before the next attempt: initial x 2^(n-1), plus up to ``initial`` of
        jitter, at most ``retry_max`` and never past the call's deadline."""
        base = self.retry_initial * 2 ** (retry_state.attempt_number - 1)
        wait = min(self.retry_max, base + random.uniform(0, self.retry_initial))
        return max(0.0, min(wait, self._call_deadline_at - time.monotonic()))

    def _deadline_for_call(self) -> tuple[float, str]:
        """When this call must end, and the limit that sets it (for the error)."""
        own = time.monotonic() + self.call_deadline
        if self.deadline is not None and self.deadline < own:
            return self.deadline, "the deadline of this pass or report"
        return own, f"the {self.call_deadline:g} s deadline per call (CALL_DEADLINE_SEC)"

    def _read_body(self, response, deadline: float, limit: str, shown: str) -> bytes:
        """The whole body, or SourceError when it is too large or too slow to arrive."""
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise SourceError(self._redact(
                f"TinyTask {shown} answered with a body of {int(declared)} bytes, more than "
                f"the {self.max_body_bytes} bytes accepted (MAX_BODY_BYTES)"))
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise SourceError(self._redact(
                    f"TinyTask {shown} answered with a body larger than the "
                    f"{self.max_body_bytes} bytes accepted (MAX_BODY_BYTES)"))
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise SourceUnavailable(self._redact(
                    f"TinyTask {shown} did not finish its answer within {limit}"))
        return b"".join(chunks)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "********")
        return text

    def _call(self, method: str, path: str, *, params: dict | None = None,
              body: dict | None = None, root: bool = False, allow_404: bool = False,
              lenient: bool = False, retry: bool = True) -> Any:
        """One API call with retries; the decoded JSON body, or None for an allowed 404.
        ``lenient``: a 2xx body that is not JSON is returned as text. Bounded in time (the
        call's deadline, within the pass's) and in size (MAX_BODY_BYTES); a call that
        could not get an answer raises :class:`SourceUnavailable`."""
        import httpx

        client = self._http()
        url = (self._url + path) if root else path
        shown = self.endpoint + ("" if root else API_PREFIX) + path
        if params:
            shown += "?" + urlencode(params)
        deadline, limit = self._deadline_for_call()
        self._call_deadline_at = deadline if retry else 0.0
        attempts = 0

        def attempt() -> _Answer:
            nonlocal attempts
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SourceUnavailable(self._redact(
                    f"TinyTask {method} {shown}: no time left within {limit}"))
            attempts += 1
            started = time.perf_counter()
            per_read = min(self.timeout, remaining)
            timeout = httpx.Timeout(connect=min(per_read, 5.0), read=per_read,
                                    write=per_read, pool=per_read)
            try:
                with client.stream(method, url, params=params, json=body,
                                   timeout=timeout) as response:
                    answer = _Answer(response.status_code,
                                     self._read_body(response, deadline, limit,
                                                     f"{method} {shown}"))
            except httpx.TransportError as exc:
                log.debug("TinyTask %s %s -> %s after %.1f ms", method, path,
                          type(exc).__name__, (time.perf_counter() - started) * 1000)
                raise _Retryable(f"{type(exc).__name__}: {exc}" if str(exc)
                                 else type(exc).__name__) from exc
            log.debug("TinyTask %s %s -> %d in %.1f ms", method, path, answer.status_code,
                      (time.perf_counter() - started) * 1000)
            if answer.status_code == 429 or answer.status_code >= 500:
                raise _Retryable(f"HTTP {answer.status_code}{self._error_text(answer)}")
            return answer

        try:
            response = self._retrying(attempt)
        except _Retryable as exc:
            times = "1 attempt" if attempts == 1 else f"{attempts} attempts"
            raise SourceUnavailable(self._redact(
                f"TinyTask {method} {shown} failed after {times}: {exc}")) from None
        status = response.status_code
        # A 404 means "no such task" only when TinyTask itself says so (ErrorResponse);
        # a 404 page from a wrong endpoint or a proxy must not make tasks look deleted.
        if status == 404 and allow_404 and (lenient or self._error_text(response)):
            return None
        if status >= 400:
            hint = " (check TINYSCHEDULER_MCP_TOKEN)" if status in (401, 403) else ""
            raise SourceError(self._redact(
                f"TinyTask {method} {shown} failed: HTTP {status}"
                f"{self._error_text(response)}{hint}"))
        if status < 200 or status >= 300:
            raise SourceError(f"TinyTask {method} {shown} failed: unexpected HTTP {status}")
        try:
            return response.json()
        except (ValueError, RecursionError) as exc:
            if lenient:
                return response.text
            raise SourceError(self._redact(
                f"TinyTask {method} {shown} returned HTTP {status} with a body that is not "
                f"JSON ({str(exc)[:120]}): {response.text[:80]!r}")) from None

    @staticmethod
    def _error_text(response) -> str:
        """The ErrorResponse message of a failed call, if the body has one (short)."""
        try:
            data = response.json()
        except (ValueError, RecursionError):
            return ""
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            return f" ({data['error'][:200]})"
        return ""

    def _list(self, path: str, params: dict) -> list:
        """Every item of a paginated TaskList (a bare JSON array, no total)."""
        items: list = []
        seen: set[str] = set()
        offset = 0
        for _page_number in range(self.max_pages):
            page = self._call("GET", path, params={**params, "limit": self.page_size,
                                                   "offset": offset})
            where = f"TinyTask GET {self.endpoint}{API_PREFIX}{path} (offset {offset})"
            if not isinstance(page, list):
                raise SourceError(f"{where} returned {type(page).__name__}, "
                                  "expected a TaskList (JSON array)")
            if len(page) > self.page_size:
                raise SourceError(f"{where} returned {len(page)} items for limit "
                                  f"{self.page_size}: the server ignores limit")
            items.extend(page)
            if len(items) > self.max_items:
                raise SourceError(f"{where}: the listing has more than {self.max_items} items "
                                  "(MAX_LIST_ITEMS); listing stopped")
            if len(page) < self.page_size:
                return items
            ids = {str(item.get("id")) if isinstance(item, dict) else "" for item in page}
            if not ids - seen:  # a server that ignores offset would loop forever
                raise SourceError(f"{where} repeated the previous page: pagination broken")
            seen |= ids
            offset += len(page)
        raise SourceError(f"TinyTask GET {self.endpoint}{API_PREFIX}{path}: more than "
                          f"{self.max_pages} pages (MAX_LIST_PAGES); listing stopped")

    def _tasks(self, raws: list, wanted) -> list[Task]:
        """Convert a listing; skip (count and log) unusable tasks and duplicates."""
        self.skipped = 0
        tasks: list[Task] = []
        seen: set[str] = set()
        for raw in raws:
            try:
                task = to_task(raw)
            except _BadTask as exc:
                self.skipped += 1
                log.warning("skipping TinyTask %s", exc)
                continue
            if task.id not in seen and wanted(task):
                seen.add(task.id)
                tasks.append(task)
        return tasks

    def _get_raw(self, task_id: str) -> dict | None:
        number = _id_number(task_id)
        raw = self._call("GET", f"/tasks/{number}", allow_404=True)
        if raw is not None and (not isinstance(raw, dict) or _positive_int(raw.get("id"))
                                != number):
            raise SourceError(f"TinyTask GET /tasks/{number} returned something that is not "
                              f"task {number}: {str(raw)[:80]!r}")
        return raw

    @staticmethod
    def _tags_of(raw: dict) -> list[str]:
        tags = raw.get("tags")
        if tags is None:
            return []
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise SourceError(f"TinyTask task {raw.get('id')}: tags is not an array of strings")
        return tags

    # --- TaskSource -----------------------------------------------------------------------

    def assigned_idle(self, agent: str) -> list[Task]:
        raws = self._list("/tasks", {"assigned_to": agent, "status": IDLE})
        return self._tasks(raws, lambda t: t.status == IDLE and t.assignee == agent)

    def queue_idle_unassigned(self, queue: str) -> list[Task]:
        raws = self._list(f"/queues/{quote(queue, safe='')}/tasks", {"status": IDLE})
        return self._tasks(
            raws, lambda t: t.status == IDLE and t.assignee is None and t.queue == queue)

    def current(self, task_ids: list[str]) -> dict[str, Task | None]:
        """Each task's state; None when the server says 404. A task whose data is unusable
        raises SourceError (it must not be mistaken for a deleted one)."""
        found: dict[str, Task | None] = {}
        wanted = set(task_ids)
        if len(wanted) > 1:  # one paged listing of working tasks instead of a GET each
            for raw in self._list("/tasks", {"status": WORKING}):
                if isinstance(raw, dict) and str(raw.get("id")) in wanted:
                    found[str(raw["id"])] = self._convert(raw)
        for task_id in task_ids:
            if task_id not in found:  # not working any more (or deleted): ask for it
                raw = self._get_raw(task_id)
                found[task_id] = None if raw is None else self._convert(raw)
        return found

    def working(self) -> list[Task]:
        raws = self._list("/tasks", {"status": WORKING})
        return self._tasks(raws, lambda t: t.status == WORKING)

    @staticmethod
    def _convert(raw: dict) -> Task:
        try:
            return to_task(raw)
        except _BadTask as exc:
            raise SourceError(f"TinyTask returned unusable data for {exc}") from None

    def claim(self, task_id: str, agent: str, token: str) -> None:
        raw = self._get_raw(task_id)
        if raw is None:
            raise InvalidTransition(f"task {task_id} no longer exists in TinyTask")
        status, owner = raw.get("status"), raw.get("assigned_to")
        if status != IDLE:
            raise InvalidTransition(f"task {task_id} is {status}, not idle: cannot claim it")
        if owner not in (None, agent):
            raise InvalidTransition(f"task {task_id} is assigned to {owner!r}, not {agent!r}")
        tags = _without(self._tags_of(raw), TAG_LEASE, TAG_APPLIED) + [TAG_LEASE + token]
        self._patch(task_id, {"status": WORKING, "assigned_to": agent, "tags": tags})
        # TinyTask has no compare-and-set: two schedulers sharing one server can both
        # claim a task. Read it back: whoever finds another lease tag lost, and refuses.
        after = self._get_raw(task_id)
        leases = _tag_values(self._tags_of(after), TAG_LEASE) if after is not None else []
        if leases != [token]:
            log.error("TinyTask task %s was claimed by another scheduler at the same time "
                      "(lease tags %s): not run here. TinyTask mode supports one scheduler "
                      "per server", task_id, leases)
            raise InvalidTransition(
                f"task {task_id} was claimed by another scheduler at the same time (lease "
                f"{', '.join(leases) or 'none'}, not {token}); TinyTask mode supports one "
                "scheduler per server")

    def report(self, result: Result, policy: RetryPolicy) -> Applied:
        raw = self._get_raw(result.task_id)
        if raw is None:
            return Applied("ignored", f"task {result.task_id} no longer exists")
        tags = self._tags_of(raw)
        lease, applied = TAG_LEASE + result.token, TAG_APPLIED + result.token
        if raw.get("status") != WORKING or lease not in tags:
            if applied in tags:
                return self._redeliver(raw, result)
            return Applied("ignored", f"task {result.task_id} is {raw.get('status')} and not "
                                      f"under lease {result.token}: stale result")
        if raw.get("assigned_to") != result.agent:
            return Applied("ignored", f"task {result.task_id} was reassigned to "
                                      f"{raw.get('assigned_to')}: stale result")
        kept, runtime, cost = _with_usage(_without(tags, TAG_LEASE, TAG_APPLIED) + [applied],
                                          result)
        if result.outcome == SUCCEEDED:
            self._patch(result.task_id, {"status": COMPLETE,
                                         "tags": _without(kept, TAG_RETRY_AFTER)})
            action, text = "complete", result.summary
        elif result.outcome == NOT_STARTED:  # the agent never ran: not an attempt
            self._patch(result.task_id, {"status": IDLE,
                                         "tags": _without(kept, TAG_RETRY_AFTER)})
            action, text = "requeued", f"requeued, agent never started: {result.summary}"
        elif result.outcome == RATE_LIMITED:  # the agent is held back, not the task
            self._patch(result.task_id, {"status": IDLE,
                                         "tags": _without(kept, TAG_RETRY_AFTER)})
            action, text = "requeued", f"requeued, agent rate-limited: {result.summary}"
        elif result.outcome == OUTCOME_CANCELLED:
            self._patch(result.task_id, {"status": IDLE, "tags": _with_parked(kept)})
            action, text = "cancelled", f"cancelled: {result.summary}"
        else:
            attempts = _attempts_of(tags) + 1
            kept = _without(kept, TAG_ATTEMPTS, TAG_RETRY_AFTER) + [f"{TAG_ATTEMPTS}{attempts}"]
            spent = policy.budget_spent(runtime, cost)
            if parks(result) or spent or attempts >= policy.max_attempts:
                self._patch(result.task_id, {"status": IDLE, "tags": _with_parked(kept)})
                action = "parked"
                why = (f"the agent needs a person: {agent_summary(result)}"
                       if result.outcome == NEEDS_HUMAN
                       else f"parked for a person after a {result.outcome}"
                       if parks(result)
                       else spent or f"parked after {attempts} attempts ({result.outcome})")
                text = f"{why}; a human decides: {result.summary}"
            else:
                delay = policy.delay_after(attempts)
                retry_at = to_iso(self._clock() + timedelta(seconds=delay))
                # The contract cannot null assigned_to (PATCH takes a string), so a queue
                # task stays with its agent; the retry-after tag delays it.
                self._patch(result.task_id, {"status": IDLE,
                                             "tags": kept + [TAG_RETRY_AFTER + retry_at]})
                action = "requeued"
                text = (f"attempt {attempts} of {policy.max_attempts} {result.outcome}; "
                        f"retry after {retry_at}: {result.summary}")
        # State first, then the note: if we die in between, a re-delivery finds the
        # applied tag and writes the missing comment (see _redeliver).
        self._comment(result.task_id, _with_token(text, result.token), result.token)
        return Applied(action, text[:200])

    def note(self, task_id: str, text: str, actor: str = "tinyscheduler") -> None:
        """A comment that changes nothing (e.g. "merging", "reverted"): one POST, never
        repeated (a note whose answer was lost may be missing, never doubled)."""
        self._call("POST", f"/tasks/{_id_number(task_id)}/comments", retry=False,
                   body={"content": text, "created_by": actor})

    def _redeliver(self, raw: dict, result: Result) -> Applied:
        """The result was applied already; write its comment if a crash lost it."""
        comments = raw.get("comments")
        note = f"result for lease {result.token} already applied"
        if isinstance(comments, list) and not any(
            isinstance(c, dict) and isinstance(c.get("content"), str)
            and c["content"].endswith(_token_footer(result.token)) for c in comments
        ):
            self._comment(result.task_id,
                          _with_token(f"{result.outcome}: {result.summary}", result.token),
                          result.token)
            note += "; its missing comment was written"
        return Applied("ignored", note)

    def _patch(self, task_id: str, body: dict) -> None:
        data = self._call("PATCH", f"/tasks/{_id_number(task_id)}", body=body, allow_404=True)
        if data is None:
            raise SourceError(f"TinyTask task {task_id} disappeared while being updated")
        if not isinstance(data, dict):
            raise SourceError(f"TinyTask PATCH /tasks/{task_id} returned a "
                              f"{type(data).__name__}, expected a ParsedTask object")

    def _comment(self, task_id: str, content: str, token: str) -> None:
        """POST the result's comment exactly once: a POST whose answer was lost may have
        been applied, so before posting again look for the lease token's footer."""
        path = f"/tasks/{_id_number(task_id)}/comments"
        for attempt in range(1, self.retry_attempts + 1):
            if attempt > 1 and self._has_comment(path, token):
                return
            try:
                data = self._call("POST", path, retry=False,
                                  body={"content": content, "created_by": ACTOR_SCHEDULER})
            except SourceUnavailable:
                if attempt == self.retry_attempts:
                    raise
                self._sleep(min(self.retry_max, self.retry_initial * 2 ** (attempt - 1)))
                continue
            if not isinstance(data, dict):
                raise SourceError(f"TinyTask POST /tasks/{task_id}/comments returned a "
                                  f"{type(data).__name__}, expected a CommentData object")
            return

    def _has_comment(self, path: str, token: str) -> bool:
        comments = self._call("GET", path)
        footer = _token_footer(token)
        return isinstance(comments, list) and any(
            isinstance(c, dict) and isinstance(c.get("content"), str)
            and c["content"].endswith(footer) for c in comments)

    def reclaim_dead_hosts(self, policy: RetryPolicy) -> list[Result]:
        return []  # one host: nothing to reclaim from others

    def health(self) -> Health:
        """GET /health at the server root (absent from the contract: a 404 is tolerated),
        then GET /api/v1/queues, which proves the API and the token work."""
        try:
            data = self._call("GET", "/health", root=True, allow_404=True, lenient=True)
            status = data.get("status") if isinstance(data, dict) else None
            if status is not None and str(status).lower() not in ("ok", "healthy", "up"):
                return Health(False, f"TinyTask {self.endpoint}: /health says status "
                                     f"{str(status)[:80]!r}")
            names = self._call("GET", "/queues")
        except SourceError as exc:
            return Health(False, str(exc))
        if not isinstance(names, list):
            return Health(False, f"TinyTask {self.endpoint}: GET {API_PREFIX}/queues returned "
                                 f"{type(names).__name__}, expected a JSON array")
        return Health(True, f"TinyTask {self.endpoint}: ok ({len(names)} queues)")

    def before_fork(self) -> None:
        """Nothing to do: a forked child builds its own HTTP client (see _http)."""

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._client_pid == os.getpid():
            client.close()


def _with_parked(tags: list[str]) -> list[str]:
    return tags if TAG_PARKED in tags else tags + [TAG_PARKED]


def _token_footer(token: str) -> str:
    return f"[tinyscheduler lease {token}]"


def _with_token(text: str, token: str) -> str:
    return f"{text}\n\n{_token_footer(token)}"
