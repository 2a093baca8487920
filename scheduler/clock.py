"""The one clock. Everything that needs "now" calls :func:`now`, so freezegun controls it."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from functools import lru_cache


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def to_iso(moment: datetime) -> str:
    """UTC ISO 8601 with a ``Z`` suffix and millisecond precision."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_iso(text: str) -> datetime:
    """Parse what :func:`to_iso` writes (and any ISO 8601 with an offset or ``Z``).

    Naive times are taken as UTC. Raises ``ValueError`` on anything else.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected an ISO 8601 time string, got {type(text).__name__}")
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def monotonic() -> float:
    """Seconds on the host's monotonic clock (CLOCK_MONOTONIC: one clock for every process
    of the host until it reboots; never stepped by NTP or by hand)."""
    return time.monotonic()


@lru_cache(maxsize=1)
def boot_id() -> str | None:
    """This boot's id (Linux): monotonic readings compare only within one boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip() or None
    except OSError:
        return None
