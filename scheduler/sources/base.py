"""The task-source interface: what the reconciler and the wrapper need from a backlog.

Two implementations sit beside this module: ``local`` (embedded SQLite, the default) and
``tinytask`` (the TinyTask REST API). Values coming out of a source are untrusted: ids,
agent names and recipe names are validated by the source before a :class:`Task` is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from scheduler.bounds import BACKOFF_MAX_SEC

#: Task statuses. TinyTask knows idle/working/complete; the local store adds the other two.
IDLE, WORKING, COMPLETE, FAILED, CANCELLED = "idle", "working", "complete", "failed", "cancelled"

#: Outcomes of one attempt, written by the wrapper.
#: In a wrapper's result summary, this line starts the last lines of the agent's output.
OUTPUT_MARK = "--- last output ---"

SUCCEEDED = "succeeded"
OUTCOME_FAILED = "failed"
KILLED = "killed"
TIMED_OUT = "timed_out"
STALLED = "stalled"
OUTCOME_CANCELLED = "cancelled"
LAUNCH_FAILED = "launch_failed"
RECLAIMED = "reclaimed"  #: the wrapper died; the scheduler requeues (counts as an attempt)
#: The wrapper never adopted its lease (the scheduler died mid-spawn): the agent never
#: ran, so the task is requeued at once and the attempt is not counted.
NOT_STARTED = "not_started"
#: The provider throttled the agent: the task is requeued without counting an attempt and
#: the agent is held back (see scheduler.agents.ratelimit).
RATE_LIMITED = "rate_limited"
#: The agent asks for a person: the task is parked with its summary, not retried.
NEEDS_HUMAN = "needs_human"
#: The merge queue: the agent succeeded but its branch conflicts with the target (counts
#: as an attempt; parked instead when the result's detail says ``park``), or the merge
#: check failed on the merged result (like a failed attempt).
MERGE_CONFLICT = "conflict"
CHECK_FAILED = "check_failed"
OUTCOMES = (SUCCEEDED, OUTCOME_FAILED, KILLED, TIMED_OUT, STALLED, OUTCOME_CANCELLED,
            LAUNCH_FAILED, RECLAIMED, NOT_STARTED, RATE_LIMITED, NEEDS_HUMAN, MERGE_CONFLICT,
            CHECK_FAILED)

#: Actor names written into the audit trail / comments.
ACTOR_SCHEDULER = "tinyscheduler"


@dataclass(frozen=True)
class Task:
    """One task as the scheduler sees it."""

    id: str
    title: str
    description: str = ""
    queue: str | None = None
    assignee: str | None = None
    status: str = IDLE
    priority: int = 0
    created_at: datetime | None = None
    blocked_by: tuple[str, ...] = ()  #: ids of the tasks this one waits for
    is_blocked: bool = False  #: True while any blocker is not complete
    recipe: str | None = None
    attempts: int = 0  #: attempts made so far
    tags: tuple[str, ...] = ()
    not_before: datetime | None = None  #: retry backoff: not eligible before this time
    parked: bool = False  #: parked after MAX_ATTEMPTS; skipped until a human intervenes
    last_error: str | None = None
    files: tuple[str, ...] = ()  #: declared file patterns (see scheduler.merge.files)
    #: The spawn token of the attempt in flight (working tasks), as the source keeps it.
    lease_token: str | None = None


@dataclass(frozen=True)
class Result:
    """The outcome of one attempt, as reported by a wrapper (or the reconciler on reclaim).

    ``token`` is the lease's spawn token: it makes delivery idempotent (a result whose
    token was already applied, or whose task is no longer working under that token, is
    ignored) and lets an outbox file be delivered any number of times.
    """

    task_id: str
    agent: str
    attempt: int
    outcome: str
    token: str
    summary: str  #: short human text: outcome, exit code, duration, attempt, host, log, tail
    exit_code: int | None = None
    signal: int | None = None
    duration_sec: float = 0.0
    host: str = ""
    log_path: str = ""
    finished_at: datetime | None = None
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Applied:
    """What :meth:`TaskSource.report` did: ``complete``, ``requeued``, ``parked``,
    ``cancelled`` or ``ignored`` (stale or duplicate result), plus a note for the log."""

    action: str
    note: str = ""


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str


#: The longest retry delay, whatever the backoff and the attempt number.


@dataclass(frozen=True)
class RetryPolicy:
    """How failures are retried: backoff x 2^(attempt-1), parked after max_attempts, or
    sooner when a task's budget is spent (0 = no budget)."""

    max_attempts: int
    backoff_sec: int
    max_total_runtime_sec: int = 0
    max_task_cost_usd: float = 0.0

    @classmethod
    def from_settings(cls, settings: Any) -> RetryPolicy:
        return cls(settings.max_attempts, settings.retry_backoff_sec,
                   settings.max_total_runtime_sec, settings.max_task_cost_usd)

    def delay_after(self, attempt: int) -> int:
        """Seconds to wait after ``attempt`` failed; at most ``BACKOFF_MAX_SEC``."""
        exponent = min(max(attempt - 1, 0), 64)  # 2**64 x any backoff is past the cap
        return min(self.backoff_sec * (2 ** exponent), BACKOFF_MAX_SEC)

    def budget_spent(self, total_runtime_sec: float, total_cost_usd: float) -> str | None:
        """Why a task may not be dispatched again, or None while within its budget."""
        if self.max_total_runtime_sec and total_runtime_sec >= self.max_total_runtime_sec:
            return (f"budget spent: {total_runtime_sec:.0f} s of runtime over all attempts, "
                    f"MAX_TOTAL_RUNTIME_SEC is {self.max_total_runtime_sec}")
        if self.max_task_cost_usd and total_cost_usd >= self.max_task_cost_usd:
            return (f"budget spent: ${total_cost_usd:.2f} over all attempts, "
                    f"MAX_TASK_COST_USD is {self.max_task_cost_usd:g}")
        return None


def agent_summary(result: Result) -> str:
    """What the agent itself said about its attempt, else the first line of the summary."""
    said = result.detail.get("summary") if isinstance(result.detail, dict) else None
    if isinstance(said, str) and said.strip():
        return said.strip()
    lines = (result.summary or "").strip().splitlines()
    return lines[0] if lines else ""


def parks(result: Result) -> bool:
    """True when the result asks for a person rather than a retry (needs_human, or a merge
    conflict under MERGE_CONFLICT=park)."""
    return result.outcome == NEEDS_HUMAN or (
        isinstance(result.detail, dict) and result.detail.get("park") is True)


def merge_of(result: Result) -> dict[str, Any] | None:
    """The merge a succeeded result landed (``commit``, ``changed_files``, ``check_sec``,
    ``target``), or None."""
    merged = result.detail.get("merge") if isinstance(result.detail, dict) else None
    return merged if isinstance(merged, dict) and isinstance(merged.get("commit"), str) \
        else None


def usage_of(result: Result) -> tuple[float, int, int]:
    """(cost in USD, tokens in, tokens out) an attempt reported, zeros when absent."""
    usage = result.detail.get("usage") if isinstance(result.detail, dict) else None
    if not isinstance(usage, dict):
        return 0.0, 0, 0

    def number(key: str) -> float:
        value = usage.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return float(value)
        return 0.0

    return number("cost_usd"), int(number("tokens_in")), int(number("tokens_out"))


class WakeListener(Protocol):
    """A descriptor a daemon waits on, woken by work changing on any host."""

    def fileno(self) -> int: ...

    def drain(self) -> int:
        """Consume what arrived; raises ``SourceError`` when the channel is lost."""

    def close(self) -> None: ...


class RunCoordinator(Protocol):
    """Runs as global leases across hosts (PostgreSQL); None on one host."""

    host: str

    def host_heartbeat(self) -> None:
        """Record that this host's scheduler is alive (every pass)."""

    def renew(self, task_id: str, token: str) -> bool:
        """Heartbeat an attempt's run; False when it was taken over (fenced)."""

    def cluster(self) -> dict:
        """Hosts, their last heartbeat and their runs, for ``status``."""

    def listener(self) -> WakeListener:
        """A new wake-up channel for a daemon."""

    def close(self) -> None: ...


class TaskSource(Protocol):
    """What every task source provides. Every method raises ``SourceError`` on failure;
    a failed call is never reported as "no tasks"."""

    name: str
    #: The run coordinator when several hosts share the backlog, else None.
    coordinator: RunCoordinator | None

    def assigned_idle(self, agent: str) -> list[Task]:
        """All idle tasks assigned to ``agent`` (every page), blocked ones included."""

    def queue_idle_unassigned(self, queue: str) -> list[Task]:
        """All idle, unassigned tasks of ``queue`` (every page), blocked ones included,
        each with ``blocked_by`` / ``is_blocked`` so the planner can order them."""

    def current(self, task_ids: list[str]) -> dict[str, Task | None]:
        """The current state of these tasks (None = deleted), to reconcile running leases."""

    def working(self) -> list[Task]:
        """Every working task (every page), each with its ``lease_token``: the other side
        of the reconciliation (a task working under one of our tokens with no lease)."""

    def claim(self, task_id: str, agent: str, token: str) -> None:
        """Assign to ``agent`` and mark working, remembering ``token`` for the attempt.
        Raises ``InvalidTransition`` if the task is no longer idle (someone else took it)."""

    def report(self, result: Result, policy: RetryPolicy) -> Applied:
        """Apply an attempt's result. Succeeded -> complete; cancelled -> cancelled;
        anything else (reclaims included) -> attempts+1, then requeued idle with
        ``not_before`` = now + policy.delay_after(attempt), or parked failed after
        policy.max_attempts with the reason. Applied only while the task is still working
        under ``result.token``; otherwise ``ignored`` (idempotent, never overwrites newer
        state). Always leaves a note: history row (local) or comment (TinyTask)."""

    def reclaim_dead_hosts(self, policy: RetryPolicy) -> list[Result]:
        """Requeue the runs of hosts that stopped heart-beating (counting an attempt),
        each exactly once across all hosts; [] without a coordinator."""

    def note(self, task_id: str, text: str, actor: str = ACTOR_SCHEDULER) -> None:
        """Record ``text`` for the task without changing it: a history row (local) or a
        comment (TinyTask)."""

    def health(self) -> Health:
        """Is the source reachable and sane."""

    def before_fork(self) -> None:
        """Called before the scheduler forks wrappers: release what a child must not
        inherit. The source keeps working afterwards (it reconnects lazily)."""

    def close(self) -> None:
        """Release connections."""


def task_to_dict(task: Task) -> dict:
    """The stable JSON shape of a task (``task show --json``, the dashboard's API)."""
    from scheduler.clock import to_iso

    return {
        "id": task.id,
        "title": task.title,
        "description": task.description,
        "queue": task.queue,
        "assignee": task.assignee,
        "status": task.status,
        "priority": task.priority,
        "created_at": to_iso(task.created_at) if task.created_at else None,
        "blocked_by": list(task.blocked_by),
        "is_blocked": task.is_blocked,
        "files": list(task.files),
        "recipe": task.recipe,
        "attempts": task.attempts,
        "not_before": to_iso(task.not_before) if task.not_before else None,
        "last_error": task.last_error,
    }
