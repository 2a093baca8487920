"""``/metrics``: the dashboard's data in the Prometheus text format, built by the official
client library from a fresh snapshot on every scrape (a custom collector; nothing is kept
in the library's global registry)."""

from __future__ import annotations

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import generate_latest

from scheduler.dashboard.history import PASS_BUCKETS

PREFIX = "tinyscheduler"


class StateCollector:
    """Turns one dashboard state (see :mod:`scheduler.dashboard.snapshot`) into metrics."""

    def __init__(self, snapshot) -> None:
        self.snapshot = snapshot

    def collect(self):
        state = self.snapshot.state()
        yield from _agents(state)
        yield from _tasks(state)
        yield from _outcomes(self.snapshot.outcomes)
        yield from _passes(self.snapshot.passes)
        running = GaugeMetricFamily(f"{PREFIX}_running_tasks",
                                    "Tasks with a lease (in flight), by lease state.",
                                    labels=["state"])
        by_state: dict[str, int] = {}
        for row in state["leases"]:
            by_state[row["state"]] = by_state.get(row["state"], 0) + 1
        for lease_state in ("starting", "running", "finishing"):
            running.add_metric([lease_state], by_state.get(lease_state, 0))
        yield running
        yield GaugeMetricFamily(f"{PREFIX}_outbox_pending",
                                "Results waiting in the outbox for the task source.",
                                value=state["outbox_pending"])
        last = state["last_pass"]
        age = GaugeMetricFamily(f"{PREFIX}_last_pass_age_seconds",
                                "Seconds since the last pass started (absent before the "
                                "first pass).")
        if last is not None:
            age.add_metric([], last["age_sec"])
        yield age
        yield GaugeMetricFamily(f"{PREFIX}_source_up", "1 when the task source is healthy.",
                                value=1 if state["source"]["ok"] else 0)
        yield GaugeMetricFamily(f"{PREFIX}_healthy",
                                "1 when 'tinyscheduler status' would exit 0.",
                                value=1 if state["healthy"] else 0)


def _agents(state: dict):
    used = GaugeMetricFamily(f"{PREFIX}_agent_slots_used", "Leases held per agent.",
                             labels=["agent"])
    limit = GaugeMetricFamily(f"{PREFIX}_agent_slots_limit", "Slot limit per agent.",
                              labels=["agent"])
    held = GaugeMetricFamily(f"{PREFIX}_agent_held",
                             "1 while the agent is held (rate limit or daily budget).",
                             labels=["agent"])
    cost = GaugeMetricFamily(f"{PREFIX}_agent_cost_today_usd",
                             "What the agent's attempts reported spending today (UTC).",
                             labels=["agent"])
    for agent in state["agents"]:
        used.add_metric([agent["agent"]], agent["used"])
        limit.add_metric([agent["agent"]], agent["limit"])
        held.add_metric([agent["agent"]], 1 if agent.get("held") else 0)
        cost.add_metric([agent["agent"]], agent.get("cost_today_usd", 0.0))
    yield used
    yield limit
    yield held
    yield cost


def _tasks(state: dict):
    tasks = GaugeMetricFamily(
        f"{PREFIX}_tasks", "Tasks by queue and status (ready, blocked, backoff, working, "
        "parked, complete, cancelled; local store only).", labels=["queue", "status"])
    for queue, counts in (state["backlog"] or {}).items():
        for kind, number in counts.items():
            tasks.add_metric([queue, kind], number)
    yield tasks


def _outcomes(outcomes):
    counter = CounterMetricFamily(f"{PREFIX}_outcomes", "Ended attempts by agent and outcome.",
                                  labels=["agent", "outcome"])
    for (agent, outcome), number in sorted(outcomes.counts.items()):
        counter.add_metric([agent, outcome], number)
    yield counter


def _passes(passes):
    reclaims = CounterMetricFamily(f"{PREFIX}_reclaims", "Leases reclaimed, by reason.",
                                   labels=["reason"])
    for reason, number in sorted(passes.reclaims.items()):
        reclaims.add_metric([reason], number)
    yield reclaims
    histogram = HistogramMetricFamily(f"{PREFIX}_pass_duration_seconds",
                                      "Duration of the scheduler's passes.")
    buckets = [(repr(bound), count) for bound, count in zip(PASS_BUCKETS, passes.buckets,
                                                              strict=True)]
    buckets.append(("+Inf", passes.passes))
    histogram.add_metric([], buckets, passes.duration_sum)
    yield histogram


def render(snapshot) -> bytes:
    """The text exposition of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(snapshot))
    return generate_latest(registry)
