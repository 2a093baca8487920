"""Benchmark the lease store: list, list + classify, and one durable update.

Run with the venv's interpreter: ``.venv/bin/python bench/leases.py [N ...]``.
For each N, N running leases of this host are written to a temp dir. ``list+classify``
is measured twice: with every liveness lock held (by this process: the fast path, one
flock probe per lease) and with every lock free (the slow path: probe, then psutil).
Times are medians of a few repetitions. Goal: 10,000 classified in < 0.5 s.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

from scheduler import clock
from scheduler.state.leases import RUNNING, Lease, LeaseStore, encode
from scheduler.state.liveness import ALIVE, SystemProbe, classify

HOST = "bench-host"
REPEATS = 3
UPDATE_SAMPLES = 200


def make_leases(store: LeaseStore, count: int) -> list[Lease]:
    now = clock.now()
    started = psutil.Process().create_time()
    leases = [
        Lease(task_id=f"task-{n:06d}", agent="worker", state=RUNNING,
              spawn_token=os.urandom(8).hex(), started_at=now, heartbeat=now, host=HOST,
              queue="default", recipe="implement.yaml", pid=os.getpid(),
              pid_started_at=started, scheduler_pid=os.getpid(), metadata={"title": "bench"})
        for n in range(count)
    ]
    for lease in leases:
        store.create(lease)
    return leases


def median_time(func, repeats: int = REPEATS) -> float:
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        func()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples)


def list_and_classify(store: LeaseStore) -> int:
    probe = SystemProbe(store)
    now = clock.now()
    alive = 0
    for lease in store.list():
        reason = classify(lease, now=now, this_host=HOST, max_runtime_sec=3600,
                          spawn_timeout_sec=30, kill_grace_sec=30, probe=probe)
        alive += reason is ALIVE
    return alive


def bench(count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="lease-bench-") as tmp:
        store = LeaseStore(Path(tmp) / "running")
        leases = make_leases(store, count)
        size = len(encode(leases[0]))
        t_list = median_time(store.list)
        assert len(store.list()) == count

        locks = [store.liveness_lock(lease.task_id) for lease in leases]
        for lock in locks:
            assert lock.acquire(0)
        assert list_and_classify(store) == count
        t_held = median_time(lambda: list_and_classify(store))
        for lock in locks:
            lock.release()
        assert list_and_classify(store) == count
        t_free = median_time(lambda: list_and_classify(store))

        def one_update(lease: Lease = leases[0]) -> None:
            store.update(lease)

        t_update = statistics.median(median_time(one_update, 1) for _ in range(UPDATE_SAMPLES))
        print(f"N={count:>6,}  lease {size} B  "
              f"list {t_list * 1000:8.1f} ms  "
              f"list+classify held {t_held * 1000:8.1f} ms  "
              f"free {t_free * 1000:8.1f} ms  "
              f"({t_held / count * 1e6:5.1f} / {t_free / count * 1e6:5.1f} µs per lease)  "
              f"update (fsync) median {t_update * 1000:.2f} ms")


def main(argv: list[str]) -> None:
    counts = [int(arg) for arg in argv] or [100, 1_000, 10_000]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max(counts) + 256
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, medians of {REPEATS} runs")
    for count in counts:
        bench(count)


if __name__ == "__main__":
    main(sys.argv[1:])
