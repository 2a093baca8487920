"""Throughput and latency of ``run --daemon`` on trivial tasks, next to task-spooler.

1. 500 tasks with AGENT_COMMAND ``true``, 8 slots (one agent, limit 8), ``run --daemon``
   with LOOP_INTERVAL_SEC=60 (so only wake-ups drive it), RETRY_BACKOFF_SEC=0,
   HEARTBEAT_SEC=15: tasks per second from the first add (one ``task import``) to the
   last ``complete`` in the history.
2. task-spooler (``tsp``/``ts``) running the same 500 ``true`` with 8 slots, private
   TS_SOCKET, from the first enqueue to the last job done.
3. Latency from ``task add`` (the task's ``created_at``) to the agent's start (the agent
   is ``touch {task_file}.started``; the file's mtime), one task at a time.
4. Latency from an agent's exit to the next agent's start (limit 1, sequential tasks):
   the gap between consecutive ``.started`` mtimes (``touch`` exits at once).

    .venv/bin/python bench/throughput.py [--tasks 500] [--slots 8]

Goals: >= 40 tasks/s; both latencies < 0.5 s (medians).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CONSOLE_SCRIPT, clean_env, cli, median, wait_until, write_agents

from scheduler import clock

THROUGHPUT_GOAL = 40.0
LATENCY_GOAL = 0.5
LATENCY_SAMPLES = 20


class Daemon:
    def __init__(self, base: Path, **settings: object) -> None:
        self.base = base
        write_agents(base, {"w": "dev"})
        self.env = clean_env(LOOP_INTERVAL_SEC=60, RETRY_BACKOFF_SEC=0, HEARTBEAT_SEC=15,
                             TASK_SOURCE="local", LOG_LEVEL="WARNING", **settings)
        self.db = base / "state" / "tasks.db"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Daemon:
        cli(self.base, self.env, "task", "list")  # creates the store
        log = open(self.base / "daemon.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [str(CONSOLE_SCRIPT), "--base-path", str(self.base), "run", "--daemon"],
            env=self.env, cwd=self.base, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        last = self.base / "state" / "last-pass.json"
        if not wait_until(last.exists, 10):
            raise RuntimeError("the daemon did not run its first pass")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)

    def import_tasks(self, count: int) -> None:
        path = self.base / f"tasks-{time.monotonic_ns()}.json"
        path.write_text(json.dumps([{"title": f"t{i}", "queue": "dev"} for i in range(count)]))
        cli(self.base, self.env, "task", "import", str(path))

    def query(self, sql: str, params: tuple = ()) -> list:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def complete_count(self) -> int:
        return self.query("SELECT count(*) FROM tasks WHERE status = 'complete'")[0][0]


def epoch(iso: str) -> float:
    return clock.from_iso(iso).timestamp()


def daemon_throughput(tasks: int, slots: int) -> tuple[float, float]:
    base = Path(tempfile.mkdtemp(prefix="bench-tput-"))
    try:
        with Daemon(base, AGENT_COMMAND="true", AGENT_LIMITS=f"w={slots}") as daemon:
            started = time.time()
            daemon.import_tasks(tasks)
            if not wait_until(lambda: daemon.complete_count() == tasks, 600, 0.05):
                raise RuntimeError(f"only {daemon.complete_count()} of {tasks} completed")
            last = daemon.query("SELECT max(at) FROM history WHERE to_status = 'complete'")
            first = daemon.query("SELECT min(at) FROM history")[0][0]
        elapsed = epoch(last[0][0]) - min(started, epoch(first))
        return tasks / elapsed, elapsed
    finally:
        shutil.rmtree(base, ignore_errors=True)


def find_tsp() -> str | None:
    for name in ("tsp", "ts"):
        path = shutil.which(name)
        if path is None:
            continue
        helped = subprocess.run([path, "-h"], capture_output=True, text=True)
        if "TS_SOCKET" in helped.stdout + helped.stderr:  # not moreutils' ts
            return path
    return None


def tsp_throughput(binary: str, tasks: int, slots: int) -> tuple[float, float]:
    directory = Path(tempfile.mkdtemp(prefix="bench-tsp-"))
    env = dict(os.environ, TS_SOCKET=str(directory / "ts.sock"), TS_MAXFINISHED="100000",
               TMPDIR=str(directory))
    try:
        subprocess.run([binary, "-S", str(slots)], env=env, check=True, capture_output=True)
        started = time.perf_counter()
        last = None
        for _ in range(tasks):
            last = subprocess.run([binary, "true"], env=env, check=True, capture_output=True,
                                  text=True).stdout.strip()

        def done() -> bool:
            listing = subprocess.run([binary, "-l"], env=env, capture_output=True,
                                     text=True).stdout
            return not any(state in listing for state in (" running ", " queued "))

        subprocess.run([binary, "-w", last], env=env, capture_output=True)
        wait_until(done, 120, 0.005)
        elapsed = time.perf_counter() - started
        return tasks / elapsed, elapsed
    finally:
        subprocess.run([binary, "-K"], env=env, capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


def started_file(base: Path, task_id: str) -> Path:
    return base / "state" / "logs" / "tasks" / task_id / "task.json.started"


def add_to_start_latency(samples: int) -> list[float]:
    base = Path(tempfile.mkdtemp(prefix="bench-lat-"))
    try:
        with Daemon(base, AGENT_COMMAND="touch {task_file}.started", AGENT_LIMITS="w=8") as d:
            latencies = []
            for i in range(samples):
                out = cli(base, d.env, "task", "add", f"latency {i}", "--queue", "dev",
                          "--json").stdout
                task = json.loads(out)
                marker = started_file(base, task["id"])
                if not wait_until(marker.exists, 30, 0.002):
                    raise RuntimeError(f"task {task['id']} never started")
                latencies.append(marker.stat().st_mtime - epoch(task["created_at"]))
        return latencies
    finally:
        shutil.rmtree(base, ignore_errors=True)


def exit_to_start_latency(samples: int) -> list[float]:
    base = Path(tempfile.mkdtemp(prefix="bench-gap-"))
    try:
        with Daemon(base, AGENT_COMMAND="touch {task_file}.started", AGENT_LIMITS="w=1") as d:
            d.import_tasks(samples + 1)
            if not wait_until(lambda: d.complete_count() == samples + 1, 120, 0.05):
                raise RuntimeError("the sequential tasks did not finish")
        marks = sorted(started_file(base, str(i)).stat().st_mtime
                       for i in range(1, samples + 2))
        return [b - a for a, b in zip(marks, marks[1:], strict=False)]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--slots", type=int, default=8)
    args = parser.parse_args()

    rate, elapsed = daemon_throughput(args.tasks, args.slots)
    print(f"{args.tasks} x true through {args.slots} slots")
    print(f"  tinyscheduler run --daemon: {rate:7.1f} tasks/s ({elapsed:.2f} s)   "
          f"goal >= {THROUGHPUT_GOAL:.0f}/s: {'ok' if rate >= THROUGHPUT_GOAL else 'MISSED'}")
    binary = find_tsp()
    if binary is None:
        print("  task-spooler: not installed; install it with `apt-get install -y "
              "task-spooler` (binary tsp or ts) to compare")
    else:
        tsp_rate, tsp_elapsed = tsp_throughput(binary, args.tasks, args.slots)
        print(f"  task-spooler ({Path(binary).name} -S {args.slots}):  {tsp_rate:7.1f} tasks/s "
              f"({tsp_elapsed:.2f} s)")
        print(f"  ratio tinyscheduler / task-spooler: {rate / tsp_rate:.2f}")
    add = add_to_start_latency(LATENCY_SAMPLES)
    gap = exit_to_start_latency(LATENCY_SAMPLES)
    for label, values in (("task add -> agent start", add),
                          ("agent exit -> next agent start (limit 1)", gap)):
        value = median(values)
        print(f"latency {label}: median {value * 1000:.0f} ms (min {min(values) * 1000:.0f}, "
              f"max {max(values) * 1000:.0f}, n={len(values)})   goal < "
              f"{LATENCY_GOAL * 1000:.0f} ms: {'ok' if value < LATENCY_GOAL else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
