"""What one wrapper costs: start-up to adoption, memory while it waits, CPU while it heartbeats.

For the exec'd wrapper (``python -m wrapper.main``, a fresh interpreter, SPAWN_MODE=exec)
and the forked one (``scheduler.reconcile.launcher.ForkLauncher``, the default), on a
local task store in a temporary directory:

1. start to adoption: from starting the wrapper to its lease turning ``running``, median
   over RUNS attempts, next to ``python -c pass`` as a child (the interpreter floor);
2. steady RSS of a wrapper waiting on its agent (and USS, the memory only it uses: a forked
   wrapper shares its pages with the scheduler until either writes them);
3. CPU of a wrapper over a heartbeat-only run (HEARTBEAT_SEC=15, the agent sleeps), in
   percent of one core; 60 s, or 10 s with ``--quick``. Both wrappers run side by side.

    .venv/bin/python bench/wrapper.py [--runs N] [--quick]

Exit code 1 when a target is missed (adoption < 200 ms, RSS < 30 MB, CPU < 0.5 %).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This script is named like the package it measures: take its directory off the path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(
    os.path.abspath(__file__))]

import psutil  # noqa: E402

from scheduler import clock  # noqa: E402
from scheduler.config.settings import load_settings  # noqa: E402
from scheduler.reconcile.launcher import ForkLauncher  # noqa: E402
from scheduler.sources.local import LocalStore  # noqa: E402
from scheduler.state import taskfile  # noqa: E402
from scheduler.state.leases import RUNNING, STARTING, Lease, LeaseStore  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "_common", Path(__file__).resolve().with_name("_common.py"))
assert _spec is not None and _spec.loader is not None
common = importlib.util.module_from_spec(_spec)  # bench/_common.py, for its result lines
_spec.loader.exec_module(common)

RUNS = 20
AGENT = "bench"
TARGET_ADOPT_MS = 200.0
TARGET_RSS_MB = 30.0
TARGET_CPU_PCT = 0.5


class Bench:
    """A state directory, its stores, and attempts started either way."""

    def __init__(self, root: Path, **values: object) -> None:
        self.root = root
        self.values = {"BASE_PATH": str(root), "TASK_SOURCE": "local", "HOSTNAME": "bench",
                       "HEARTBEAT_SEC": "15", "KILL_GRACE_SEC": "5",
                       "AGENT_COMMAND": "sleep 300"}
        self.values.update({k: str(v) for k, v in values.items()})
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TINYSCHEDULER_")}
        self.env.update({f"TINYSCHEDULER_{k}": v for k, v in self.values.items()})
        self.settings = load_settings(environ=self.env, cwd=root)
        self.tasks = LocalStore(self.settings.tasks_db)
        self.leases = LeaseStore(self.settings.running_dir)
        self._children: dict[int, subprocess.Popen] = {}

    def prepare(self) -> tuple[str, str]:
        """Add, claim and lease a task, as the reconciler's spawn does; (task id, token)."""
        task = self.tasks.add_task("bench task", assignee=AGENT)
        token = secrets.token_hex(8)
        self.tasks.claim(task.id, AGENT, token)
        now = clock.now()
        self.leases.create(Lease(
            task_id=task.id, agent=AGENT, state=STARTING, spawn_token=token, started_at=now,
            heartbeat=now, host=self.settings.hostname, scheduler_pid=os.getpid(),
            heartbeat_sec=self.settings.heartbeat_sec))
        taskfile.write(self.settings.task_log_dir, task)
        # A forked wrapper must not inherit SQLite state for an open connection (see the
        # scheduler's fork notes): close ours before any fork, it reopens on demand.
        self.tasks.close()
        return task.id, token

    def lease_path(self, task_id: str) -> str:
        return str(self.settings.running_dir / f"task_{task_id}.json")

    def start(self, mode: str, task_id: str, token: str) -> int:
        if mode == "exec":
            child = subprocess.Popen(
                [sys.executable, "-m", "wrapper.main", "--lease", self.lease_path(task_id),
                 "--token", token], env=self.env, cwd=self.root, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            self._children[child.pid] = child
            return child.pid
        return ForkLauncher(self.settings).launch(task_id, token, self.lease_path(task_id))

    def wait_running(self, task_id: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            lease = self.leases.read(task_id)
            if lease is not None and lease.state == RUNNING and lease.agent_pid:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"task {task_id}: the wrapper did not adopt its lease")
            time.sleep(0.0005)

    def stop(self, pid: int, task_id: str) -> None:
        """Cancel the attempt (SIGTERM to the wrapper) and wait until it is gone."""
        os.kill(pid, signal.SIGTERM)
        child = self._children.pop(pid, None)
        if child is not None:
            child.wait(30)
        deadline = time.monotonic() + 30
        while self.leases.read(task_id) is not None or self.leases.is_held(task_id):
            if time.monotonic() > deadline:
                raise RuntimeError(f"task {task_id}: the wrapper did not finish")
            time.sleep(0.005)


def adoption_ms(bench: Bench, mode: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs + 1):  # the first is a warm-up
        task_id, token = bench.prepare()
        start = time.perf_counter()
        pid = bench.start(mode, task_id, token)
        bench.wait_running(task_id)
        times.append((time.perf_counter() - start) * 1000)
        bench.stop(pid, task_id)
    return times[1:]


def python_pass_ms(runs: int) -> list[float]:
    times = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append((time.perf_counter() - start) * 1000)
    return times[1:]


def memory_and_cpu(bench: Bench, seconds: float) -> dict[str, tuple[float, float, float]]:
    """mode -> (RSS MB, USS MB, CPU %) of wrappers waiting on a sleeping agent."""
    started = {}
    for mode in ("exec", "fork"):
        task_id, token = bench.prepare()
        pid = bench.start(mode, task_id, token)
        bench.wait_running(task_id)
        started[mode] = (task_id, pid, psutil.Process(pid))
    time.sleep(0.5)  # past start-up: the first log lines, the agent's exec
    before = {mode: proc.cpu_times() for mode, (_, _, proc) in started.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    results = {}
    for mode, (task_id, pid, proc) in started.items():
        after = proc.cpu_times()
        used = (after.user - before[mode].user) + (after.system - before[mode].system)
        info = proc.memory_full_info()
        results[mode] = (info.rss / 2**20, info.uss / 2**20, used / elapsed * 100)
        bench.stop(pid, task_id)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--quick", action="store_true", help="a 10 s CPU window, not 60 s")
    args = parser.parse_args(argv)
    seconds = 10.0 if args.quick else 60.0

    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-wrapper-") as tmp:
        bench = Bench(Path(tmp))
        floor = statistics.median(python_pass_ms(args.runs))
        print(f"start to adoption, median of {args.runs} (target < {TARGET_ADOPT_MS:.0f} ms)")
        print(f"  {'python -c pass (child)':<28} {floor:7.1f} ms")
        for mode in ("exec", "fork"):
            times = adoption_ms(bench, mode, args.runs)
            value = statistics.median(times)
            ok = value < TARGET_ADOPT_MS
            failed |= not ok
            print(f"  {mode + ' wrapper':<28} {value:7.1f} ms  (x{value / floor:.1f} the floor; "
                  f"min {min(times):.1f}, max {max(times):.1f})  {'ok' if ok else 'MISSED'}")
            common.result(f"{mode} wrapper, start to adoption", value, "ms",
                          f"< {TARGET_ADOPT_MS:g}")

        print(f"\nwaiting wrapper, heartbeat every 15 s, over {seconds:.0f} s "
              f"(targets: RSS < {TARGET_RSS_MB:.0f} MB, CPU < {TARGET_CPU_PCT} %)")
        for mode, (rss, uss, cpu) in memory_and_cpu(bench, seconds).items():
            ok = rss < TARGET_RSS_MB and cpu < TARGET_CPU_PCT
            failed |= not ok
            print(f"  {mode + ' wrapper':<16} RSS {rss:5.1f} MB  USS {uss:5.1f} MB  "
                  f"CPU {cpu:6.3f} %  {'ok' if ok else 'MISSED'}")
            common.result(f"{mode} wrapper, RSS while waiting", rss, "MB",
                          f"< {TARGET_RSS_MB:g}", note=f"USS {uss:.1f} MB")
            common.result(f"{mode} wrapper, CPU while waiting", cpu, "%",
                          f"< {TARGET_CPU_PCT:g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
