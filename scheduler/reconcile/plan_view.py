"""Showing a plan to people (``run --dry-run``) and to scripts (``--json``)."""

from __future__ import annotations

from scheduler.reconcile.planner import Plan, Skip

#: Skip lines a dry run prints; the rest are counted (``--json`` lists every skip).
MAX_SKIP_LINES = 100
#: A reason this many tasks share is one line (fewer: a line per task).
GROUP_FROM = 4
#: Task ids named on the line of a reason several tasks share.
MAX_IDS_PER_LINE = 10


def plan_to_json(the_plan: Plan) -> dict:
    return {
        "legacy": the_plan.legacy,
        "reclaims": [{"task": r.task_id, "agent": r.agent, "reason": r.reason}
                     for r in the_plan.reclaims],
        "spawns": [{"task": s.task.id, "title": s.task.title, "agent": s.agent, "why": s.why,
                    "priority": s.task.priority} for s in the_plan.spawns],
        "skips": [{"task": s.task_id, "kind": s.kind, "reason": s.reason}
                  for s in the_plan.skips],
        "agents": [{"agent": a.name, "queue": a.queue, "used": a.used, "limit": a.limit,
                    "planned": a.planned, "paused": a.paused} for a in the_plan.agents],
    }


def render_plan(the_plan: Plan, summary) -> str:
    lines = ["DRY RUN: nothing was changed", ""]
    lines.append("agents" + (" (legacy mode: assigned tasks only)" if the_plan.legacy else ""))
    for a in the_plan.agents:
        paused = "  paused" if a.paused else ""
        lines.append(f"  {a.name:<16} queue {a.queue or '-':<14} {a.used}/{a.limit} used, "
                     f"+{a.planned} planned{paused}")
    lines.append("")
    lines.append(f"would reclaim {len(the_plan.reclaims)}")
    lines += [f"  task {r.task_id} ({r.agent}): {r.reason}" for r in the_plan.reclaims]
    lines.append(f"would spawn {len(the_plan.spawns)}")
    lines += [f"  task {s.task.id} -> {s.agent}: {s.task.title[:50]!r} ({s.why})"
              for s in the_plan.spawns]
    lines.append(f"would skip {len(the_plan.skips)}")
    lines += skip_lines(the_plan.skips)
    if summary.errors:
        lines.append("")
        lines += [f"error: {e}" for e in summary.errors]
    return "\n".join(lines)


def skip_lines(skips: tuple[Skip, ...]) -> list[str]:
    """The skips in the plan's order, ``task N: reason`` each, except that a reason
    ``GROUP_FROM`` or more tasks share is one line, ``reason: K tasks (ids)``, where that
    reason first comes (with a large backlog and every slot busy, thousands of tasks wait
    for the same slot). At most ``MAX_SKIP_LINES``, then how many tasks the rest hold."""
    by_reason: dict[str, list[str]] = {}
    for skip in skips:
        by_reason.setdefault(skip.reason, []).append(skip.task_id)
    entries: list[tuple[str, int]] = []  # (line, tasks it stands for)
    grouped: set[str] = set()
    for skip in skips:
        ids = by_reason[skip.reason]
        if len(ids) < GROUP_FROM:
            entries.append((f"  task {skip.task_id}: {skip.reason}", 1))
        elif skip.reason not in grouped:
            grouped.add(skip.reason)
            named = ", ".join(ids[:MAX_IDS_PER_LINE])
            if len(ids) > MAX_IDS_PER_LINE:
                named += f" and {len(ids) - MAX_IDS_PER_LINE} more"
            entries.append((f"  {skip.reason}: {len(ids)} tasks ({named})", len(ids)))
    lines = [line for line, _tasks in entries[:MAX_SKIP_LINES]]
    if len(entries) > MAX_SKIP_LINES:
        rest = sum(tasks for _line, tasks in entries[MAX_SKIP_LINES:])
        lines.append(f"  ... {rest} more skipped tasks (--json lists every one)")
    return lines
