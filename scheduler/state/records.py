"""The pass and attempt records: ``last-pass.json`` (replaced each pass), ``metrics.jsonl``
(one line per pass) and ``outcomes.jsonl`` (one line per attempt that ended); both
appended, and moved to ``<name>.1`` when they reach ``METRICS_MAX_MB``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from scheduler import clock
from scheduler.fsutil import append_private, atomic_write_json, ensure_private_dir, read_private

#: A last-pass file larger than this is not one.
MAX_LAST_PASS_BYTES = 10_000_000
#: The fields ``status`` reads from last-pass.json, and the JSON type each must have.
LAST_PASS_SHAPE: dict[str, tuple[type, ...]] = {
    "time": (str,), "mode": (str,), "spawned": (int,), "reclaimed": (dict,),
    "blocked_skipped": (int,), "errors": (list,), "duration_sec": (int, float),
}


#: While a daemon has the next pass waiting, last-pass.json is replaced at most this
#: often (seconds); it is always written when the daemon goes idle.
BUSY_LAST_PASS_SEC = 0.5


class BusyRecorder:
    """The daemon's record keeping: a metrics line for every pass, last-pass.json for
    every pass the daemon goes idle after, and at most every BUSY_LAST_PASS_SEC while
    wake-ups keep arriving (each replacement is a new file, which costs more than the
    rest of a short pass's bookkeeping)."""

    def __init__(self) -> None:
        self._written = 0.0  #: time.monotonic() of the last last-pass.json

    def write(self, settings, summary: dict, busy: bool) -> None:
        """Record a pass that ended with the next one already waiting (``busy``) or not."""
        now = time.monotonic()
        if busy and now - self._written < BUSY_LAST_PASS_SEC:
            write_pass(settings, summary, last_pass=False)
            return
        write_pass(settings, summary)
        self._written = now


def write_pass(settings, summary: dict, *, last_pass: bool = True) -> None:
    ensure_private_dir(settings.state_dir)
    if last_pass:
        atomic_write_json(settings.last_pass_file, summary, durable=False)
    metrics = {key: summary[key] for key in (
        "time", "mode", "duration_sec", "leases_scanned", "reclaimed", "stopped", "spawned",
        "blocked_skipped", "outbox_delivered", "outbox_pending")}
    metrics["errors"] = len(summary["errors"])
    metrics["agents"] = {a["agent"]: [a["used"], a["limit"]] for a in summary["agents"]}
    append_metrics(settings.metrics_file, json.dumps(metrics, separators=(",", ":")),
                   settings.metrics_max_mb * 1024 * 1024)


def append_metrics(path: Path, line: str, max_bytes: int) -> None:
    """Append one line; first move a file of ``max_bytes`` or more to ``<name>.1`` (the
    previous ``.1`` is replaced), so the metrics take at most about twice the cap."""
    try:
        size = os.lstat(path).st_size
    except FileNotFoundError:
        size = 0
    if size >= max_bytes:
        os.replace(path, path.with_name(path.name + ".1"))
    append_private(path, (line + "\n").encode())


def outcome_entry(result, action: str) -> dict:
    """One line of ``outcomes.jsonl``: an attempt's end and what the source did with it
    (``action`` is the source's answer, or ``outbox`` when the result waits there)."""
    finished = result.finished_at or clock.now()
    return {
        "time": clock.to_iso(finished), "task": result.task_id, "agent": result.agent,
        "attempt": result.attempt, "outcome": result.outcome, "action": action,
        "duration_sec": result.duration_sec, "host": result.host,
    }


def append_outcome(settings, entry: dict) -> None:
    """Append one attempt's outcome in one ``O_APPEND`` write (concurrent wrappers never
    interleave their lines), rotated like ``metrics.jsonl``."""
    ensure_private_dir(settings.state_dir)
    line = json.dumps(entry, separators=(",", ":"))
    try:
        append_metrics(settings.outcomes_file, line, settings.metrics_max_mb * 1024 * 1024)
    except FileNotFoundError:  # another wrapper rotated it between our look and move
        append_private(settings.outcomes_file, (line + "\n").encode())


def read_last_pass(settings) -> dict | None:
    """The last pass summary, or None when no pass has run. Raises ValueError naming the
    file and what is wrong when it is unreadable or malformed."""
    path = settings.last_pass_file
    try:
        raw = read_private(path, MAX_LAST_PASS_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"{path} is unreadable: {exc}") from None
    if len(raw) > MAX_LAST_PASS_BYTES:
        raise ValueError(f"{path} is larger than {MAX_LAST_PASS_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path} is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    for key, types in LAST_PASS_SHAPE.items():
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"{path}: field {key!r} is missing or of the wrong type")
    try:
        clock.from_iso(data["time"])
    except ValueError:
        raise ValueError(f"{path}: field 'time' is not an ISO 8601 time") from None
    if not all(isinstance(v, int) and not isinstance(v, bool)
               for v in data["reclaimed"].values()):
        raise ValueError(f"{path}: field 'reclaimed' is not a map of counts")
    return data
