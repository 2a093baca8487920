"""Which agents are held back right now, and why: a pure rule over their records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from scheduler import clock
from scheduler.agents.ratelimit import ordinal
from scheduler.state.throttles import AgentRecord


@dataclass(frozen=True)
class Hold:
    """An agent gets no new task: ``kind`` is ``rate-limited`` or ``budget``."""

    kind: str
    reason: str


def holds(records: Mapping[str, AgentRecord], now: datetime,
          daily_cost_max: Mapping[str, float]) -> dict[str, Hold]:
    """Agents held at ``now``: rate-limited until a later time, or over the day's budget
    (``daily_cost_max`` per agent; 0 or absent = no budget)."""
    held: dict[str, Hold] = {}
    day = now.date().isoformat()
    for agent, record in records.items():
        until = record.held_until()
        if until is not None and until > now:
            held[agent] = Hold("rate-limited", f"agent {agent} rate-limited until "
                                               f"{clock.to_iso(until)} "
                                               f"({ordinal(max(record.streak, 1))} in a row)")
            continue
        budget = daily_cost_max.get(agent, 0.0)
        spent = record.cost_on(day)
        if budget > 0 and spent >= budget:
            midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0,
                                                        microsecond=0)
            held[agent] = Hold("budget", f"agent {agent} spent ${spent:.2f} today, its daily "
                                         f"budget is ${budget:.2f}; paused until "
                                         f"{clock.to_iso(midnight)}")
    return held
