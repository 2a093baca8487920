"""Does ``run --daemon`` keep its memory flat over many passes?

A daemon on a local store with a small backlog it cannot start (its one agent's limit is
0, so each pass lists, plans and records, and spawns nothing) is woken PASSES times with
wake-socket nudges, each sent once the previous pass is in metrics.jsonl. Its RSS is read
after the first WARMUP passes and after the last; the difference, and the difference per
1,000 passes, are printed. A second phase runs TASKS trivial tasks through 8 slots (every
pass leases, claims and launches through the fork server) and reads the daemon's and the
fork server's RSS before and after, and the largest RSS and private memory (USS) of the
warm wrappers waiting for their next task (each has run up to 100 tasks by the end).

    .venv/bin/python bench/daemon_memory.py [--passes 20000] [--tasks 2000] [--quick]

Targets (issue 17): flat; a wrapper's RSS < 30 MB. RSS grows by about 1 MB over the
first few thousand passes (SQLite's page cache, up to 2 MB per connection by default,
and the allocator's arenas; Python's own heap grows by a few KB, per tracemalloc) and
then stays put: measured as less than 0.25 MB over the second half of 20,000 passes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Daemon, result, wait_until  # noqa: E402

WARMUP = 200
GROWTH_TARGET_MB = 0.25
WRAPPER_RSS_TARGET_MB = 30


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 1e6


def metric_lines(base: Path) -> int:
    try:
        with open(base / "state" / "metrics.jsonl", "rb") as handle:
            return sum(1 for _ in handle)
    except FileNotFoundError:
        return 0


def woken_passes(passes: int) -> list[tuple[int, float]]:
    """(passes so far, RSS in MB) after the warm-up and after each quarter of the run."""
    base = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    samples: list[tuple[int, float]] = []
    try:
        with Daemon(base, AGENT_COMMAND="true", AGENT_LIMITS="w=0") as daemon:
            daemon.import_tasks(50)
            wake = base / "state" / "wake.sock"
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            marks = {WARMUP + passes * quarter // 4 for quarter in range(5)}
            for number in range(passes + WARMUP + 1):
                before = metric_lines(base)
                sock.sendto(b"wake", str(wake))
                if not wait_until(lambda before=before: metric_lines(base) > before, 10, 0.0002):
                    raise RuntimeError(f"pass {number} did not happen")
                if number in marks:
                    samples.append((number, rss_mb(daemon.proc.pid)))
            sock.close()
        return samples
    finally:
        shutil.rmtree(base, ignore_errors=True)


def task_flow(tasks: int) -> dict[str, float]:
    """RSS of the daemon and its fork server after a quarter, half and all of ``tasks``."""
    base = Path(tempfile.mkdtemp(prefix="bench-mem-flow-"))
    figures: dict[str, float] = {}
    try:
        with Daemon(base, AGENT_COMMAND="true", AGENT_LIMITS="w=8") as daemon:
            for label, count in (("quarter", tasks // 4), ("half", tasks // 4),
                                 ("all", tasks - tasks // 2)):
                done = daemon.complete_count() + count
                daemon.import_tasks(count)
                if not wait_until(lambda done=done: daemon.complete_count() >= done, 600, 0.05):
                    raise RuntimeError("the tasks did not finish")
                servers = psutil.Process(daemon.proc.pid).children()
                figures[f"daemon_{label}"] = rss_mb(daemon.proc.pid)
                figures[f"server_{label}"] = rss_mb(servers[0].pid) if servers else 0.0
                wrappers = servers[0].children() if servers else []
                figures[f"wrapper_{label}"] = max(map(rss_mb, (w.pid for w in wrappers)),
                                                  default=0.0)
                figures[f"wrapper_uss_{label}"] = max(
                    (w.memory_full_info().uss / 2**20 for w in wrappers), default=0.0)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=20_000)
    parser.add_argument("--tasks", type=int, default=2_000)
    parser.add_argument("--quick", action="store_true", help="2,000 passes, 500 tasks")
    args = parser.parse_args()
    passes, tasks = (2_000, 500) if args.quick else (args.passes, args.tasks)

    started = time.monotonic()
    samples = woken_passes(passes)
    series = ", ".join(f"{rss:.2f} MB after {number}" for number, rss in samples)
    first_half = samples[2][1] - samples[0][1]
    second_half = samples[4][1] - samples[2][1]
    print(f"{passes} woken passes ({time.monotonic() - started:.0f} s): {series}")
    print(f"  growth: {first_half:+.2f} MB in the first half, {second_half:+.2f} MB in the "
          "second")
    result(f"daemon RSS growth, second half of {passes} passes", second_half, "MB",
           f"< {GROWTH_TARGET_MB}")
    flow = task_flow(tasks)
    print(f"{tasks} tasks through the fork server: daemon RSS {flow['daemon_quarter']:.2f} / "
          f"{flow['daemon_half']:.2f} / {flow['daemon_all']:.2f} MB after a quarter / half / "
          f"all; fork server {flow['server_quarter']:.2f} / {flow['server_half']:.2f} / "
          f"{flow['server_all']:.2f} MB")
    print(f"  warm wrappers, largest RSS {flow['wrapper_quarter']:.2f} / "
          f"{flow['wrapper_half']:.2f} / {flow['wrapper_all']:.2f} MB, of it private (USS) "
          f"{flow['wrapper_uss_quarter']:.2f} / {flow['wrapper_uss_half']:.2f} / "
          f"{flow['wrapper_uss_all']:.2f} MB")
    result(f"warm wrapper RSS after {tasks} tasks through 8 slots", flow["wrapper_all"], "MB",
           f"< {WRAPPER_RSS_TARGET_MB}")
    result(f"daemon RSS growth, second half of {tasks} tasks",
           flow["daemon_all"] - flow["daemon_half"], "MB",
           note="the store grows with every task: SQLite's page cache fills (<= 2 MB)")
    print(json.dumps({"passes": passes, "rss_mb": [[n, round(r, 2)] for n, r in samples],
                      **{k: round(v, 2) for k, v in flow.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
