"""The pass records: ``last-pass.json`` (replaced each pass) and ``metrics.jsonl`` (appended)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from scheduler.fsutil import FILE_MODE, atomic_write_json, ensure_private_dir


def write_pass(settings, summary: dict) -> None:
    ensure_private_dir(settings.state_dir)
    atomic_write_json(settings.last_pass_file, summary, durable=False)
    metrics = {key: summary[key] for key in (
        "time", "mode", "duration_sec", "leases_scanned", "reclaimed", "stopped", "spawned",
        "blocked_skipped", "outbox_delivered", "outbox_pending")}
    metrics["errors"] = len(summary["errors"])
    metrics["agents"] = {a["agent"]: [a["used"], a["limit"]] for a in summary["agents"]}
    append_line(settings.metrics_file, json.dumps(metrics, separators=(",", ":")))


def append_line(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_last_pass(settings) -> dict | None:
    try:
        data = json.loads(settings.last_pass_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
