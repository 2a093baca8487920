"""What every task store shares: statuses, the transition rules, field validation, the
import format and the rules that turn an attempt's result into the next status.

The embedded SQLite store and the PostgreSQL store both apply these; only the storage
differs. Pure functions: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from scheduler import clock as _clock
from scheduler.errors import InputError, InvalidTransition
from scheduler.names import NAME_RULE, TEXT_RULE, is_valid_name, text_problem
from scheduler.sources.base import (
    CANCELLED,
    COMPLETE,
    FAILED,
    IDLE,
    NEEDS_HUMAN,
    NOT_STARTED,
    OUTCOME_CANCELLED,
    OUTPUT_MARK,
    RATE_LIMITED,
    SUCCEEDED,
    WORKING,
    Applied,
    Result,
    RetryPolicy,
    agent_summary,
    merge_of,
    parks,
    usage_of,
)

STATUSES = (IDLE, WORKING, COMPLETE, FAILED, CANCELLED)

MAX_TITLE_CHARS = 500
MAX_DESCRIPTION_BYTES = 64 * 1024
MAX_DETAIL_BYTES = 4 * 1024
MAX_ERROR_CHARS = 500

RECIPE_RULE = "1-64 characters from A-Z a-z 0-9 _ . - (no '/', not starting with '.')"
IMPORT_FIELDS = ("title", "description", "queue", "agent", "priority", "blocked_by", "recipe",
                 "files")
#: What ``task export`` adds to each item, so a backlog moves between stores whole.
EXPORT_FIELDS = ("status", "attempts", "last_error", "result", "created_at", "history",
                 "usage")
#: What a task's attempts used, kept across an export (see scheduler.sources.base.usage_of).
USAGE_FIELDS = ("runtime_sec", "cost_usd", "tokens_in", "tokens_out")
#: Statuses an imported item may carry (a working task is exported as idle: its run
#: stays behind).
IMPORT_STATUSES = (IDLE, COMPLETE, FAILED, CANCELLED)
HISTORY_FIELDS = ("at", "from_status", "to_status", "actor", "detail")

#: Allowed status changes and what each one is called.
TRANSITIONS = {
    (IDLE, WORKING): "claim",
    (WORKING, COMPLETE): "complete",
    (WORKING, IDLE): "requeue",
    (WORKING, FAILED): "park",
    (WORKING, CANCELLED): "cancel",
    (IDLE, CANCELLED): "cancel",
    (FAILED, IDLE): "retry",
    (CANCELLED, IDLE): "retry",
}

#: Why a change into a status is refused, given where the task is now.
_WHY = {
    WORKING: "only idle tasks can be claimed",
    COMPLETE: "only working tasks can be completed",
    FAILED: "only working tasks can fail",
    CANCELLED: "only idle or working tasks can be cancelled",
}


def check_transition(task_id: str, from_status: str, to_status: str,
                     action: str | None = None) -> str:
    """Return the name of the change ``from_status`` -> ``to_status`` (which must be
    ``action`` when given), or raise :class:`InvalidTransition` naming the task, both
    statuses and why."""
    name = TRANSITIONS.get((from_status, to_status))
    if name is not None and action in (None, name):
        return name
    if to_status == IDLE:
        if action == "requeue":
            why = "only working tasks can be requeued"
        else:
            why = "only failed or cancelled tasks can be retried"
    else:
        why = _WHY.get(to_status, f"{to_status!r} is not a status")
    by = f" by {action}" if name is not None else ""
    raise InvalidTransition(
        f"task {task_id} is {from_status}; {why} "
        f"({from_status} -> {to_status}{by} is not allowed)"
    )



def truncate_bytes(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", errors="ignore") + "..."


def int_id(task_id: object) -> int | None:
    """The integer id behind ``task_id`` ("12", 12), or None when it cannot be one."""
    if isinstance(task_id, bool):
        return None
    if isinstance(task_id, int):
        return task_id if task_id > 0 else None
    if isinstance(task_id, str) and task_id.isascii() and task_id.isdigit() \
            and len(task_id) <= 18:
        value = int(task_id)
        return value if value > 0 else None
    return None


_Found = TypeVar("_Found")


def by_task_id(task_ids: Iterable[object],
               read: Callable[[list[int]], Mapping[int, _Found]]) -> dict[str, _Found | None]:
    """What ``read`` found for each of ``task_ids``, keyed as given (as text): ``read``
    gets the distinct valid numbers in order and returns what it found by number; an id
    that is not a number, or not found, maps to None. Nothing is read for no numbers."""
    found: dict[str, _Found | None] = {str(task_id): None for task_id in task_ids}
    numbers = sorted({n for n in map(int_id, found) if n is not None})
    if numbers:
        by_number = read(numbers)
        for key in found:
            number = int_id(key)
            if number is not None:
                found[key] = by_number.get(number)
    return found


# --- validation -------------------------------------------------------------------------


def is_valid_recipe(value: object) -> bool:
    """A recipe name or a relative file name in RECIPES_DIR such as ``dev.yaml``."""
    return is_valid_name(value) and isinstance(value, str) and not value.startswith(".")


def field_errors(
    *, title: object, description: object, queue: object, assignee: object,
    priority: object, recipe: object, agent_field: str = "agent",
) -> list[str]:
    """Every problem with these task fields, each naming the field, value and rule."""
    errors = []
    if not isinstance(title, str) or not title.strip():
        shown = "missing" if title is None else f"{title!r}"
        errors.append(f"title is {shown}; accepted: a non-empty string of at most "
                      f"{MAX_TITLE_CHARS} characters")
    elif text_problem(title):
        errors.append(f"title {text_problem(title)}; accepted: {TEXT_RULE}")
    elif len(title.strip()) > MAX_TITLE_CHARS:
        errors.append(f"title is {len(title.strip())} characters long; accepted: at most "
                      f"{MAX_TITLE_CHARS}")
    if not isinstance(description, str):
        errors.append(f"description is {description!r}; accepted: a string")
    elif text_problem(description):
        errors.append(f"description {text_problem(description)}; accepted: {TEXT_RULE}")
    elif len(description.encode("utf-8")) > MAX_DESCRIPTION_BYTES:
        errors.append(f"description is {len(description.encode('utf-8'))} bytes; accepted: "
                      f"at most {MAX_DESCRIPTION_BYTES} bytes")
    for name, value in (("queue", queue), (agent_field, assignee)):
        if value is not None and not is_valid_name(value):
            errors.append(f"{name} is {value!r}; accepted: {NAME_RULE}")
    if isinstance(priority, bool) or not isinstance(priority, int):
        errors.append(f"priority is {priority!r}; accepted: an integer")
    elif not -(2**63) <= priority < 2**63:
        errors.append(f"priority is {priority}; accepted: a 64-bit integer")
    if recipe is not None and not is_valid_recipe(recipe):
        errors.append(f"recipe is {recipe!r}; accepted: {RECIPE_RULE}")
    return errors


# --- import helpers ---------------------------------------------------------------------


def parse_blocker_ids(values: Iterable[object]) -> tuple[set[int], list[object]]:
    numbers, bad = set(), []
    for value in values:
        number = int_id(value)
        if number is None:
            bad.append(value)
        else:
            numbers.add(number)
    return numbers, bad


def check_files(patterns: Iterable[object]) -> tuple[tuple[str, ...], str]:
    """The declared file patterns checked, or what is wrong with them."""
    from scheduler.file_patterns import BadPattern, check_all

    try:
        return check_all(patterns), ""
    except BadPattern as exc:
        return (), str(exc)


def check_spec(index: int, spec: object, count: int) -> tuple[list[str], list[int], list[int]]:
    """Problems with one import item, its existing blocker ids and its ``#N`` references."""
    if not isinstance(spec, dict):
        return [f"is {type(spec).__name__}; accepted: an object with fields "
                f"{', '.join(IMPORT_FIELDS)}"], [], []
    errors = [f"unknown field {key!r}; accepted: {', '.join(IMPORT_FIELDS + EXPORT_FIELDS)}"
              for key in spec if key not in IMPORT_FIELDS + EXPORT_FIELDS]
    errors += exported_errors(spec)
    description = spec.get("description")
    errors += field_errors(
        title=spec.get("title"), description="" if description is None else description,
        queue=spec.get("queue"), assignee=spec.get("agent"),
        priority=spec.get("priority", 0), recipe=spec.get("recipe"),
    )
    files = spec.get("files")
    if files is not None and not isinstance(files, list):
        errors.append(f"files is {files!r}; accepted: a list of file patterns")
    else:
        problem = check_files(files or ())[1]
        errors += [problem] if problem else []
    existing: list[int] = []
    refs: list[int] = []
    blocked_by = spec.get("blocked_by", [])
    if blocked_by is None:
        blocked_by = []
    if not isinstance(blocked_by, list):
        errors.append(f"blocked_by is {blocked_by!r}; accepted: a list of task ids or '#N'")
        return errors, existing, refs
    for value in blocked_by:
        if isinstance(value, str) and value.startswith("#"):
            digits = value[1:]
            ref = int(digits) if digits.isascii() and digits.isdigit() else None
            if ref is None or ref >= count:
                errors.append(f"blocked_by {value!r} does not name an item of this file; "
                              f"accepted: '#0' to '#{count - 1}'")
            elif ref == index:
                errors.append(f"blocked_by {value!r} is the item itself; a task cannot "
                              "block itself")
            else:
                refs.append(ref)
            continue
        number = int_id(value)
        if number is None:
            errors.append(f"blocked_by {value!r} is not a task id; accepted: ids of existing "
                          "tasks or '#N' for the N-th item of this file (0-based)")
        else:
            existing.append(number)
    return errors, existing, refs


def ref_cycles(refs: list[list[int]]) -> list[str]:
    """Cycles among ``#N`` references (existing tasks cannot wait for new ones)."""
    state = [0] * len(refs)  # 0 new, 1 on the current path, 2 done
    errors: list[str] = []
    for root in range(len(refs)):
        if state[root]:
            continue
        path: list[int] = []
        stack: list[tuple[int, Iterator[int]]] = [(root, iter(refs[root]))]
        state[root] = 1
        path.append(root)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state[child] == 1:
                cycle = path[path.index(child):] + [child]
                errors.append("items " + " -> ".join(f"#{i}" for i in cycle)
                              + ": blocked_by forms a cycle; a task cannot (transitively) "
                              "block itself")
            elif state[child] == 0:
                state[child] = 1
                path.append(child)
                stack.append((child, iter(refs[child])))
    return errors


def error_reason(result: Result, attempts: int) -> str:
    """A short reason for ``last_error``, each fact once: outcome, exit code or signal, then
    why — the wrapper's reason, else the agent's last line of output, else the summary's
    first line unless it only repeats the outcome."""
    parts = [f"attempt {attempts} {result.outcome}"]
    if result.exit_code is not None:
        parts.append(f"exit code {result.exit_code}")
    if result.signal is not None:
        parts.append(f"signal {result.signal}")
    reason = ", ".join(parts)
    detail = result.detail if isinstance(result.detail, dict) else {}
    why = detail.get("summary") or detail.get("reason")  # the agent's own words first
    summary = result.summary or ""
    if not why and OUTPUT_MARK in summary:
        output = summary.split(OUTPUT_MARK, 1)[1].strip().splitlines()
        why = output[-1].strip() if output else None
    if not why:
        first = summary.strip().splitlines()[:1]
        if first and not first[0].startswith(f"{result.outcome}:"):
            why = first[0]
    if why:
        reason += f": {why}"
    return reason[:MAX_ERROR_CHARS]


def _is_time(value: object) -> bool:
    try:
        _clock.from_iso(value)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return False
    return True


def exported_errors(spec: dict) -> list[str]:
    """Problems with the fields ``task export`` adds (all optional)."""
    errors = []
    status = spec.get("status", IDLE)
    if status not in IMPORT_STATUSES:
        errors.append(f"status is {status!r}; accepted: {', '.join(IMPORT_STATUSES)}")
    attempts = spec.get("attempts", 0)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        errors.append(f"attempts is {attempts!r}; accepted: an integer >= 0")
    for name, limit in (("last_error", MAX_ERROR_CHARS), ("result", MAX_DESCRIPTION_BYTES)):
        value = spec.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            errors.append(f"{name} is not a string of at most {limit} characters")
    usage = spec.get("usage")
    if usage is not None and (not isinstance(usage, dict) or set(usage) - set(USAGE_FIELDS)
                              or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                     or v < 0 for v in usage.values())):
        errors.append(f"usage is {usage!r}; accepted: an object with numbers >= 0 for "
                      f"{', '.join(USAGE_FIELDS)}")
    if spec.get("created_at") is not None and not _is_time(spec["created_at"]):
        errors.append(f"created_at is {spec['created_at']!r}; accepted: an ISO 8601 time")
    history = spec.get("history")
    if history is None:
        return errors
    if not isinstance(history, list):
        return errors + [f"history is {type(history).__name__}; accepted: a list of "
                         f"objects with {', '.join(HISTORY_FIELDS)}"]
    for number, entry in enumerate(history):
        errors += _history_errors(f"history[{number}]", entry)
    return errors


def _history_errors(where: str, entry: object) -> list[str]:
    if not isinstance(entry, dict) or set(entry) - set(HISTORY_FIELDS):
        return [f"{where}: accepted: an object with {', '.join(HISTORY_FIELDS)}"]
    errors = []
    if not _is_time(entry.get("at")):
        errors.append(f"{where}: at is {entry.get('at')!r}; accepted: an ISO 8601 time")
    if entry.get("to_status") not in STATUSES or \
            entry.get("from_status") not in (None, *STATUSES):
        errors.append(f"{where}: from_status/to_status accepted: {', '.join(STATUSES)}")
    for name in ("actor", "detail"):
        if not isinstance(entry.get(name, ""), str):
            errors.append(f"{where}: {name} accepted: a string")
    if not entry.get("actor"):
        errors.append(f"{where}: actor accepted: a non-empty string")
    return errors


def exported_fields(spec: dict) -> dict[str, Any]:
    """The store columns of a (validated) item's export fields; absent ones left out."""
    fields: dict[str, Any] = {}
    for name, column in (("status", "status"), ("attempts", "attempts"),
                         ("last_error", "last_error"), ("result", "result_summary")):
        if spec.get(name) is not None:
            fields[column] = spec[name]
    if spec.get("created_at"):
        fields["created_at"] = _clock.from_iso(spec["created_at"])
    if spec.get("history"):
        fields["history"] = spec["history"]
    for name, value in (spec.get("usage") or {}).items():
        fields[name] = int(value) if name.startswith("tokens") else float(value)
    return fields


# --- results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What a store does with a result: ``applied`` is returned to the caller; when
    ``to_status`` is set, the task moves there by ``action`` with ``fields`` updated and
    ``detail`` in its history row (``lease_token`` is always cleared by the store), and
    ``usage`` (runtime s, cost USD, tokens in, tokens out) is added to its totals."""

    applied: Applied
    to_status: str | None = None
    action: str = ""
    detail: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    usage: tuple[float, float, int, int] = (0.0, 0.0, 0, 0)
    merge: dict[str, Any] | None = None  #: the merge a succeeded attempt landed, if any


def decide_report(row: dict[str, Any], result: Result, policy: RetryPolicy,
                  now: datetime) -> Decision:
    """The rules of :meth:`TaskSource.report` for a store row with ``id``, ``status``,
    ``lease_token``, ``attempts``, ``queue``, ``assignee``, ``runtime_sec`` and
    ``cost_usd`` (totals so far). ``not_before`` in the fields is a datetime."""
    task = row["id"]
    if row["status"] != WORKING:
        return Decision(Applied("ignored", f"task {task} is {row['status']}, not working"))
    if row["lease_token"] != result.token:
        return Decision(Applied("ignored", f"task {task} is working under another lease"))
    summary = result.summary or result.outcome
    usage = usage_delta(result)
    # A queued task goes back to its pool (rebalanced); a directly assigned one can only
    # run on its agent.
    pool_assignee = None if row["queue"] is not None else row["assignee"]

    def move(applied: Applied, to_status: str, action: str, **fields: Any) -> Decision:
        return Decision(applied, to_status, action, summary, fields, usage)

    if result.outcome == SUCCEEDED:
        return replace(move(Applied("complete", f"task {task} complete"), COMPLETE,
                            "complete", result_summary=summary, not_before=None),
                       merge=merge_of(result))
    if result.outcome == OUTCOME_CANCELLED:
        return move(Applied("cancelled", f"task {task} cancelled"), CANCELLED, "cancel",
                    result_summary=summary)
    if result.outcome == NOT_STARTED:  # the agent never ran: not an attempt
        return move(Applied("requeued", f"task {task} requeued; its agent never started, "
                                        "so no attempt is counted"),
                    IDLE, "requeue", not_before=None, assignee=pool_assignee)
    if result.outcome == RATE_LIMITED:  # the agent is held back, not the task
        return move(Applied("requeued", f"task {task} requeued; its agent was rate-limited, "
                                        "so no attempt is counted"),
                    IDLE, "requeue", not_before=None, assignee=pool_assignee)
    attempts = row["attempts"] + 1
    error = error_reason(result, attempts)
    spent = policy.budget_spent((row.get("runtime_sec") or 0.0) + usage[0],
                                (row.get("cost_usd") or 0.0) + usage[1])
    if result.outcome == NEEDS_HUMAN:
        error = f"needs a person: {agent_summary(result)}"[:MAX_ERROR_CHARS]
    elif spent:
        error = spent
    if parks(result) or spent or attempts >= policy.max_attempts:
        return move(Applied("parked", f"task {task} parked after {attempts} attempt(s): "
                                      f"{error}"),
                    FAILED, "park", attempts=attempts, last_error=error, not_before=None,
                    result_summary=summary)
    not_before = now + timedelta(seconds=policy.delay_after(attempts))
    return move(Applied("requeued", f"task {task} requeued (attempt {attempts} of "
                                    f"{policy.max_attempts}), not before "
                                    f"{_clock.to_iso(not_before)}"),
                IDLE, "requeue", attempts=attempts, last_error=error, not_before=not_before,
                assignee=pool_assignee, result_summary=summary)


def usage_delta(result: Result) -> tuple[float, float, int, int]:
    """What an attempt adds to its task's totals: runtime, cost, tokens in and out (an
    agent that never started adds nothing)."""
    if result.outcome == NOT_STARTED:
        return 0.0, 0.0, 0, 0
    cost, tokens_in, tokens_out = usage_of(result)
    return max(float(result.duration_sec or 0.0), 0.0), cost, tokens_in, tokens_out


def check_new_task(*, title: object, description: object, queue: object, assignee: object,
                   priority: object, recipe: object, files: Iterable[object],
                   blocked_by: Iterable[object]) -> tuple[tuple[str, ...], set[int]]:
    """The fields of ``task add`` checked: the declared file patterns and the blocker ids;
    raises :class:`InputError` naming every bad field (nothing is added)."""
    errors = field_errors(title=title, description=description, queue=queue,
                          assignee=assignee, priority=priority, recipe=recipe)
    patterns, problem = check_files(files)
    errors += [problem] if problem else []
    blocker_numbers, bad = parse_blocker_ids(blocked_by)
    errors += [f"blocked_by {value!r} is not a task id; accepted: the id of an existing "
               "task" for value in bad]
    if errors:
        raise InputError("; ".join(errors))
    return patterns, blocker_numbers


#: What ``task edit`` may change.
EDIT_FIELDS = ("title", "description", "queue", "assignee", "priority", "recipe")


def check_edit_request(changes: dict[str, Any]) -> None:
    """Refuse fields ``task edit`` cannot change, naming the ones it can."""
    unknown = set(changes) - set(EDIT_FIELDS)
    if unknown:
        raise InputError(f"cannot edit {', '.join(sorted(unknown))}; accepted: "
                         f"{', '.join(EDIT_FIELDS)}")


def check_edit(row: dict[str, Any], current: dict[str, Any], changes: dict[str, Any],
               block: Iterable[object], unblock: Iterable[object]
               ) -> tuple[dict[str, Any], set[int], set[int], list[str]]:
    """The rules of ``task edit`` for a task in ``row`` with the field values ``current``:
    the wanted values, the blocker ids to add and to drop, and what changed (for the
    history); raises InvalidTransition (a working or complete task) or InputError."""
    if row["status"] in (WORKING, COMPLETE):
        raise InvalidTransition(
            f"task {row['id']} is {row['status']}; only idle, failed or cancelled "
            "tasks can be edited" + (" (cancel it first)" if row["status"] == WORKING
                                     else ""))
    wanted = {**current, **changes}
    errors = field_errors(title=wanted["title"], description=wanted["description"],
                          queue=wanted["queue"], assignee=wanted["assignee"],
                          priority=wanted["priority"], recipe=wanted["recipe"])
    add_numbers, bad = parse_blocker_ids(block)
    drop_numbers, bad_drop = parse_blocker_ids(unblock)
    errors += [f"blocked_by {value!r} is not a task id; accepted: the id of an "
               "existing task" for value in [*bad, *bad_drop]]
    if errors:
        raise InputError("; ".join(errors))
    if isinstance(wanted["title"], str):
        wanted["title"] = wanted["title"].strip()
    said = [f"{name} {_shown(current[name])} -> {_shown(wanted[name])}"
            for name in EDIT_FIELDS if wanted[name] != current[name]]
    return wanted, add_numbers, drop_numbers, said


def _shown(value: object) -> str:
    return "-" if value is None or value == "" else repr(value)


def task_filter(placeholder: str, *, status: str | None, queue: str | None,
                assignee: str | None) -> tuple[str, list[str]]:
    """The ``WHERE`` clause (or "") and parameters of ``task list``'s filters, with the
    store's parameter ``placeholder``; InputError for an unknown status."""
    if status is not None and status not in STATUSES:
        raise InputError(f"status is {status!r}; accepted: {', '.join(STATUSES)}")
    clauses, params = [], []
    for column, value in (("status", status), ("queue", queue), ("assignee", assignee)):
        if value is not None:
            clauses.append(f"t.{column} = {placeholder}")
            params.append(value)
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params


#: One checked import item: the spec, the ids of existing tasks it waits for, and the
#: ``#N`` references to other items of the same file.
ParsedItem = tuple[dict, list[int], list[int]]


def parse_import(specs: object) -> list[ParsedItem]:
    """Every item of an import file checked before anything is written; raises
    :class:`InputError` naming each bad item and field (all or nothing)."""
    if not isinstance(specs, list):
        raise InputError(f"import expects a JSON list of task objects, got "
                         f"{type(specs).__name__}")
    errors: list[str] = []
    parsed: list[ParsedItem] = []
    for index, spec in enumerate(specs):
        item_errors, existing, refs = check_spec(index, spec, len(specs))
        errors += [f"item {index}: {e}" for e in item_errors]
        parsed.append((spec if isinstance(spec, dict) else {}, existing, refs))
    if not errors:
        errors += ref_cycles([refs for _, _, refs in parsed])
    if errors:
        raise InputError("\n".join(errors))
    return parsed


def missing_blockers(parsed: list[ParsedItem], missing: set[int]) -> InputError:
    """The error for import items waiting on task ids the store does not have."""
    return InputError("\n".join(
        f"item {i}: blocked_by {n} is not an existing task id; accepted: ids of existing "
        "tasks or '#N' for the N-th item of this file (0-based)"
        for i, (_, existing, _) in enumerate(parsed) for n in existing if n in missing))


def import_fields(spec: dict) -> dict[str, Any]:
    """The store columns of a validated import item (plain or exported)."""
    return {"title": spec["title"].strip(), "description": spec.get("description") or "",
            "queue": spec.get("queue"), "assignee": spec.get("agent"),
            "priority": spec.get("priority", 0), "recipe": spec.get("recipe"),
            "files": check_files(spec.get("files") or ())[0], **exported_fields(spec)}


def export_item(task: Any, details: dict[str, Any], history: list[dict[str, Any]],
                position: dict[str, int]) -> dict[str, Any]:
    """One task in the import format with its status and history. Blockers become
    ``#N`` references to their position in the export (``position``: id -> index); a
    working task is exported idle (its run does not move with it)."""
    return {
        "title": task.title, "description": task.description, "queue": task.queue,
        "agent": task.assignee, "priority": task.priority, "recipe": task.recipe,
        "files": list(task.files),
        "blocked_by": [f"#{position[b]}" if b in position else b for b in task.blocked_by],
        "status": IDLE if task.status == WORKING else task.status,
        "attempts": task.attempts, "last_error": task.last_error,
        "result": details.get("result_summary"),
        "created_at": _clock.to_iso(task.created_at) if task.created_at else None,
        "history": history,
        "usage": {name: details[name] for name in USAGE_FIELDS if details.get(name)},
    }
