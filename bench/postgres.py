"""PostgreSQL against the embedded store, on a throwaway server (tests/pgserver.py):

- claims per second: 3,000 queued tasks claimed by 1 host, then by 3 hosts at once (each
  a process with its own connection, claiming the same ready list in planner order, as
  racing schedulers do; a task another host holds is skipped), and the same on SQLite;
- ``run --once`` wall time (a fresh process) with an empty backlog and with 100,000
  queued tasks (nothing can spawn: the agent's limit is 0, so it measures the ready
  queries and planning), PostgreSQL vs the embedded store;
- add -> start latency across hosts: a daemon on host B, tasks added on host A (through
  the store API, one at a time); the time from the add to the agent's start (``touch``),
  median and p95; the same on one host with the embedded store for comparison.

    .venv/bin/python bench/postgres.py [--runs 5] [--quick] [--passes]

``--passes``: only the ``run --once`` wall times and a daemon's throughput (its first 500
tasks with 500 queued, then with 100,000), with ``RESULT`` lines for bench/summary.py
(what ``make bench`` runs; the targets, as on the embedded store: a pass over 100,000
queued tasks costs at most twice the empty one, and the daemon keeps at least 0.8 of its
throughput). Without PostgreSQL's ``initdb`` and ``pg_ctl`` the bench says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import (
    CONSOLE_SCRIPT,
    clean_env,
    median,
    result,
    table,
    timed,
    wait_until,
    write_agents,
)
from pgserver import PgServer, find_binary

from scheduler.errors import InvalidTransition
from scheduler.sources.local import LocalStore
from scheduler.sources.postgres.store import PostgresStore
from scheduler.state.wake import nudge


def _claim_host(kind: str, where: str, host: str, start, done) -> None:
    store = PostgresStore(where, host=host) if kind == "postgres" else LocalStore(Path(where))
    with store:
        ready = store.queue_idle_unassigned("dev")
        start.wait()
        claimed = 0
        for task in ready:
            try:
                store.claim(task.id, "ada", f"{host}-{task.id}")
                claimed += 1
            except InvalidTransition:
                continue
    done.put(claimed)


def claims_per_second(kind: str, where: str, hosts: int, tasks: int) -> float:
    specs = [{"title": f"t{i}", "queue": "dev"} for i in range(tasks)]
    opened = PostgresStore(where) if kind == "postgres" else LocalStore(Path(where))
    with opened as store:
        store.import_tasks(specs)
    ctx = multiprocessing.get_context("fork")
    start, done = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_claim_host, args=(kind, where, f"h{n}", start, done))
               for n in range(hosts)]
    for worker in workers:
        worker.start()
    time.sleep(1.5)  # every host has its ready list
    began = time.perf_counter()
    start.set()
    claimed = sum(done.get(timeout=600) for _ in workers)
    elapsed = time.perf_counter() - began
    for worker in workers:
        worker.join()
    assert claimed == tasks, (claimed, tasks)
    return claimed / elapsed


def seed_queued(kind: str, where: str, count: int) -> None:
    if kind == "postgres":
        with PostgresStore(where) as store:
            store.add_task("seed", queue="dev")
            store.db.query(
                "INSERT INTO tinyscheduler.tasks (title, queue, status, created_at, updated_at) "
                "SELECT 'queued ' || n, 'dev', 'idle', now(), now() "
                "FROM generate_series(2, %s) n", (count,))
            store.db.query("ANALYZE tinyscheduler.tasks")
        return
    with LocalStore(Path(where)) as store:
        for start in range(0, count, 10_000):
            store.import_tasks([{"title": f"queued {n}", "queue": "dev"}
                                for n in range(start, min(count, start + 10_000))])


def pass_time(base: Path, env: dict, runs: int) -> float:
    times = []
    for _ in range(runs):
        elapsed, proc = timed([str(CONSOLE_SCRIPT), "--base-path", str(base), "run", "--once"],
                              env, base)
        if proc.returncode != 0:
            raise RuntimeError(proc.stdout + proc.stderr)
        times.append(elapsed)
    return median(times)


def passes(server: PgServer, root: Path, runs: int, queued: int,
           kinds: tuple[str, ...] = ("local", "postgres")) -> dict[tuple[str, int], float]:
    """Median ``run --once`` wall seconds per (store, tasks queued)."""
    medians = {}
    for kind in kinds:
        for count in (0, queued):
            base = root / f"pass-{kind}-{count}"
            base.mkdir()
            write_agents(base, {"ada": "dev"})
            settings: dict = {"TASK_SOURCE": kind, "AGENT_LIMITS": "ada=0", "AGENT_COMMAND": "true"}
            if kind == "postgres":
                settings["DATABASE_URL"] = server.new_database()
                where = settings["DATABASE_URL"]
            else:
                where = str(base / "state" / "tasks.db")
            if count:
                seed_queued(kind, where, count)
            env = clean_env(**settings)
            subprocess.run([str(CONSOLE_SCRIPT), "--base-path", str(base), "validate-config",
                            "--fix"], env=env, cwd=base, capture_output=True)
            pass_time(base, env, 1)  # migrations, caches
            medians[(kind, count)] = pass_time(base, env, runs)
    return medians


def pass_rows(medians: dict[tuple[str, int], float]) -> list[tuple]:
    return [(kind, f"{count:,}", f"{seconds * 1000:.0f} ms")
            for (kind, count), seconds in medians.items()]


def daemon_rate(server: PgServer, root: Path, queued: int, measured: int,
                slots: int = 8) -> float:
    """Tasks per second of a PostgreSQL daemon's first ``measured`` tasks (``true``)
    with ``queued`` waiting: first claim to the ``measured``-th completion."""
    base = root / f"depth-{queued}"
    base.mkdir()
    write_agents(base, {"ada": "dev"})
    url = server.new_database()
    seed_queued("postgres", url, queued)
    env = clean_env(TASK_SOURCE="postgres", DATABASE_URL=url, AGENT_COMMAND="true",
                    AGENT_LIMITS=f"ada={slots}", LOOP_INTERVAL_SEC="60")
    subprocess.run([str(CONSOLE_SCRIPT), "--base-path", str(base), "validate-config", "--fix"],
                   env=env, cwd=base, capture_output=True)
    daemon = subprocess.Popen([str(CONSOLE_SCRIPT), "--base-path", str(base), "run",
                               "--daemon"], env=env, cwd=base, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with PostgresStore(url) as store:
            def completed() -> int:
                return store.db.query("SELECT count(*) FROM tinyscheduler.tasks "
                                      "WHERE status = 'complete'")[0][0]

            if not wait_until(lambda: completed() >= measured or daemon.poll() is not None,
                              600, 0.1) or daemon.poll() is not None:
                raise RuntimeError(f"only {completed()} of {measured} completed (daemon exit "
                                   f"code {daemon.poll()})")
            first = store.db.query("SELECT min(at) FROM tinyscheduler.history "
                                   "WHERE to_status = 'working'")[0][0]
            last = store.db.query("SELECT at FROM tinyscheduler.history WHERE to_status = "
                                  "'complete' ORDER BY id LIMIT 1 OFFSET %s",
                                  (measured - 1,))[0][0]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
    return measured / (last - first).total_seconds()


def report_passes(server: PgServer, root: Path, runs: int, queued: int,
                  measured: int) -> None:
    """The PostgreSQL pass over a full backlog against the empty one, and a daemon's
    throughput with the full backlog against a short one, as RESULT lines."""
    medians = passes(server, root, runs, queued, kinds=("postgres",))
    print(f"run --once wall time (median of {runs}, fresh process)")
    print(table(("store", "queued", "pass"), pass_rows(medians)))
    empty, full = medians[("postgres", 0)], medians[("postgres", queued)]
    result(f"postgres run --once, no free slot, {queued:,} queued / empty (wall)",
           full / empty, "x", "<= 2")
    result("postgres run --once, empty (wall)", empty * 1000, "ms")
    result(f"postgres run --once, {queued:,} queued (wall)", full * 1000, "ms")
    short, deep = daemon_rate(server, root, measured, measured), daemon_rate(
        server, root, queued, measured)
    print(f"run --daemon, first {measured} tasks (true, 8 slots): {measured:,} queued "
          f"{short:.1f}/s, {queued:,} queued {deep:.1f}/s")
    result(f"postgres tasks/s with {queued:,} queued / {measured:,} queued", deep / short,
           "x", ">= 0.8")


def latency(server: PgServer, root: Path, samples: int, kind: str) -> tuple[float, float]:
    """add -> start: ``postgres``, added on host a and run by a daemon on host b; or
    ``local``, added (and the daemon nudged, as ``task add`` does) on the same host. The
    agent is ``touch``: its start is the file's mtime."""
    base = root / f"latency-{kind}"
    base.mkdir()
    write_agents(base, {"ada": "dev"})
    starts = root / f"starts-{kind}"
    starts.mkdir()
    settings: dict = {"TASK_SOURCE": kind, "AGENT_LIMITS": "ada=4", "LOOP_INTERVAL_SEC": 60,
                      "HOSTNAME": "b", "AGENT_COMMAND": f"touch {starts}/{{task_id}}"}
    if kind == "postgres":
        settings["DATABASE_URL"] = server.new_database()
        store: Any = PostgresStore(settings["DATABASE_URL"], host="a")
    else:
        store = LocalStore(base / "state" / "tasks.db")
    env = clean_env(**settings)
    daemon = subprocess.Popen([str(CONSOLE_SCRIPT), "--base-path", str(base), "run", "--daemon"],
                              env=env, cwd=base, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    delays = []
    try:
        with store:
            store.list_tasks()
            wait_until(lambda: (base / "state" / "last-pass.json").exists(), 30)
            time.sleep(1.0)
            for _ in range(samples):
                task = store.add_task("latency", queue="dev")
                if kind == "local":
                    nudge(base / "state" / "wake.sock")
                mark = starts / task.id
                if not wait_until(mark.exists, 10):
                    raise RuntimeError("a task did not start within 10 s")
                delays.append(mark.stat().st_mtime - task.created_at.timestamp())
                time.sleep(0.1)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    delays.sort()
    return statistics.median(delays), delays[max(0, int(len(delays) * 0.95) - 1)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer samples")
    parser.add_argument("--passes", action="store_true",
                        help="only the run --once times and a daemon's throughput, with "
                             "RESULT lines (make bench)")
    args = parser.parse_args()
    tasks, queued, samples, measured = ((600, 10_000, 10, 100) if args.quick
                                        else (3_000, 100_000, 40, 500))
    try:
        find_binary("initdb")
        find_binary("pg_ctl")
    except RuntimeError as exc:
        print(f"skipped: {exc}")
        return 0
    server = PgServer()
    try:
        with tempfile.TemporaryDirectory(prefix="tinysched-bench-") as tmp:
            root = Path(tmp)
            if args.passes:
                report_passes(server, root, args.runs, queued, measured)
                return 0
            rows = []
            for kind in ("local", "postgres"):
                for hosts in (1, 3):
                    where = (server.new_database() if kind == "postgres"
                             else str(root / f"claims-{hosts}.db"))
                    rate = claims_per_second(kind, where, hosts, tasks)
                    rows.append((kind, hosts, f"{rate:,.0f}"))
            print(f"claims per second ({tasks:,} queued tasks)")
            print(table(("store", "hosts", "claims/s"), rows))
            print()
            print(f"run --once wall time (median of {args.runs}, fresh process)")
            print(table(("store", "queued", "pass"),
                        pass_rows(passes(server, root, args.runs, queued))))
            print()
            figures = {}
            for kind, label in (("postgres", "across hosts (postgres)"),
                                ("local", "same host (embedded store)")):
                mid, p95 = latency(server, root, samples, kind)
                figures[kind] = {"median_ms": round(mid * 1000, 1),
                                 "p95_ms": round(p95 * 1000, 1)}
                print(f"add -> start {label}, {samples} tasks: median {mid * 1000:.0f} ms, "
                      f"p95 {p95 * 1000:.0f} ms")
            print(json.dumps({"add_to_start": figures}))
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
