"""``tinyscheduler status``: what runs now, how the last pass went, whether it is healthy."""

from __future__ import annotations

import os
from typing import Any

from scheduler import clock
from scheduler.config.registry import load_registry
from scheduler.errors import ConfigError
from scheduler.state import outbox, records
from scheduler.state.leases import LeaseStore, is_owned, owner_tag
from scheduler.state.paths import check_state_paths

#: A daemon's last pass older than this many intervals makes the status unhealthy.
STALE_INTERVALS = 3
#: Less free space than this on the state directory's file system is unhealthy
#: (leases, results and logs are written there).
LOW_DISK_MIN_FREE_BYTES = 100 * 2**20
#: ... and so is less than this fraction of it free.
LOW_DISK_MIN_FREE_RATIO = 0.02
#: Running task titles are shortened to this many characters in the table.
TITLE_WIDTH = 40


def collect(settings, source=None, leases=None, probe_locks: bool = True,
            check_paths: bool = True) -> dict:
    """The status report (the shape of ``status --json``). ``source``: an open task source
    to reuse (the dashboard keeps one); otherwise one is opened and closed here.
    ``leases``: the leases, when the caller has read them (otherwise read here).
    ``probe_locks=False`` (the dashboard) judges stranded tasks without probing liveness
    locks: a working task with no lease and no outbox entry counts. ``check_paths=False``:
    the caller checked the state paths already (the dashboard, at start-up)."""
    if check_paths:
        check_state_paths(settings)  # a link or a writable directory: refused, exit 2
    now = clock.now()
    problems: list[str] = []
    store = LeaseStore(settings.running_dir)
    if leases is None:
        leases = (store.list(quarantine=False) if os.path.lexists(settings.running_dir)
                  else [])
    used: dict[str, int] = {}
    for lease in leases:
        used[lease.agent] = used.get(lease.agent, 0) + 1
    try:
        registry = load_registry(settings.agent_control_file, settings.agent_limits,
                                 settings.default_agent_limit)
        spending = _spending(settings, now)
        agents = [{"agent": a.name, "queue": a.queue, "used": used.get(a.name, 0),
                   "limit": a.limit, **spending.get(a.name, {})}
                  for a in registry.agents]
    except ConfigError as exc:
        agents = []
        problems.append(str(exc))
    last = _last_pass(settings, now, problems)
    from scheduler.state import pauses

    try:
        paused = pauses.load(settings.pause_file).describe()
    except ConfigError as exc:
        paused = "unknown (pause file unreadable)"
        problems.append(str(exc))

    backlog = None
    if settings.task_source == "local" and not settings.tasks_db.exists():
        source_health: dict[str, Any] = {
            "ok": False, "detail": f"no task store yet at {settings.tasks_db} "
                                   "(created by the first 'task add' or pass)"}
    else:
        source_health, backlog = _source_health(
            settings, store, {lease.task_id for lease in leases}, source, probe_locks)
    if not source_health["ok"]:
        problems.append(f"task source unhealthy: {source_health['detail']}")
    stranded: list[str] = list(source_health.pop("stranded", []))
    if stranded:
        shown = ", ".join(stranded[:10]) + (", ..." if len(stranded) > 10 else "")
        problems.append(f"{len(stranded)} task(s) stranded in working with no lease and no "
                        f"live wrapper (task {shown}); the next pass requeues them")
    disk = disk_report(settings.state_dir)
    if disk.get("problem"):
        problems.append(disk["problem"])
    cluster = _cluster(settings, problems)
    logs = str(settings.task_log_dir)
    return {
        "cluster": cluster,
        "healthy": not problems,
        "problems": problems,
        "agents": agents,
        "leases": [_lease_row(lease, now, logs) for lease in leases],
        "backlog": backlog,
        "outbox_pending": len(outbox.pending(settings.outbox_dir)),
        "paused": paused,
        "last_pass": last,
        "source": {"kind": settings.task_source, **source_health},
        "stranded": stranded,
        "disk": disk,
    }


def _last_pass(settings, now, problems: list[str]) -> dict | None:
    """The last pass record (with its age), adding what is wrong with it to ``problems``."""
    try:
        last = records.read_last_pass(settings)
    except ValueError as exc:
        problems.append(f"last pass record unreadable: {exc}")
        return None
    if last is None:
        problems.append("no pass has run yet")
        return None
    if last.get("errors"):
        problems.append(f"last pass had {len(last['errors'])} error(s)")
    if last.get("low_disk"):
        problems.append(f"low disk, tasks skipped: {last['low_disk']}")
    age = (now - clock.from_iso(last["time"])).total_seconds()
    last["age_sec"] = round(age, 1)
    if last.get("mode") == "daemon" and age > STALE_INTERVALS * settings.loop_interval_sec:
        problems.append(f"last daemon pass is {age:.0f} s old (more than "
                        f"{STALE_INTERVALS} x {settings.loop_interval_sec} s)")
    return last


def _spending(settings, now) -> dict[str, dict]:
    """Per agent with a record: its hold (rate limit, daily budget) and what it spent
    today. The records and the agent options are read once for all agents."""
    from scheduler.agents import options as agent_options
    from scheduler.agents.holds import holds
    from scheduler.state import throttles

    records = throttles.load_all(settings.throttle_dir)
    if not records:
        return {}
    try:
        options = agent_options.load(settings)
    except ConfigError:
        options = {}
    default = settings.agent_daily_cost_max_usd
    budgets = {agent: options[agent].daily_cost_max_usd if agent in options else default
               for agent in records}
    held = holds(records, now, budgets)
    day = now.date().isoformat()
    rows: dict[str, dict] = {}
    for agent, record in records.items():
        rows[agent] = {"cost_today_usd": round(record.cost_on(day), 4)}
        if agent in held:
            rows[agent]["held"] = held[agent].reason
    return rows


def _source_health(settings, store: LeaseStore, leased: set[str], source=None,
                   probe_locks: bool = True) -> tuple[dict[str, Any], dict | None]:
    """The source's health, (when healthy) the tasks stranded in working: under one of
    this scheduler's tokens, with no lease and no live wrapper; and the backlog counts
    per queue when the source can count them (the local store; None otherwise)."""
    from scheduler.sources import open_source

    opened = None
    try:
        if source is None:
            source = opened = open_source(settings)
        health = source.health()
        stranded: list[str] = []
        backlog = None
        if health.ok:
            owner = owner_tag(settings.hostname, settings.running_dir)
            stranded = [task.id for task in source.working()
                        if is_owned(task.lease_token, owner) and task.id not in leased
                        and not (probe_locks and store.is_held(task.id))
                        and not outbox.path_for(settings.outbox_dir, task.id,
                                                task.lease_token).exists()]
            if hasattr(source, "backlog_counts"):
                backlog = source.backlog_counts()
        return {"ok": health.ok, "detail": health.detail, "stranded": stranded}, backlog
    except Exception as exc:
        return {"ok": False, "detail": str(exc)}, None
    finally:
        if opened is not None:
            opened.close()


def _cluster(settings, problems: list[str]) -> dict | None:
    """Several hosts: every host, its last heartbeat and its runs (None on one host)."""
    from scheduler.sources import open_coordinator

    try:
        coordinator = open_coordinator(settings)
        if coordinator is None:
            return None
        try:
            return coordinator.cluster()
        finally:
            coordinator.close()
    except Exception as exc:
        problems.append(f"cluster unavailable: {exc}")
        return {"hosts": [], "error": str(exc)}


def disk_report(path) -> dict:
    """Free space of the file system holding ``path``, and a problem when it is low or
    read-only (heartbeats, results and logs could not be written)."""
    from pathlib import Path

    path = Path(path)
    while not path.exists() and path.parent != path:  # not created yet: where it will be
        path = path.parent
    try:
        info = os.statvfs(path)
    except OSError as exc:
        return {"problem": f"state directory {path} cannot be examined: {exc}"}
    free = info.f_bavail * info.f_frsize
    total = info.f_blocks * info.f_frsize
    report: dict = {"free_bytes": free, "total_bytes": total}
    if info.f_flag & os.ST_RDONLY:
        report["problem"] = f"state directory {path} is on a read-only file system"
    elif free < LOW_DISK_MIN_FREE_BYTES or (total and free / total < LOW_DISK_MIN_FREE_RATIO):
        report["problem"] = (f"low disk space: {free // 2**20} MiB free of "
                             f"{total // 2**20} MiB under {path} (less than "
                             f"{LOW_DISK_MIN_FREE_BYTES // 2**20} MiB or "
                             f"{LOW_DISK_MIN_FREE_RATIO:.0%})")
    return report


def _lease_row(lease, now, logs: str) -> dict:
    title = lease.metadata.get("title")
    return {
        "task": lease.task_id, "title": title if isinstance(title, str) else None,
        "agent": lease.agent, "state": lease.state, "pid": lease.pid,
        "attempt": lease.attempt, "host": lease.host,
        "age_sec": round((now - lease.started_at).total_seconds(), 1),
        "heartbeat_age_sec": round((now - lease.heartbeat).total_seconds(), 1),
        # the lease store validated the id; plain text joins: this runs per lease
        "log": f"{logs}/{lease.task_id}/attempt-{lease.attempt}.log",
    }


def shorten(text: str | None, width: int = TITLE_WIDTH) -> str:
    """One line of at most ``width`` characters (whitespace collapsed, ``...`` when cut)."""
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 3] + "..."


def render(report: dict) -> str:
    lines = ["AGENTS"]
    if not report["agents"]:
        lines.append("  (none configured)")
    for a in report["agents"]:
        spent = f"  ${a['cost_today_usd']:.2f} today" if a.get("cost_today_usd") else ""
        lines.append(f"  {a['agent']:<16} queue {a['queue'] or '-':<14} {a['used']}/{a['limit']}"
                     f"{spent}")
        if a.get("held"):
            lines.append(f"    {a['held']}")
    lines += ["", f"RUNNING ({len(report['leases'])})"]
    for row in report["leases"]:
        lines.append(f"  task {row['task']:<8} {row['agent']:<14} {row['state']:<9} "
                     f"pid {row['pid'] or '-':<7} runtime {row['age_sec']:>7.1f}s  "
                     f"heartbeat {row['heartbeat_age_sec']:>6.1f}s ago  attempt {row['attempt']}"
                     f"  {shorten(row.get('title'))}".rstrip())
        lines.append(f"    log {row['log']}")
    lines += _render_cluster(report.get("cluster"))
    lines += ["", *_render_backlog(report.get("backlog"))]
    lines += ["", f"OUTBOX   {report['outbox_pending']} result(s) waiting",
              f"DISPATCH {report['paused']}"]
    last = report["last_pass"]
    if last:
        lines.append(f"LAST PASS {last['time']} ({last['age_sec']:.0f} s ago, {last['mode']}): "
                     f"{last['spawned']} spawned, {sum(last['reclaimed'].values())} reclaimed, "
                     f"{last['blocked_skipped']} blocked, {len(last['errors'])} errors, "
                     f"{last['duration_sec'] * 1000:.0f} ms")
        lines += [f"  error: {e}" for e in last["errors"][:10]]
        if last.get("low_disk"):
            lines.append(f"  LOW DISK: tasks skipped ({last['low_disk']})")
        unrunnable = last.get("unrunnable") or []
        if unrunnable:
            total = max(len(unrunnable), (last.get("skipped") or {}).get("unknown-agent", 0))
            more = f", the first {len(unrunnable)} shown" if total > len(unrunnable) else ""
            lines.append(f"NO AGENT CAN RUN {total} task(s){more} (fix the task with "
                         "'task edit', or the agent control file):")
            lines += [f"  task {row['task']}: {row['reason']}" for row in unrunnable]
    disk = report.get("disk") or {}
    if "free_bytes" in disk:
        lines.append(f"DISK     {disk['free_bytes'] // 2**20} MiB free of "
                     f"{disk['total_bytes'] // 2**20} MiB (state directory)")
    src = report["source"]
    lines.append(f"SOURCE   {src['kind']}: {'ok' if src['ok'] else 'FAILING'} - {src['detail']}")
    lines.append("")
    lines.append("healthy" if report["healthy"] else "UNHEALTHY: " + "; ".join(report["problems"]))
    return "\n".join(lines)


BACKLOG_COLUMNS = ("ready", "blocked", "backoff", "working", "parked")


def _render_backlog(backlog: dict | None) -> list[str]:
    if backlog is None:
        return ["BACKLOG  (not counted for this task source)"]
    lines = ["BACKLOG  " + f"{'queue':<16}" + "".join(f"{c:>9}" for c in BACKLOG_COLUMNS)]
    if not backlog:
        lines.append("  (no tasks)")
    for queue, counts in backlog.items():
        lines.append("         " + f"{queue:<16}"
                     + "".join(f"{counts.get(c, 0):>9}" for c in BACKLOG_COLUMNS))
    return lines


def _render_cluster(cluster: dict | None) -> list[str]:
    if cluster is None:
        return []
    lines = ["", f"CLUSTER ({len(cluster['hosts'])} hosts)"]
    if cluster.get("error"):
        lines.append(f"  unavailable: {cluster['error']}")
    for host in cluster["hosts"]:
        age = host["heartbeat_age_sec"]
        state = "alive" if host["alive"] else "DEAD"
        seen = f"heartbeat {age:.1f}s ago" if age is not None else "never seen"
        lines.append(f"  {host['host']:<16} {state:<5} {seen}  {len(host['runs'])} run(s)")
        for run in host["runs"]:
            lines.append(f"    task {run['task']:<8} {run['agent']:<14} run {run['run']:<6} "
                         f"attempt {run['attempt']}  heartbeat {run['heartbeat_age_sec']:.1f}s ago")
    return lines
