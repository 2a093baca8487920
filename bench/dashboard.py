"""The dashboard under a large state: 10,000 tasks (1,000 of them running, with live
leases and attempt logs), 20,000 recorded outcomes and 2,000 recorded passes.

Measures, against a real ``tinyscheduler dashboard`` process on loopback:

- the response time of ``/`` and ``/api/v1/state``: *cold* (every request builds the
  state afresh: requests 2.1 s apart, past both caches) and *warm* (back to back, served
  from the 0.5 s state cache, as when several pages poll at once); goal: cold median
  < 100 ms;
- the dashboard's resident memory after those requests (goal < 60 MB);
- the scheduler's ``run --once`` wall time on the same state with the dashboard frozen
  (SIGSTOP: as if it were not running) and with it running and polled once a second (as
  by an open page), alternating: unchanged within noise.

The leases are live (this process holds their liveness locks, as in bench/pass.py), so
the passes reclaim and spawn nothing.

    .venv/bin/python bench/dashboard.py [--requests 10] [--runs 7]

Exit code 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import psutil
from _common import CONSOLE_SCRIPT, clean_env, write_agents

from scheduler import clock

bench_pass = importlib.import_module("pass")  # bench/pass.py: seeding and live leases

LEASES, IDLE = 1_000, 9_000
GOAL_MS, GOAL_RSS_MB = 100.0, 60.0


def seed_records(base: Path, outcomes: int, passes: int) -> None:
    state, now = base / "state", clock.now()
    rng = random.Random(7)
    agents = list(bench_pass.AGENTS)
    with open(state / "outcomes.jsonl", "w", encoding="utf-8") as handle:
        for i in range(outcomes):
            at = now - timedelta(seconds=(outcomes - i) * 10_800 / outcomes)
            outcome = "succeeded" if rng.random() < 0.85 else "failed"
            handle.write(json.dumps({"time": clock.to_iso(at), "task": str(i + 1),
                                     "agent": agents[i % len(agents)], "attempt": 1,
                                     "outcome": outcome, "action": "complete",
                                     "duration_sec": 12.5, "host": "benchhost"}) + "\n")
    with open(state / "metrics.jsonl", "w", encoding="utf-8") as handle:
        for i in range(passes):
            at = now - timedelta(seconds=(passes - i) * 10_800 / passes)
            handle.write(json.dumps({
                "time": clock.to_iso(at), "mode": "daemon", "duration_sec": 0.05,
                "leases_scanned": LEASES, "reclaimed": {}, "stopped": 0, "spawned": 2,
                "blocked_skipped": 0, "outbox_delivered": 0, "outbox_pending": 0,
                "errors": 0, "agents": {a: [250, 250] for a in agents}}) + "\n")


def seed_logs(base: Path, working) -> None:
    logs = base / "state" / "logs" / "tasks"
    for task_id, agent, _ in working:
        (logs / task_id).mkdir(parents=True, mode=0o700, exist_ok=True)
        lines = [f"[tinyscheduler 2026-01-01T00:00:00.000Z] task {task_id} agent {agent}"]
        lines += [f"{agent}: step {n} of task {task_id}: running the tests" for n in range(40)]
        (logs / task_id / "attempt-1.log").write_text("\n".join(lines) + "\n")


def start_dashboard(base: Path, env: dict) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([str(CONSOLE_SCRIPT), "--base-path", str(base), "dashboard",
                             "--bind", "127.0.0.1:0"], env=env, cwd=base,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    line = proc.stdout.readline()
    match = re.search(rb"(http://\S+)/ ", line)
    if match is None:
        raise RuntimeError(f"dashboard did not start: {line!r}")
    return proc, match.group(1).decode()


def timed_get(client: httpx.Client, url: str) -> float:
    start = time.perf_counter()
    response = client.get(url)
    elapsed = (time.perf_counter() - start) * 1000
    response.raise_for_status()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    ok = True
    try:
        write_agents(base, bench_pass.AGENTS)
        with ExitStack() as stack:
            (base / "state" / "running").mkdir(parents=True, mode=0o700)
            working = bench_pass.seed_local(base, LEASES, IDLE)
            bench_pass.make_leases(base, working, stack)
            seed_logs(base, working)
            seed_records(base, 20_000, 2_000)
            per_agent = LEASES // len(bench_pass.AGENTS)
            env = clean_env(HOSTNAME=bench_pass.HOST, AGENT_COMMAND="true",
                            HEARTBEAT_SEC=15, LOG_LEVEL="WARNING", TASK_SOURCE="local",
                            AGENT_LIMITS=json.dumps({a: per_agent for a in bench_pass.AGENTS}))

            proc, url = start_dashboard(base, env)
            stack.callback(lambda: (proc.send_signal(signal.SIGCONT), proc.terminate(),
                                    proc.wait(timeout=30)))
            rows = []
            with httpx.Client(timeout=30) as client:
                for path in ("/", "/api/v1/state"):
                    timed_get(client, url + path)  # warm-up: first read of the records
                    cold = []
                    for _ in range(args.requests):
                        time.sleep(2.1)  # past the state (0.5 s) and waiting-list (2 s) caches
                        cold.append(timed_get(client, url + path))
                    warm = [timed_get(client, url + path) for _ in range(args.requests * 3)]
                    rows.append((path, statistics.median(cold), max(cold),
                                 statistics.median(warm)))
                rss = psutil.Process(proc.pid).memory_info().rss / 2**20

                # Pass times, alternating (so the machine's load drifts equally on both):
                # the dashboard frozen (SIGSTOP: as if not running), then running and
                # polled once a second, as by an open page.
                polling = threading.Event()
                stop = threading.Event()

                def poll() -> None:
                    with httpx.Client(timeout=30) as poller:
                        while not stop.wait(1.0):
                            if polling.is_set():
                                poller.get(url + "/fragments/state")

                poller = threading.Thread(target=poll, daemon=True)
                poller.start()
                without, with_dashboard = [], []
                for _ in range(args.runs):
                    polling.clear()
                    time.sleep(1.1)  # let a poll in flight finish
                    proc.send_signal(signal.SIGSTOP)
                    without += bench_pass.measure(base, env, 1, 0, LEASES)
                    proc.send_signal(signal.SIGCONT)
                    polling.set()
                    time.sleep(1.1)
                    with_dashboard += bench_pass.measure(base, env, 1, 0, LEASES)
                stop.set()
                poller.join()
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(f"dashboard with {LEASES + IDLE:,} tasks, {LEASES:,} running (live leases), "
          "20,000 outcomes, 2,000 passes")
    print(f"{'path':<16}{'cold median':>13}{'cold max':>10}{'warm median':>13}  goal")
    for path, cold_median, cold_max, warm_median in rows:
        met = cold_median < GOAL_MS
        ok &= met
        print(f"{path:<16}{cold_median:>10.1f} ms{cold_max:>7.1f} ms{warm_median:>10.1f} ms"
              f"  cold < {GOAL_MS:.0f} ms  {'ok' if met else 'MISSED'}")
    ok &= rss < GOAL_RSS_MB
    print(f"dashboard RSS after the requests: {rss:.1f} MB  (goal < {GOAL_RSS_MB:.0f} MB: "
          f"{'ok' if rss < GOAL_RSS_MB else 'MISSED'})")
    a, b = statistics.median(without), statistics.median(with_dashboard)
    print(f"run --once, median of {args.runs} (alternating): {a * 1000:.0f} ms with the "
          f"dashboard stopped, {b * 1000:.0f} ms with it running and polled (x{b / a:.2f}; "
          f"min {min(without) * 1000:.0f} / {min(with_dashboard) * 1000:.0f} ms)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
