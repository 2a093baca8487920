"""Shared helpers for the benches: a clean environment, the CLI, live leases, a daemon
on a local store, and the ``RESULT`` lines bench/summary.py collects."""

from __future__ import annotations

import json
import operator
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

VENV_BIN = Path(sys.executable).parent
CONSOLE_SCRIPT = VENV_BIN / "tinyscheduler"


def clean_env(**settings: object) -> dict[str, str]:
    """The caller's environment without TINYSCHEDULER_*/NOTIFY_SOCKET, plus ``settings``
    (names without the prefix). PYTHONDONTWRITEBYTECODE is dropped too: users have
    bytecode caching, and without it every process start recompiles the project."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TINYSCHEDULER_")
           and k not in ("NOTIFY_SOCKET", "PYTHONDONTWRITEBYTECODE")}
    env.update({f"TINYSCHEDULER_{k}": str(v) for k, v in settings.items()})
    return env


def write_agents(base: Path, agents: dict[str, str]) -> None:
    (base / "agent-control.json").write_text(json.dumps(
        [{"agentName": name, "agentType": queue} for name, queue in agents.items()]))


def cli(base: Path, env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(CONSOLE_SCRIPT), "--base-path", str(base), *args], env=env,
                          cwd=base, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise RuntimeError(f"tinyscheduler {' '.join(args)} exited {proc.returncode}:\n"
                           f"{proc.stderr}")
    return proc


def timed(argv: list[str], env: dict, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    return time.perf_counter() - start, proc


def median(values: list[float]) -> float:
    return statistics.median(values)


def p95(values: list[float]) -> float:
    """The 95th percentile (linear interpolation between the closest ranks)."""
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def wait_until(condition, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def table(header: tuple[str, ...], rows: list[tuple]) -> str:
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --- live leases (held by this process) ------------------------------------------------


def own_start_time() -> float:
    import psutil

    return psutil.Process(os.getpid()).create_time()


def make_leases(base: Path, working, stack: ExitStack, host: str, *,
                durable: bool = True) -> None:
    """A running lease of ``host`` for each (task id, agent, token) of ``working``, owned
    by this process, which holds its liveness lock until ``stack`` closes: passes see
    them as live and leave them alone. ``durable=False`` skips the fsyncs while writing
    them (in this process only: two per lease, seconds for thousands on a busy disk)."""
    from scheduler import clock
    from scheduler.state.leases import RUNNING, Lease, LeaseStore

    store = LeaseStore(base / "state" / "running")
    now = clock.now()
    started = own_start_time()
    with ExitStack() as seeding:
        if not durable:
            seeding.enter_context(mock.patch("os.fsync"))
        for task_id, agent, token in working:
            store.create(Lease(task_id=task_id, agent=agent, state=RUNNING,
                               spawn_token=token, started_at=now, heartbeat=now, host=host,
                               queue="dev", pid=os.getpid(), pid_started_at=started,
                               heartbeat_sec=3600))
            lock = store.liveness_lock(task_id)
            if not lock.acquire(0):
                raise RuntimeError(f"could not hold the liveness lock of task {task_id}")
            stack.callback(lock.release)


def seed_queue(db: Path, count: int, batch: int = 10_000) -> None:
    """``count`` idle tasks in queue ``dev`` of the local store ``db``, imported in
    batches through the store API."""
    from scheduler.sources.local import LocalStore

    with LocalStore(db) as store:
        for start in range(0, count, batch):
            store.import_tasks([{"title": f"t{i}", "queue": "dev"}
                                for i in range(start, min(start + batch, count))])


# --- a daemon on a local store ---------------------------------------------------------


class Daemon:
    """``tinyscheduler run --daemon`` on a local store in ``base``, one agent ``w`` of
    queue ``dev``, only wake-ups driving it (LOOP_INTERVAL_SEC=60). With ``seed`` the
    store is filled with that many idle tasks before the daemon starts."""

    def __init__(self, base: Path, *, seed: int = 0, **settings: object) -> None:
        self.base = base
        self.seed = seed
        write_agents(base, {"w": "dev"})
        self.env = clean_env(LOOP_INTERVAL_SEC=60, RETRY_BACKOFF_SEC=0, HEARTBEAT_SEC=15,
                             TASK_SOURCE="local", LOG_LEVEL="WARNING", **settings)
        self.db = base / "state" / "tasks.db"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Daemon:
        if self.seed:
            (self.base / "state").mkdir(mode=0o700, exist_ok=True)
            seed_queue(self.db, self.seed)
        else:
            cli(self.base, self.env, "task", "list")  # creates the store
        log = open(self.base / "daemon.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [str(CONSOLE_SCRIPT), "--base-path", str(self.base), "run", "--daemon"],
            env=self.env, cwd=self.base, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        last = self.base / "state" / "last-pass.json"
        if not wait_until(last.exists, 60):
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
    from scheduler import clock

    return clock.from_iso(iso).timestamp()


# --- results for bench/summary.py ------------------------------------------------------

RESULT_PREFIX = "RESULT "
COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def check(value: float, target: str | None) -> bool | None:
    """Whether ``value`` meets ``target`` (">= 150", "<= 15", "< 120"); None without one."""
    if not target:
        return None
    op, bound = target.split()
    return COMPARE[op](value, float(bound))


def result(name: str, value: float, unit: str, target: str | None = None, *,
           tsp: float | None = None, tsp_target: str | None = None,
           note: str = "") -> str:
    """Print one machine-readable result line (``RESULT {json}``) and return its verdict:
    "ok", "MISSED" or "-" (no target). ``tsp`` is the ratio of this figure to
    task-spooler's, when task-spooler was measured."""
    verdicts = [check(value, target), check(tsp, tsp_target) if tsp is not None else None]
    known = [v for v in verdicts if v is not None]
    verdict = "-" if not known else ("ok" if all(known) else "MISSED")
    fields = {"name": name, "value": round(value, 4), "unit": unit, "target": target,
              "tsp": None if tsp is None else round(tsp, 4), "tsp_target": tsp_target,
              "verdict": verdict, "note": note}
    print(RESULT_PREFIX + json.dumps({k: v for k, v in fields.items() if v not in (None, "")}),
          flush=True)
    return verdict


def signals_verdict(signalled: list[int]) -> int:
    """The bench's exit status: 1 (with a warning) when a pass signalled this process."""
    if signalled:
        print(f"WARNING: this bench process was sent signal(s) {signalled} by a pass")
        return 1
    return 0
