"""Workspaces through whole passes (``tinyscheduler run --once``): crash safety of
workspace creation, low disk, ``workspace list|prune``, validate-config, the sandbox."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
from pathlib import Path

import pytest
from test_reconciler import Scheduler, alive, wait_for
from test_reconciler import make_scheduler as make_scheduler  # noqa: F401 - the fixture
from test_workspace import FAKE_AGENT, PY, git, make_repo, tree_snapshot

from scheduler import faults

pytestmark = pytest.mark.processes


def fake(*steps: str) -> str:
    return shlex.join([PY, str(FAKE_AGENT), *steps])


def worktree_scheduler(make_scheduler, tmp_path: Path, **settings: object) -> Scheduler:
    repo = make_repo(tmp_path / "repo")
    values = {"WORKSPACE_MODE": "worktree", "REPO_DIR": str(repo), "MIN_FREE_DISK_MB": 0,
              "SPAWN_TIMEOUT_SEC": 1, "MERGE": "off", **settings}
    s = make_scheduler({"vaela": "dev"}, {"vaela": 2}, **values)
    s.repo = repo  # type: ignore[attr-defined]
    return s


def workspaces(s: Scheduler) -> Path:
    return s.state / "workspaces"


@pytest.mark.parametrize("point", faults.WORKSPACE_POINTS)
def test_a_wrapper_killed_while_making_a_worktree_leaves_a_repairable_one(
        make_scheduler, tmp_path: Path, point: str) -> None:
    s = worktree_scheduler(make_scheduler, tmp_path, AGENT_COMMAND=fake(
        "expect", "README", "expect", "src/app.txt", "write", "done.txt", "{task_id}"))
    repo = s.repo  # type: ignore[attr-defined]
    before = tree_snapshot(repo)
    task = s.add("make a file", "--queue", "dev")
    env = s.environ()
    env[faults.CRASH_AT_VARIABLE] = point  # the forked wrapper SIGKILLs itself at the point
    assert s.cli("run", "--once", env=env).returncode == 0
    wait_for(lambda: s.leases() and s.leases()[task].pid is not None
             and not alive(s.leases()[task].pid), what="the wrapper to die")

    s.pass_until(s.all_done, timeout=60)
    wait_for(lambda: not s.leases(), what="the wrapper to finish (it tidies, then unleases)")

    branch = f"tinyscheduler/task-{task}"
    assert git(repo, "show", f"{branch}:done.txt") == task
    # A clean workspace: the target's files plus the agent's, nothing half-made.
    files = git(repo, "ls-tree", "-r", "--name-only", branch).splitlines()
    assert sorted(files) == ["README", "done.txt", "src/app.txt"]
    assert len(git(repo, "worktree", "list").splitlines()) == 1  # the completed one removed
    assert [p.name for p in workspaces(s).iterdir() if not p.name.startswith(".")] == []
    assert tree_snapshot(repo) == before and git(repo, "status", "--porcelain") == ""
    assert s.tasks()[task].attempts == 1  # the crashed attempt was reclaimed and counted


def test_a_wrapper_killed_while_making_a_directory_leaves_none(make_scheduler,
                                                               tmp_path: Path) -> None:
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1}, WORKSPACE_MODE="directory",
                       MIN_FREE_DISK_MB=0, AGENT_COMMAND=fake("write", "done.txt", "x"))
    task = s.add("make a file", "--queue", "dev")
    env = s.environ()
    env[faults.CRASH_AT_VARIABLE] = "workspace-mid-add"
    assert s.cli("run", "--once", env=env).returncode == 0
    wait_for(lambda: s.leases() and s.leases()[task].pid
             and not alive(s.leases()[task].pid), what="the wrapper to die")
    s.pass_until(s.all_done, timeout=60)
    wait_for(lambda: not s.leases(), what="the wrapper to finish")
    names = sorted(p.name for p in workspaces(s).iterdir())
    assert names == [f"task-{task}"]  # no half-built temporary directory is left
    assert (workspaces(s) / f"task-{task}" / "done.txt").read_text() == "x"


def test_low_disk_skips_tasks_without_failing_them(make_scheduler, tmp_path: Path) -> None:
    s = worktree_scheduler(make_scheduler, tmp_path, MIN_FREE_DISK_MB=10**9)
    task = s.add("needs space", "--queue", "dev")
    plan = json.loads(s.run_once("--dry-run", "--json").stdout)["plan"]
    skips = {p["task"]: p for p in plan["skips"]}
    assert skips[task]["kind"] == "low-disk"
    assert "below MIN_FREE_DISK_MB=1000000000" in skips[task]["reason"]
    summary = json.loads(s.run_once("--json").stdout)["summary"]
    assert summary["errors"] == [] and summary["spawned"] == 0
    assert summary["skipped"] == {"low-disk": 1} and "MB free at" in summary["low_disk"]
    assert s.tasks()[task].status == "idle" and s.tasks()[task].attempts == 0
    status = s.cli("status")
    assert "LOW DISK" in status.stdout and "low disk" in status.stdout


def test_prune_never_touches_a_live_lease_and_removes_the_rest(make_scheduler,
                                                               tmp_path: Path) -> None:
    release = tmp_path / "release-now"
    s = worktree_scheduler(make_scheduler, tmp_path, MAX_ATTEMPTS=1, AGENT_COMMAND=fake(
        "write", "work-{task_id}.txt", "x", "wait", str(release), "exit", "3"))
    repo = s.repo  # type: ignore[attr-defined]
    failed, idle_one = (s.add(f"task {n}", "--queue", "dev") for n in (1, 2))
    s.run_once()
    release.touch()
    s.pass_until(lambda: s.tasks()[failed].status == "failed"
                 and s.tasks()[idle_one].status == "failed", timeout=30)
    # A third task holds a live lease while prune runs.
    release.unlink()
    live = s.add("task 3", "--queue", "dev")
    s.run_once()
    wait_for(lambda: (workspaces(s) / f"task-{live}" / f"work-{live}.txt").exists(),
             what="the live task's agent to start")

    listing = json.loads(s.cli("workspace", "list", "--json").stdout)
    assert {e["task_id"]: e["leased"] for e in listing} == {failed: False, idle_one: False,
                                                            live: True}
    out = s.cli("workspace", "prune")
    assert out.returncode == 0, out.stderr
    assert f"task {live}: skipped its lease is live" in out.stdout
    for task in (failed, idle_one):
        assert not (workspaces(s) / f"task-{task}").exists()
        assert "has commits not on main (use --force)" in out.stdout
        assert git(repo, "branch", "--list", f"tinyscheduler/task-{task}")  # unmerged: kept
    out = s.cli("workspace", "prune", "--force")
    assert out.returncode == 0, out.stderr
    for task in (failed, idle_one):
        assert not git(repo, "branch", "--list", f"tinyscheduler/task-{task}")
    assert (workspaces(s) / f"task-{live}" / f"work-{live}.txt").exists()
    assert git(repo, "branch", "--list", f"tinyscheduler/task-{live}")
    listing = json.loads(s.cli("workspace", "list", "--json").stdout)
    assert [e["task_id"] for e in listing] == [live]
    shown = s.cli("task", "show", live).stdout
    assert f"workspace   {workspaces(s) / f'task-{live}'} (kept, branch" in shown
    release.touch()
    s.pass_until(lambda: s.tasks()[live].status == "failed", timeout=30)


def test_validate_config_checks_the_repository_and_bwrap(make_scheduler,
                                                         tmp_path: Path) -> None:
    s = worktree_scheduler(make_scheduler, tmp_path, SANDBOX="bwrap")
    good = s.cli("validate-config")
    assert "OK       workspace mode worktree" in good.stdout, good.stdout
    assert "can create its namespaces" in good.stdout
    empty = tmp_path / "bin-without-bwrap"
    empty.mkdir()
    (empty / "git").symlink_to(shutil.which("git"))
    missing = s.cli("validate-config", env={**s.environ(), "PATH": str(empty)})
    assert missing.returncode == 2
    assert "bwrap is not on PATH; install bubblewrap (Debian/Ubuntu: apt-get install " \
           "bubblewrap" in missing.stdout


def test_worktree_mode_needs_a_repository_and_a_branch(make_scheduler, tmp_path: Path) -> None:
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1}, WORKSPACE_MODE="worktree")
    proc = s.cli("config", "--show")
    assert proc.returncode == 2 and "needs TINYSCHEDULER_REPO_DIR" in proc.stderr
    repo = make_repo(tmp_path / "repo")
    git(repo, "checkout", "-q", "--detach")
    proc = s.cli("config", "--show", REPO_DIR=str(repo))
    assert proc.returncode == 2
    assert "TINYSCHEDULER_TARGET_BRANCH is not set" in proc.stderr
    assert "no branch checked out (HEAD is detached)" in proc.stderr
    git(repo, "checkout", "-q", "main")
    proc = s.cli("config", "--show", REPO_DIR=str(repo))
    assert "TARGET_BRANCH" in proc.stdout and " main " in proc.stdout
    inside = s.cli("config", "--show", REPO_DIR=str(repo), WORKSPACES_DIR=str(repo / "ws"))
    assert inside.returncode == 2 and "is inside TINYSCHEDULER_REPO_DIR" in inside.stderr


# --- the sandbox ----------------------------------------------------------------------------

PROBE = r'''
import json, os, sys
report = {}
for name, path in [("workspace", "in-workspace.txt"), *[(n, os.path.join(p, "escape.txt"))
                   for n, p in zip(("repo", "base", "home"), sys.argv[1:4])]]:
    try:
        with open(path, "w") as handle:
            handle.write("x")
        report[name] = "written"
    except OSError as exc:
        report[name] = type(exc).__name__
lock = sys.argv[4]
report["lock_fd"] = any(os.readlink(f"/proc/self/fd/{fd}") == lock
                        for fd in os.listdir("/proc/self/fd") if fd.isdigit() and
                        os.path.exists(f"/proc/self/fd/{fd}"))
report["host_tmp_visible"] = os.path.exists(sys.argv[5])
with open(sys.argv[5] + ".inside", "w") as handle:
    handle.write("private")
report["task_file"] = os.path.exists(os.environ["TINYSCHEDULER_TASK_FILE"])
import subprocess
done = subprocess.run(["git", "add", "-A"], capture_output=True, text=True)
done = subprocess.run(["git", "-c", "user.name=a", "-c", "user.email=a@a", "commit", "-qm",
                       "by the agent"], capture_output=True, text=True)
report["git_commit"] = done.returncode
report["git_error"] = done.stderr[-300:]
with open("report.json", "w") as handle:
    json.dump(report, handle)
'''


def test_bwrap_lets_the_agent_write_only_its_workspace(make_scheduler, tmp_path: Path) -> None:
    home = Path.home()
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    s = worktree_scheduler(make_scheduler, tmp_path, SANDBOX="bwrap", AUTO_COMMIT=0)
    repo = s.repo  # type: ignore[attr-defined]
    task = s.add("sandboxed", "--queue", "dev")
    lock = s.running / f"task_{task}.lock"
    marker = Path("/tmp") / f"tinyscheduler-test-{os.getpid()}-{task}"
    marker.write_text("host")
    s.settings["AGENT_COMMAND"] = shlex.join(
        [PY, "-c", PROBE, str(repo), str(s.base), str(home), str(lock), str(marker)])
    s.pass_until(s.all_done, timeout=30)
    wait_for(lambda: not s.leases(), what="the wrapper to finish")
    branch = f"tinyscheduler/task-{task}"
    assert git(repo, "log", "-1", "--format=%s", branch) == "by the agent"
    # AUTO_COMMIT=0: the report, written after the agent's own commit, stays uncommitted,
    # so the completed task's worktree is kept rather than removed.
    report = json.loads((workspaces(s) / f"task-{task}" / "report.json").read_text())
    assert report["workspace"] == "written"
    for outside in ("repo", "base", "home"):
        assert report[outside] != "written", report
    assert not (repo / "escape.txt").exists() and not (s.base / "escape.txt").exists()
    assert not (home / "escape.txt").exists()
    assert report["lock_fd"] is True  # the liveness lock is still inherited
    assert report["host_tmp_visible"] is False  # a private /tmp...
    assert not Path(f"{marker}.inside").exists()  # ...that vanishes with the sandbox
    assert report["task_file"] is True
    assert report["git_commit"] == 0, report["git_error"]
    marker.unlink()


def test_a_killed_sandboxed_agent_is_seen_as_its_signal(make_scheduler, tmp_path: Path) -> None:
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1}, SANDBOX="bwrap", AGENT_CPU_MAX_SEC=1,
                       AGENT_COMMAND=f"{shlex.quote(PY)} -S -c 'while True: pass'")
    task = s.add("spin", "--queue", "dev", "--priority", "1")
    s.run_once()
    s.pass_until(lambda: s.tasks()[task].attempts == 1, timeout=30)
    assert "CPU limit 1 s" in s.tasks()[task].last_error
    assert signal.SIGXCPU == 24
