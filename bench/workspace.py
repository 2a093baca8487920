"""What a workspace costs: lease adoption to agent start, and the wrapper's memory.

For WORKSPACE_MODE none, directory and worktree (a git repository of 10,000 files), each
without and with SANDBOX=bwrap, on a local task store in a temporary directory, with the
wrapper forked the default way (``ForkLauncher``):

1. adoption to agent start: from the lease turning ``running`` (seen by polling it) to
   the agent's first act (``touch`` of a file, its mtime), median over RUNS new tasks;
   every task gets a new workspace (worktree: ``git worktree add`` + checkout of 10,000
   files), which is the cost of a first attempt;
2. RSS of a wrapper waiting on its agent, per mode.

    .venv/bin/python bench/workspace.py [--runs N] [--files N]

Exit code 1 when a target is missed (worktree < 1 s; RSS < 30 MB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/ holds a wrapper.py named like the package: take this directory off the path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(
    os.path.abspath(__file__))]

import psutil  # noqa: E402

from scheduler.config.settings import load_settings  # noqa: E402
from scheduler.reconcile.launcher import ForkLauncher  # noqa: E402
from scheduler.sources.local import LocalStore  # noqa: E402
from scheduler.state import taskfile  # noqa: E402
from scheduler.state.leases import RUNNING, STARTING, Lease, LeaseStore  # noqa: E402

RUNS = 10
FILES = 10_000
AGENT = "bench"
TARGET_WORKTREE_MS = 1000.0
STRETCH_WORKTREE_MS = 500.0
TARGET_RSS_MB = 30.0


def make_repo(path: Path, files: int) -> None:
    """A repository of ``files`` small files in 100 directories, one commit."""
    path.mkdir()
    for n in range(files):
        folder = path / f"pkg{n % 100:02d}"
        folder.mkdir(exist_ok=True)
        (folder / f"mod{n:05d}.py").write_text(f"VALUE = {n}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b",
               GIT_COMMITTER_EMAIL="b@b")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "files"]):
        subprocess.run(["git", "-C", str(path), *args], check=True, env=env)


class Bench:
    def __init__(self, root: Path, **values: object) -> None:
        self.root = root
        root.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TINYSCHEDULER_")}
        env.update({"TINYSCHEDULER_BASE_PATH": str(root), "TINYSCHEDULER_TASK_SOURCE": "local",
                    "TINYSCHEDULER_HOSTNAME": "bench", "TINYSCHEDULER_MIN_FREE_DISK_MB": "0"})
        env.update({f"TINYSCHEDULER_{k}": str(v) for k, v in values.items()})
        self.settings = load_settings(environ=env, cwd=root)
        self.tasks = LocalStore(self.settings.tasks_db)
        self.leases = LeaseStore(self.settings.running_dir)

    def attempt(self, command: str) -> tuple[str, int]:
        """Lease and start one task whose agent runs ``command``; (task id, wrapper pid)."""
        from dataclasses import replace

        from scheduler import clock

        task = self.tasks.add_task("bench task", assignee=AGENT)
        token = os.urandom(8).hex()
        self.tasks.claim(task.id, AGENT, token)
        now = clock.now()
        self.leases.create(Lease(
            task_id=task.id, agent=AGENT, state=STARTING, spawn_token=token, started_at=now,
            heartbeat=now, host="bench", scheduler_pid=os.getpid(), heartbeat_sec=15))
        taskfile.write(self.settings.task_log_dir, task)
        self.tasks.close()
        settings = replace(self.settings, agent_command=command.replace("{id}", task.id))
        pid = ForkLauncher(settings).launch(
            task.id, token, str(self.settings.running_dir / f"task_{task.id}.json"))
        return task.id, pid

    def adopted_at(self, task_id: str, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lease = self.leases.read(task_id)
            if lease is not None and lease.state == RUNNING:
                return time.time()
            time.sleep(0.0002)
        raise RuntimeError(f"task {task_id} was not adopted")

    def finished(self, task_id: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.leases.read(task_id) is not None or self.leases.is_held(task_id):
            if time.monotonic() > deadline:
                raise RuntimeError(f"task {task_id} did not finish")
            time.sleep(0.005)


def adoption_to_start_ms(bench: Bench, runs: int) -> list[float]:
    marks = bench.root / "marks"
    marks.mkdir(exist_ok=True)
    times = []
    for _ in range(runs + 1):  # the first is a warm-up
        task_id, _pid = bench.attempt(f"touch {marks}/started-{{id}}")
        adopted = bench.adopted_at(task_id)
        mark = marks / f"started-{task_id}"
        deadline = time.monotonic() + 60
        while not mark.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"task {task_id}: the agent did not start; see "
                                   f"{bench.settings.task_log_dir / task_id}")
            time.sleep(0.001)
        times.append((mark.stat().st_mtime - adopted) * 1000)
        bench.finished(task_id)
    return times[1:]


def bare_git_ms(repo: Path, scratch: Path, runs: int) -> list[float]:
    """The floor: plain ``git worktree add`` of the same repository, nothing else."""
    times = []
    for n in range(runs):
        target = scratch / f"bare-{n}"
        start = time.perf_counter()
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "-q", "--detach",
                        str(target), "main"], check=True)
        times.append((time.perf_counter() - start) * 1000)
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(target)],
                       check=True)
    return times


def wrapper_rss_mb(bench: Bench) -> float:
    task_id, pid = bench.attempt("sleep 300")
    bench.adopted_at(task_id)
    deadline = time.monotonic() + 30
    while not (bench.leases.read(task_id) or Lease).agent_pid:  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            raise RuntimeError("the agent did not start")
        time.sleep(0.01)
    time.sleep(0.5)
    rss = psutil.Process(pid).memory_info().rss / 2**20
    lease = bench.leases.read(task_id)
    os.kill(pid, 15)
    if lease is not None and lease.agent_pid:
        try:
            os.killpg(lease.agent_pid, 15)
        except ProcessLookupError:
            pass
    bench.finished(task_id)
    return rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--files", type=int, default=FILES)
    parser.add_argument("--modes", default="none,directory,worktree")
    parser.add_argument("--sandboxes", default="none,bwrap")
    args = parser.parse_args(argv)
    sandboxes = [s for s in args.sandboxes.split(",") if s != "bwrap" or shutil.which("bwrap")]
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-workspace-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        make_repo(root / "repo", args.files)
        print(f"repository of {args.files} files made in {time.perf_counter() - started:.1f} s")
        print(f"\nadoption -> agent start, median of {args.runs} new tasks "
              f"(worktree target < {TARGET_WORKTREE_MS:.0f} ms, stretch "
              f"< {STRETCH_WORKTREE_MS:.0f} ms)")
        floor = bare_git_ms(root / "repo", root, args.runs)
        print(f"  {'plain git worktree add (the floor)':<34} {statistics.median(floor):8.1f} ms"
              f"  (min {min(floor):.1f}, max {max(floor):.1f})")
        rss = {}
        for sandbox in sandboxes:
            for mode in args.modes.split(","):
                values = {"WORKSPACE_MODE": mode, "SANDBOX": sandbox,
                          "SANDBOX_WRITABLE": str(root / f"{mode}-{sandbox}" / "marks")}
                if mode == "worktree":
                    values["REPO_DIR"] = str(root / "repo")
                bench = Bench(root / f"{mode}-{sandbox}", **values)
                times = adoption_to_start_ms(bench, args.runs)
                value = statistics.median(times)
                verdict = ""
                if mode == "worktree":
                    ok = value < TARGET_WORKTREE_MS
                    failed |= not ok
                    verdict = "ok" if ok else "MISSED"
                    verdict += " (stretch met)" if value < STRETCH_WORKTREE_MS else ""
                print(f"  {mode + ', sandbox ' + sandbox:<34} {value:8.1f} ms  (min "
                      f"{min(times):.1f}, max {max(times):.1f})  {verdict}")
                if sandbox == "none":
                    rss[mode] = wrapper_rss_mb(bench)
        print(f"\nRSS of a wrapper waiting on its agent (target < {TARGET_RSS_MB:.0f} MB)")
        for mode, value in rss.items():
            ok = value < TARGET_RSS_MB
            failed |= not ok
            print(f"  {mode:<10} {value:5.1f} MB  {'ok' if ok else 'MISSED'}")
        print(f"\nload average while measuring: {os.getloadavg()[0]:.1f} "
              f"({os.cpu_count()} cores)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
