"""What the merge queue costs.

1. Merges per minute into one target with a trivial check (``true``): MERGES task
   branches (one commit each, its own file) of a repository of FILES files are landed by
   PROCS processes at once through ``scheduler.merge.landing.land`` — the wrapper's own
   step: the per-target lock, ``git merge-tree``, the check in a temporary worktree, the
   compare-and-swap.
2. The time from agent exit to ``merged`` with no check: RUNS tasks, one at a time,
   through ``tinyscheduler run --once`` in worktree mode (forked wrapper, local store); the
   agent writes a file and its exit time, the task's ``complete`` history row says when
   the result (after the merge) was recorded. Measured with MERGE=merge and MERGE=off
   (auto-commit and reporting only); the difference is what the merge adds.

    .venv/bin/python bench/merge.py [--merges N] [--procs N] [--runs N]

Exit code 1 when a goal is missed (>= 60 merges/min; < 0.3 s median added per task).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import clean_env, cli, median, write_agents  # noqa: E402

from scheduler import clock  # noqa: E402
from scheduler.config.settings import load_settings  # noqa: E402
from scheduler.merge import landing  # noqa: E402
from scheduler.sources.local import LocalStore  # noqa: E402
from scheduler.workspace.base import Context, Workspace  # noqa: E402

MERGES, PROCS, RUNS, FILES = 60, 4, 15, 200
GOAL_PER_MIN, GOAL_ADDED_SEC = 60.0, 0.3


def git(repo: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b",
               GIT_COMMITTER_EMAIL="b@b")
    return subprocess.run(["git", "-C", str(repo), *args], env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def make_repo(path: Path, files: int) -> None:
    path.mkdir()
    for n in range(files):
        (path / f"mod{n:04d}.py").write_text(f"VALUE = {n}\n")
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "files")
    git(path, "branch", "integration")


def make_branches(repo: Path, count: int) -> str:
    """``count`` branches from integration, each adding its own file; the base commit."""
    base = git(repo, "rev-parse", "integration")
    tree = git(repo, "rev-parse", "integration^{tree}")
    for n in range(count):
        blob = subprocess.run(["git", "-C", str(repo), "hash-object", "-w", "--stdin"],
                              input=f"task {n}\n", capture_output=True, text=True,
                              check=True).stdout.strip()
        listing = git(repo, "ls-tree", tree) + f"\n100644 blob {blob}\ttask-{n}.txt\n"
        new_tree = subprocess.run(["git", "-C", str(repo), "mktree"], input=listing,
                                  capture_output=True, text=True, check=True).stdout.strip()
        commit = git(repo, "commit-tree", new_tree, "-p", base, "-m", f"task {n}")
        git(repo, "update-ref", f"refs/heads/tinyscheduler/task-{n}", commit)
    return base


def land_some(args: tuple[Path, list[int], str]) -> int:
    base_dir, numbers, base = args
    settings = load_settings(environ=clean_env(
        BASE_PATH=base_dir, WORKSPACE_MODE="worktree", REPO_DIR=base_dir / "repo",
        TARGET_BRANCH="integration", MERGE_CHECK_COMMAND="true"), cwd=base_dir)
    merged = 0
    for n in numbers:
        ctx = Context(settings, str(n), 1, title=f"task {n}")
        workspace = Workspace(str(n), "worktree", base_dir / "unused", f"tinyscheduler/task-{n}",
                              base)
        landed = landing.land(ctx, workspace, lambda _files: None)
        if landed.outcome != "merged":
            raise SystemExit(f"task {n}: {landed}")
        merged += 1
    return merged


def merges_per_minute(merges: int, procs: int) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        base_dir = Path(tmp)
        make_repo(base_dir / "repo", FILES)
        base = make_branches(base_dir / "repo", merges)
        shares = [(base_dir, list(range(i, merges, procs)), base) for i in range(procs)]
        started = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(procs) as pool:
            done = sum(pool.map(land_some, shares))
        spent = time.perf_counter() - started
        count = git(base_dir / "repo", "rev-list", "--count", "--merges", "integration")
        assert done == merges == int(count), (done, merges, count)
        return merges / spent * 60


AGENT = ("import pathlib, sys, time\n"
         "pathlib.Path(f'file-{sys.argv[1]}.txt').write_text('x\\n')\n"
         "with open(sys.argv[2], 'a') as out: out.write(f'{sys.argv[1]} {time.time()!r}\\n')\n")


def exit_to_recorded(runs: int, merge: str) -> list[float]:
    """Seconds from each agent's exit to its task's ``complete`` history row."""
    with tempfile.TemporaryDirectory(prefix="bench-merge-e2e-") as tmp:
        base_dir = Path(tmp)
        make_repo(base_dir / "repo", FILES)
        write_agents(base_dir, {"bench": "dev"})
        exits = base_dir / "exits.txt"
        command = shlex.join([sys.executable, "-c", AGENT]) + " {task_id} " + str(exits)
        env = clean_env(WORKSPACE_MODE="worktree", REPO_DIR=base_dir / "repo",
                        TARGET_BRANCH="integration", MERGE=merge, MIN_FREE_DISK_MB=0,
                        AGENT_COMMAND=command, AGENT_LIMITS="bench=1", HEARTBEAT_SEC=5)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        store = LocalStore(base_dir / "state" / "tasks.db")
        spent = []
        for n in range(runs):
            cli(base_dir, env, "task", "add", f"task {n}", "--queue", "dev")
            task_id = str(n + 1)
            cli(base_dir, env, "run", "--once")
            deadline = time.monotonic() + 60
            while store.get(task_id).status != "complete":
                if time.monotonic() > deadline:
                    raise SystemExit(f"task {task_id} did not complete")
                time.sleep(0.01)
            done_at = [row for row in store.history(task_id)
                       if row["to_status"] == "complete"][0]["at"]
            exited = float(exits.read_text().splitlines()[-1].split()[1])
            spent.append(clock.from_iso(done_at).timestamp() - exited)
        store.close()
        return spent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--merges", type=int, default=MERGES)
    parser.add_argument("--procs", type=int, default=PROCS)
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args()
    rate = merges_per_minute(args.merges, args.procs)
    print(f"merges into one target, check `true`, {args.procs} processes: {rate:.0f}/min "
          f"(goal >= {GOAL_PER_MIN:.0f}/min)")
    with_merge = exit_to_recorded(args.runs, "merge")
    without = exit_to_recorded(args.runs, "off")
    added = median(with_merge) - median(without)
    print(f"agent exit -> result recorded, median of {args.runs}: MERGE=merge "
          f"{median(with_merge):.3f} s, MERGE=off {median(without):.3f} s; the merge adds "
          f"{added:.3f} s (goal < {GOAL_ADDED_SEC} s); with merge max "
          f"{max(with_merge):.3f} s")
    missed = rate < GOAL_PER_MIN or median(with_merge) >= GOAL_ADDED_SEC + median(without)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
