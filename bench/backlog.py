"""What the backlog costs: a pass with every slot busy, and daemon throughput, as the
number of queued tasks grows (local store).

1. Pass cost: two agents of queue ``dev``, limit 4 each, 8 live leases (this process
   holds their liveness locks, as in bench/pass.py, so nothing is reclaimed or spawned)
   and 0, 1,000, 10,000 or 100,000 idle tasks in the queue. For each size: the wall time
   of ``run --once`` as a fresh process and the in-pass time (``duration_sec`` of
   state/last-pass.json), median of RUNS runs after one warm-up run; the sizes alternate
   run by run so machine load hits all alike. Each is printed next to the empty case,
   with the ratio. Target: 100,000 idle <= 2x the empty pass (wall time). Alongside, the
   same with 5,000 live leases (2 agents x limit 2,500) and no idle task, and then RUNS
   passes of a ``run --daemon`` over them (each woken through its socket, after two
   warm-up passes: what a daemon keeps across passes counts); target: the daemon's
   in-pass time <= 0.1 s. (The bench writes those leases without fsync: seeding only.)
2. Throughput against depth: ``run --daemon`` (AGENT_COMMAND=true, one agent, 8 slots,
   LOOP_INTERVAL_SEC=60, RETRY_BACKOFF_SEC=0) on a store seeded with 500, then with
   100,000 idle tasks before it starts. Measured: the first 500 tasks to run, from the
   first claim (``working`` in the history) to the 500th ``complete``; the two depths
   alternate for DAEMON_RUNS rounds, medians and their ratio are printed. Target: with
   100,000 queued >= 0.8x the throughput with 500 queued. (With 500 queued the last few
   tasks run while slots empty out, with 100,000 every slot stays busy: the ratio leans
   a few percent towards the deep queue.)

    .venv/bin/python bench/backlog.py [--runs 7] [--daemon-runs 3] [--quick]

``--quick`` uses 10,000 as the largest size (both parts), 3 runs and 1 daemon round.
Also prints ``RESULT`` lines for bench/summary.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    CONSOLE_SCRIPT,
    Daemon,
    clean_env,
    epoch,
    make_leases,
    median,
    result,
    seed_queue,
    signals_verdict,
    table,
    timed,
    wait_until,
    write_agents,
)

AGENTS = {"ada": "dev", "bo": "dev"}
LIMIT = 4
HOST = "benchhost"
SIZES = (0, 1_000, 10_000, 100_000)
QUICK_SIZES = (0, 1_000, 10_000)
PASS_RATIO_TARGET = 2.0  # largest backlog / empty, run --once wall time
MEASURED = 500  # tasks timed through the daemon
DEPTHS = (500, 100_000)
QUICK_DEPTHS = (500, 10_000)
DEPTH_RATIO_TARGET = 0.8  # throughput deepest / shallowest
LEASES = 5_000  # live leases of the lease-scan case
LEASES_TARGET = 0.1  # s, in-pass

signalled: list[int] = []


# --- 1. pass cost with every slot busy -------------------------------------------------


def busy_store(base: Path, idle: int, limit: int, stack: ExitStack) -> dict[str, str]:
    """A base with ``limit`` working tasks per agent under live leases and ``idle`` queued
    ones; returns the environment for its passes."""
    from scheduler.sources.local import LocalStore

    write_agents(base, AGENTS)
    (base / "state" / "running").mkdir(parents=True, mode=0o700)
    (base / "state").chmod(0o700)
    db = base / "state" / "tasks.db"
    names = list(AGENTS)
    with LocalStore(db) as store:
        added = store.import_tasks([{"title": f"busy {i}", "queue": "dev"}
                                    for i in range(len(names) * limit)])
        working = []
        for i, task in enumerate(added):
            agent, token = names[i % len(names)], f"tok{task.id}"
            store.claim(task.id, agent, token)
            working.append((task.id, agent, token))
    seed_queue(db, idle)
    make_leases(base, working, stack, HOST, durable=False)
    return clean_env(HOSTNAME=HOST, TASK_SOURCE="local", AGENT_COMMAND="true",
                     HEARTBEAT_SEC=15, RETRY_BACKOFF_SEC=0, LOG_LEVEL="WARNING",
                     AGENT_LIMITS=json.dumps({name: limit for name in AGENTS}))


def one_pass(base: Path, env: dict) -> tuple[float, float]:
    """(wall seconds, in-pass seconds) of one ``run --once`` that must spawn nothing."""
    argv = [str(CONSOLE_SCRIPT), "--base-path", str(base), "run", "--once"]
    seconds, proc = timed(argv, env, base)
    if proc.returncode != 0:
        raise RuntimeError(f"run --once exited {proc.returncode}:\n{proc.stderr}")
    summary = json.loads((base / "state" / "last-pass.json").read_text())
    if summary["spawned"] or sum(summary["reclaimed"].values()):
        raise RuntimeError(f"expected no spawn and no reclaim with every slot busy: {summary}")
    return seconds, float(summary["duration_sec"])


def daemon_passes(base: Path, env: dict, passes: int) -> list[float]:
    """In-pass times of ``passes`` woken passes of ``run --daemon`` on ``base`` (after two
    warm-up passes): each pass is asked for through the wake-up socket, its time read
    from the replaced last-pass.json."""
    from scheduler.state.wake import nudge

    last = base / "state" / "last-pass.json"
    log = open(base / "daemon.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([str(CONSOLE_SCRIPT), "--base-path", str(base), "run", "--daemon"],
                            env={**env, "TINYSCHEDULER_LOOP_INTERVAL_SEC": "600"}, cwd=base,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()
    times = []
    try:
        def stamp() -> tuple[int, int]:
            info = last.stat()
            return info.st_ino, info.st_mtime_ns

        seen = stamp()  # the --once runs left one
        if not wait_until(lambda: stamp() != seen, 30):
            raise RuntimeError("the daemon did not run its first pass")
        for attempt in range(passes + 2):
            seen = stamp()
            nudge(base / "state" / "wake.sock")
            if not wait_until(lambda seen=seen: stamp() != seen, 30, 0.002):
                raise RuntimeError("the daemon did not run a woken pass")
            summary = json.loads(last.read_text())
            if summary["spawned"] or sum(summary["reclaimed"].values()):
                raise RuntimeError(f"expected no spawn and no reclaim: {summary}")
            if attempt >= 2:
                times.append(float(summary["duration_sec"]))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return times


def pass_cost(sizes: tuple[int, ...], runs: int
              ) -> tuple[dict[int | str, tuple[list, list]], list[float]]:
    """(wall times, in-pass times) per size of the backlog, and for the LEASES case (key
    "leases"), all cases alternating run by run; then the in-pass times of a daemon's
    woken passes over the LEASES case."""
    cases: dict[int | str, tuple[int, int]] = {size: (size, LIMIT) for size in sizes}
    cases["leases"] = (0, LEASES // len(AGENTS))
    times: dict[int | str, tuple[list, list]] = {case: ([], []) for case in cases}
    with ExitStack() as stack:
        bases = {}
        for case, (idle, limit) in cases.items():
            started = time.perf_counter()
            base = Path(tempfile.mkdtemp(prefix="bench-backlog-"))
            stack.callback(shutil.rmtree, base, ignore_errors=True)
            bases[case] = (base, busy_store(base, idle, limit, stack))
            one_pass(*bases[case])  # warm-up: page cache, bytecode
            print(f"  (seeded {idle:,} idle tasks, {limit * len(AGENTS):,} live leases, "
                  f"warmed up: {time.perf_counter() - started:.1f} s)", file=sys.stderr,
                  flush=True)
        for _ in range(runs):
            for case in cases:
                wall, in_pass = one_pass(*bases[case])
                times[case][0].append(wall)
                times[case][1].append(in_pass)
        in_daemon = daemon_passes(*bases["leases"], runs)
    return times, in_daemon


def report_pass_cost(times: dict[int | str, tuple[list, list]], in_daemon: list[float],
                     runs: int) -> None:
    lease_walls, lease_ins = times.pop("leases")
    empty_wall, empty_in = (median(values) for values in times[0])
    rows = []
    for size, (walls, ins) in times.items():
        wall, in_pass = median(walls), median(ins)
        rows.append((f"{size:,}", f"{wall * 1000:.0f}", f"{wall / empty_wall:.2f}x",
                     f"{in_pass * 1000:.1f}", f"{in_pass / max(empty_in, 1e-6):.2f}x"))
    print(f"run --once with every slot busy (2 agents x limit {LIMIT}, 8 live leases), "
          f"median of {runs} runs")
    print(table(("idle tasks", "wall ms", "vs empty", "in-pass ms", "vs empty"), rows))
    largest = max(size for size in times if isinstance(size, int))
    wall_ratio = median(times[largest][0]) / empty_wall
    in_ratio = median(times[largest][1]) / max(empty_in, 1e-6)
    verdict = result(f"run --once, all slots busy, {largest:,} idle / empty (wall)",
                     wall_ratio, "x", f"<= {PASS_RATIO_TARGET:g}")
    print(f"target: {largest:,} idle <= {PASS_RATIO_TARGET:g}x the empty pass (wall time): "
          f"{wall_ratio:.2f}x {verdict}")
    result("run --once, all slots busy, empty (wall)", empty_wall * 1000, "ms")
    result(f"run --once, all slots busy, {largest:,} idle (wall)",
           median(times[largest][0]) * 1000, "ms")
    result(f"in-pass, all slots busy, {largest:,} idle / empty", in_ratio, "x",
           note=f"{median(times[largest][1]) * 1000:.1f} ms vs {empty_in * 1000:.1f} ms")
    in_pass, warm = median(lease_ins), median(in_daemon)
    verdict = result(f"in-pass, {LEASES:,} live leases, daemon", warm * 1000, "ms",
                     f"<= {LEASES_TARGET * 1000:g}")
    result(f"in-pass, {LEASES:,} live leases, run --once", in_pass * 1000, "ms",
           note=f"wall {median(lease_walls) * 1000:.0f} ms")
    print(f"{LEASES:,} live leases, no idle task, in-pass: {warm * 1000:.1f} ms in a daemon "
          f"(woken passes), {in_pass * 1000:.1f} ms in run --once (wall "
          f"{median(lease_walls) * 1000:.0f} ms); target <= {LEASES_TARGET * 1000:g} ms "
          f"(daemon): {verdict}")


# --- 2. throughput against queue depth -------------------------------------------------


def daemon_rate(queued: int, slots: int = 8) -> float:
    """Tasks per second of the first MEASURED tasks to run with ``queued`` waiting."""
    base = Path(tempfile.mkdtemp(prefix=f"bench-depth-{queued}-"))
    try:
        with Daemon(base, seed=queued, AGENT_COMMAND="true",
                    AGENT_LIMITS=f"w={slots}") as daemon:
            if not wait_until(lambda: daemon.complete_count() >= MEASURED, 600, 0.1):
                raise RuntimeError(f"only {daemon.complete_count()} of {MEASURED} completed")
            first = daemon.query("SELECT min(at) FROM history WHERE to_status = 'working'")
            last = daemon.query("SELECT at FROM history WHERE to_status = 'complete' "
                                "ORDER BY id LIMIT 1 OFFSET ?", (MEASURED - 1,))
        return MEASURED / (epoch(last[0][0]) - epoch(first[0][0]))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def depth_throughput(depths: tuple[int, ...], rounds: int) -> dict[int, list[float]]:
    rates: dict[int, list[float]] = {depth: [] for depth in depths}
    for round_ in range(rounds):
        for depth in depths:
            rates[depth].append(daemon_rate(depth))
        print("  (round {}: {})".format(round_ + 1, ", ".join(
            f"{depth:,} queued {rates[depth][-1]:.1f}/s" for depth in depths)),
            file=sys.stderr, flush=True)
    return rates


def report_depth(rates: dict[int, list[float]], rounds: int) -> None:
    shallow, deep = min(rates), max(rates)
    print(f"\nrun --daemon, first {MEASURED} tasks (true, 8 slots), first claim to "
          f"{MEASURED}th completion, median of {rounds} alternating rounds")
    print(table(("queued", "tasks/s", "min", "max"),
                [(f"{depth:,}", f"{median(values):.1f}", f"{min(values):.1f}",
                  f"{max(values):.1f}") for depth, values in rates.items()]))
    ratio = median(rates[deep]) / median(rates[shallow])
    verdict = result(f"tasks/s with {deep:,} queued / {shallow:,} queued", ratio, "x",
                     f">= {DEPTH_RATIO_TARGET:g}")
    print(f"target: throughput with {deep:,} queued >= {DEPTH_RATIO_TARGET:g}x with "
          f"{shallow:,} queued: {ratio:.2f}x {verdict}")
    for depth in (shallow, deep):
        result(f"tasks/s, first {MEASURED} with {depth:,} queued", median(rates[depth]), "/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="passes per size (default 7)")
    parser.add_argument("--daemon-runs", type=int, default=3,
                        help="alternating daemon rounds per depth (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="largest size 10,000, 3 runs, 1 daemon round (a smoke run)")
    args = parser.parse_args()
    if args.runs < 1 or args.daemon_runs < 1:
        parser.error("--runs and --daemon-runs must be at least 1")
    signal.signal(signal.SIGTERM, lambda signum, _f: signalled.append(signum))
    sizes, depths = (QUICK_SIZES, QUICK_DEPTHS) if args.quick else (SIZES, DEPTHS)
    if args.quick:
        args.runs, args.daemon_runs = min(args.runs, 3), 1

    report_pass_cost(*pass_cost(sizes, args.runs), args.runs)
    report_depth(depth_throughput(depths, args.daemon_runs), args.daemon_runs)
    return signals_verdict(signalled)


if __name__ == "__main__":
    sys.exit(main())
