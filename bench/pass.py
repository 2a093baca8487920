"""Wall time of one ``tinyscheduler run --once`` as a fresh process.

For (live leases, idle tasks) = (0, 0), (100, 1,000), (1,000, 10,000), on the local store
and against the fake TinyTask server (tests/fake_tinytask.py, run inside this process).
The leases are live: this process holds their liveness locks for the whole bench, and
their tasks are working on their agents in the source, so nothing is reclaimed or
stopped. Every agent is at its limit, so the pass spawns nothing: it measures lease scan,
source queries and planning. A second variant raises the limits so each pass spawns 8
(AGENT_COMMAND=true) and waits for those to finish between runs.

    .venv/bin/python bench/pass.py [--runs 7] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import _common as common
from _common import CONSOLE_SCRIPT, clean_env, median, table, timed, wait_until, write_agents

AGENTS = {"ada": "dev", "bo": "dev", "cy": "dev", "di": "dev"}
CASES = ((0, 0), (100, 1_000), (1_000, 10_000))
GOALS = {("local", 0): 0.25, ("tinytask", 0): 0.5}
LARGEST_GOAL = 2.0
HOST = "benchhost"

signalled: list[int] = []


def seed_local(base: Path, leases: int, idle: int) -> list[tuple[str, str, str]]:
    """Tasks in the local store; returns (task id, agent, token) of the working ones."""
    from scheduler.sources.local import LocalStore

    names = list(AGENTS)
    with LocalStore(base / "state" / "tasks.db") as store:
        specs = [{"title": f"task {i}", "queue": "dev"} for i in range(leases + idle)]
        added = store.import_tasks(specs) if specs else []
        working = []
        for i, task in enumerate(added[:leases]):
            agent, token = names[i % len(names)], f"tok{task.id}"
            store.claim(task.id, agent, token)
            working.append((task.id, agent, token))
    return working


def seed_tinytask(fake, leases: int, idle: int) -> list[tuple[str, str, str]]:
    names = list(AGENTS)
    working = []
    for i in range(leases):
        agent, token = names[i % len(names)], f"tok{i}"
        task_id = fake.add_task(f"running {i}", queue="dev", assigned_to=agent,
                                status="working", tags=[f"tinyscheduler:lease={token}"])
        working.append((str(task_id), agent, token))
    for i in range(idle):
        fake.add_task(f"task {i}", queue="dev")
    return working


def make_leases(base: Path, working, stack: ExitStack) -> None:
    common.make_leases(base, working, stack, HOST)


def measure(base: Path, env: dict, runs: int, expect_spawned: int, leases: int) -> list[float]:
    argv = [str(CONSOLE_SCRIPT), "--base-path", str(base), "run", "--once"]
    running = base / "state" / "running"
    times = []
    for attempt in range(runs + 1):  # the first run warms the page cache: not counted
        seconds, proc = timed(argv, env, base)
        if proc.returncode != 0:
            raise RuntimeError(f"run --once exited {proc.returncode}:\n{proc.stderr}")
        summary = json.loads((base / "state" / "last-pass.json").read_text())
        if summary["spawned"] != expect_spawned or sum(summary["reclaimed"].values()):
            raise RuntimeError(f"expected {expect_spawned} spawns and no reclaim: {summary}")
        if attempt:
            times.append(seconds)
        if expect_spawned:  # let the spawned runs finish before the next measurement
            wait_until(lambda: sum(1 for p in running.glob("task_*.json")) == leases, 30)
    return times


def bench_case(kind: str, leases: int, idle: int, runs: int, fake_cls) -> list[tuple]:
    base = Path(tempfile.mkdtemp(prefix=f"bench-pass-{kind}-"))
    rows = []
    try:
        write_agents(base, AGENTS)
        per_agent = leases // len(AGENTS)
        settings = {"HOSTNAME": HOST, "AGENT_COMMAND": "true", "HEARTBEAT_SEC": 15,
                    "RETRY_BACKOFF_SEC": 0, "LOG_LEVEL": "WARNING"}
        with ExitStack() as stack:
            (base / "state" / "running").mkdir(parents=True, mode=0o700)
            if kind == "local":
                working = seed_local(base, leases, idle)
                settings["TASK_SOURCE"] = "local"
            else:
                fake = stack.enter_context(fake_cls())
                working = seed_tinytask(fake, leases, idle)
                settings.update(TASK_SOURCE="tinytask", MCP_ENDPOINT=fake.url)
            make_leases(base, working, stack)
            full = {name: per_agent for name in AGENTS}
            env = clean_env(**settings, AGENT_LIMITS=json.dumps(full))
            times = measure(base, env, runs, 0, leases)
            rows.append((kind, leases, idle, 0, times))
            if idle >= 8 * (runs + 1):
                more = {name: per_agent + 2 for name in AGENTS}
                env = clean_env(**settings, AGENT_LIMITS=json.dumps(more))
                times = measure(base, env, runs, 8, leases)
                rows.append((kind, leases, idle, 8, times))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return rows


def goal_for(kind: str, leases: int, spawns: int) -> float | None:
    if spawns:
        return None
    if leases == 0:
        return GOALS[(kind, 0)]
    if leases == max(c[0] for c in CASES):
        return LARGEST_GOAL
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="only the two smaller cases")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, _f: signalled.append(signum))
    from fake_tinytask import FakeTinyTask

    cases = CASES[:2] if args.quick else CASES
    rows = []
    for kind in ("local", "tinytask"):
        for leases, idle in cases:
            started = time.perf_counter()
            for kind_, n_leases, n_idle, spawns, times in bench_case(kind, leases, idle,
                                                                     args.runs, FakeTinyTask):
                goal = goal_for(kind_, n_leases, spawns)
                value = median(times)
                verdict = "-" if goal is None else ("ok" if value < goal else "MISSED")
                rows.append((kind_, n_leases, n_idle, spawns, f"{value:.3f}",
                             f"{min(times):.3f}", f"{max(times):.3f}",
                             f"< {goal}" if goal else "-", verdict))
            print(f"  ({kind}, {leases} leases, {idle} idle: {time.perf_counter() - started:.1f}"
                  " s incl. setup)", file=sys.stderr, flush=True)
    print(f"run --once wall time, median of {args.runs} fresh processes (seconds)")
    print(table(("source", "leases", "idle", "spawns", "median", "min", "max", "goal", ""),
                rows))
    print("\ngoals: empty local pass < 0.25 s, empty tinytask pass < 0.5 s, "
          "largest (1,000 leases, 10,000 idle) < 2 s")
    return common.signals_verdict(signalled)


if __name__ == "__main__":
    sys.exit(main())
