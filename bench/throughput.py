"""Throughput and latency of ``run --daemon`` on trivial tasks, next to task-spooler.

1. 500 tasks with AGENT_COMMAND ``true``, 8 slots (one agent, limit 8), ``run --daemon``
   with LOOP_INTERVAL_SEC=60 (so only wake-ups drive it), RETRY_BACKOFF_SEC=0,
   HEARTBEAT_SEC=15: tasks per second from the first add (one ``task import``) to the
   last ``complete`` in the history.
2. task-spooler (``tsp``/``ts``) running the same 500 ``true`` with 8 slots, private
   TS_SOCKET, from the first enqueue to the last job done. 1 and 2 alternate for ROUNDS
   rounds, so machine load hits both alike; the medians and their ratio are printed.
3. Latency from ``task add`` (the task's ``created_at``) to the agent's start, one task at
   a time. The agent is ``date +%s.%N``: it prints the time it ran (nanoseconds), read back
   from its attempt log. (A new file's mtime would not do: on kernels with coarse
   timestamps it moves in steps of a clock tick, 4 ms here.)
4. Latency from an agent's exit to the next agent's start (limit 1, sequential tasks):
   the gap between consecutive agents' printed times (``date`` exits at once).

    .venv/bin/python bench/throughput.py [--tasks 500] [--slots 8] [--rounds 3]
                                         [--samples 40] [--quick] [--cold]

``--cold`` adds WARM_WRAPPER_SEC=0 (a fresh wrapper process per task) to each round and
prints the ratio warm / fresh.

Targets (issue 17): >= 150 tasks/s and >= 0.3x task-spooler; both latencies <= 15 ms
(median; p95 printed next to it). task-spooler is optional: without it the ratio is left
out and the bench says how to install it. Also prints ``RESULT`` lines for
bench/summary.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Daemon, cli, epoch, median, p95, result, wait_until

THROUGHPUT_TARGET = 150.0  # tasks/s
TSP_RATIO_TARGET = 0.3  # of task-spooler's tasks/s, measured in the same run
LATENCY_TARGET = 0.015  # s, median
LATENCY_SAMPLES = 40
ROUNDS = 3


def daemon_throughput(tasks: int, slots: int, warm_sec: int | None = None) -> tuple[float, float]:
    base = Path(tempfile.mkdtemp(prefix="bench-tput-"))
    warm = {} if warm_sec is None else {"WARM_WRAPPER_SEC": warm_sec}
    try:
        with Daemon(base, AGENT_COMMAND="true", AGENT_LIMITS=f"w={slots}", **warm) as daemon:
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


#: The agent of the latency runs: prints when it ran, to the nanosecond.
CLOCK_AGENT = "date +%s.%N"


def agent_ran_at(base: Path, task_id: str) -> float | None:
    """When the task's first attempt's agent ran (what ``date +%s.%N`` printed into the
    attempt log), or None while it has not."""
    try:
        text = (base / "state" / "logs" / "tasks" / task_id / "attempt-1.log").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line[:1].isdigit() and "." in line:
            return float(line)
    return None


def add_to_start_latency(samples: int) -> list[float]:
    base = Path(tempfile.mkdtemp(prefix="bench-lat-"))
    try:
        with Daemon(base, AGENT_COMMAND=CLOCK_AGENT, AGENT_LIMITS="w=8") as d:
            latencies = []
            for i in range(samples):
                out = cli(base, d.env, "task", "add", f"latency {i}", "--queue", "dev",
                          "--json").stdout
                task = json.loads(out)
                task_id = str(task["id"])
                if not wait_until(lambda t=task_id: agent_ran_at(base, t), 30, 0.002):
                    raise RuntimeError(f"task {task_id} never started")
                ran_at = agent_ran_at(base, task_id)
                assert ran_at is not None
                latencies.append(ran_at - epoch(task["created_at"]))
        return latencies
    finally:
        shutil.rmtree(base, ignore_errors=True)


def exit_to_start_latency(samples: int) -> list[float]:
    base = Path(tempfile.mkdtemp(prefix="bench-gap-"))
    try:
        with Daemon(base, AGENT_COMMAND=CLOCK_AGENT, AGENT_LIMITS="w=1") as d:
            d.import_tasks(samples + 1)
            if not wait_until(lambda: d.complete_count() == samples + 1, 120, 0.05):
                raise RuntimeError("the sequential tasks did not finish")
        marks = sorted(agent_ran_at(base, str(i)) or 0.0 for i in range(1, samples + 2))
        return [b - a for a, b in zip(marks, marks[1:], strict=False)]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help="alternating tinyscheduler / task-spooler runs (default 3)")
    parser.add_argument("--samples", type=int, default=LATENCY_SAMPLES,
                        help="latency samples of each kind (default 40)")
    parser.add_argument("--quick", action="store_true",
                        help="1 round and 20 latency samples (a smoke run)")
    parser.add_argument("--cold", action="store_true",
                        help="also run WARM_WRAPPER_SEC=0 (a fresh wrapper process per "
                             "task) in each round, for comparison")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.samples = 1, 20

    binary = find_tsp()
    ours: list[float] = []
    theirs: list[float] = []
    cold: list[float] = []
    for round_ in range(args.rounds):  # alternate, so load drifts hit both alike
        rate, elapsed = daemon_throughput(args.tasks, args.slots)
        ours.append(rate)
        line = f"  round {round_ + 1}: tinyscheduler {rate:6.1f} tasks/s ({elapsed:.2f} s)"
        if args.cold:
            cold_rate, cold_elapsed = daemon_throughput(args.tasks, args.slots, warm_sec=0)
            cold.append(cold_rate)
            line += f", WARM_WRAPPER_SEC=0 {cold_rate:6.1f} tasks/s ({cold_elapsed:.2f} s)"
        if binary is not None:
            tsp_rate, tsp_elapsed = tsp_throughput(binary, args.tasks, args.slots)
            theirs.append(tsp_rate)
            line += f", task-spooler {tsp_rate:6.1f} tasks/s ({tsp_elapsed:.2f} s)"
        print(line, flush=True)
    rate = median(ours)
    ratio = median(ours) / median(theirs) if theirs else None
    print(f"{args.tasks} x true through {args.slots} slots, median of {args.rounds} "
          "alternating rounds")
    print(f"  tinyscheduler run --daemon: {rate:7.1f} tasks/s "
          f"(min {min(ours):.1f}, max {max(ours):.1f})   target >= "
          f"{THROUGHPUT_TARGET:.0f}/s: {'ok' if rate >= THROUGHPUT_TARGET else 'MISSED'}")
    if cold:
        print(f"  WARM_WRAPPER_SEC=0 (a fresh wrapper per task): {median(cold):7.1f} tasks/s; "
              f"warm / fresh {rate / median(cold):.2f}")
    if binary is None:
        print("  task-spooler: not installed; install it with `apt-get install -y "
              "task-spooler` (binary tsp or ts) to compare")
    else:
        print(f"  task-spooler ({Path(binary).name} -S {args.slots}):  {median(theirs):7.1f} "
              f"tasks/s (min {min(theirs):.1f}, max {max(theirs):.1f})")
        print(f"  ratio of medians tinyscheduler / task-spooler: {ratio:.2f}   target >= "
              f"{TSP_RATIO_TARGET}: {'ok' if ratio >= TSP_RATIO_TARGET else 'MISSED'}")
    add = add_to_start_latency(args.samples)
    gap = exit_to_start_latency(args.samples)
    latencies = (("task add -> agent start", add),
                 ("agent exit -> next agent start (limit 1)", gap))
    for label, values in latencies:
        value = median(values)
        print(f"latency {label}: median {value * 1000:.1f} ms, p95 {p95(values) * 1000:.1f} "
              f"(min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f}, n={len(values)})"
              f"   target median <= {LATENCY_TARGET * 1000:.0f} ms: "
              f"{'ok' if value <= LATENCY_TARGET else 'MISSED'}")

    result(f"tasks/s, {args.tasks} x true, {args.slots} slots", rate, "/s",
           f">= {THROUGHPUT_TARGET:g}", tsp=ratio, tsp_target=f">= {TSP_RATIO_TARGET:g}",
           note="" if binary else "task-spooler not installed: apt-get install -y "
           "task-spooler")
    for (_label, values), short in zip(latencies, ("add -> start", "exit -> next start"),
                                      strict=True):
        result(f"latency {short}, median", median(values) * 1000, "ms",
               f"<= {LATENCY_TARGET * 1000:g}")
        result(f"latency {short}, p95", p95(values) * 1000, "ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
