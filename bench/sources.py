"""Ready list of one queue holding 10,000 idle tasks (half of them blocked), per source.

Prints the median time of `queue_idle_unassigned` for the embedded local store and for
the TinyTask client against the in-process fake server (tests/fake_tinytask.py).
Usage: python bench/sources.py [--tasks N] [--runs R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fake_tinytask import FakeTinyTask  # noqa: E402

from scheduler.sources.local import LocalStore  # noqa: E402
from scheduler.sources.tinytask import TinyTaskSource  # noqa: E402


def median_ms(call, runs: int) -> tuple[float, int]:
    times, count = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        count = len(call())
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), count


def bench_local(n: int, runs: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "tasks.db")
        # Every other task is blocked by the one before it (its blocker is idle).
        specs = [{"title": f"task {i}", "queue": "dev", "priority": i % 7,
                  **({"blocked_by": [f"#{i - 1}"]} if i % 2 else {})} for i in range(n)]
        store.import_tasks(specs)
        store.queue_idle_unassigned("dev")  # warm the page cache
        result = median_ms(lambda: store.queue_idle_unassigned("dev"), runs)
        store.close()
        return result


def bench_tinytask(n: int, runs: int) -> tuple[float, int]:
    with FakeTinyTask() as server:
        previous = None
        for i in range(n):
            previous = server.add_task(f"task {i}", queue="dev", priority=i % 7,
                                       blocked_by=previous if i % 2 else None)
        source = TinyTaskSource(server.url)
        source.queue_idle_unassigned("dev")  # builds the client once
        result = median_ms(lambda: source.queue_idle_unassigned("dev"), runs)
        source.close()
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"ready list of one queue: {args.tasks} idle tasks, half blocked; "
          f"median of {args.runs} runs")
    local_ms, local_n = bench_local(args.tasks, args.runs)
    print(f"  local store (SQLite)          {local_ms:8.1f} ms  ({local_n} tasks returned)")
    remote_ms, remote_n = bench_tinytask(args.tasks, args.runs)
    print(f"  TinyTask client (fake server) {remote_ms:8.1f} ms  ({remote_n} tasks returned, "
          f"{-(-remote_n // 100)} pages)")
    print(f"  ratio TinyTask / local        {remote_ms / local_ms:8.1f}x")


if __name__ == "__main__":
    main()
