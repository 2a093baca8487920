"""Workspaces end to end: real git repositories, real wrapper and agent processes.

Each test makes a small repository in tmp_path; the wrapper (``python -m wrapper.main``)
prepares the task's workspace and runs ``tests/fake_agent.py`` in it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
from test_wrapper import FAKE_AGENT, PY, RUN_TIMEOUT, Rig, agent_command, wait_for
from test_wrapper import make_rig as make_rig  # noqa: F401 - the fixture

from scheduler.sources.base import COMPLETE, FAILED, IDLE
from scheduler.state import taskfile
from scheduler.workspace import record

pytestmark = pytest.mark.processes

BRANCH = "tinyscheduler/task-{}"


def git(repo: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env, timeout=30).stdout.strip()


def make_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    for name, text in (files or {"README": "hello\n", "src/app.txt": "app\n"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def tree_snapshot(repo: Path) -> dict[str, str]:
    """REPO_DIR's working tree (not .git): every file and its content."""
    return {str(p.relative_to(repo)): p.read_text() for p in sorted(repo.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(repo).parts}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def worktree_rig(make_rig, repo: Path, **values: object) -> Rig:
    """Workspaces alone: the merge queue is off unless a test turns it on
    (tests/test_merge_queue.py), so a task's branch stays for the assertions."""
    return make_rig(WORKSPACE_MODE="worktree", REPO_DIR=str(repo), MIN_FREE_DISK_MB=0,
                    **{"MERGE": "off", **values})


def workspace_of(rig: Rig, task_id: str) -> Path:
    return rig.settings.workspaces_dir / f"task-{task_id}"


# --- worktree mode ------------------------------------------------------------------------


def test_two_tasks_at_once_each_in_its_own_worktree(make_rig, repo: Path) -> None:
    rig = worktree_rig(make_rig, repo, GIT_AUTHOR_NAME="Agent Bot",
                       GIT_AUTHOR_EMAIL="bot@example.com")
    before = tree_snapshot(repo)
    head_before = git(repo, "rev-parse", "HEAD")
    tasks = [rig.add(f"Edit {n}") for n in (1, 2)]
    release = rig.path("release")
    wrappers = []
    for task in tasks:
        token = rig.prepare(task)
        steps = ["write", "same.txt", f"written by {task.id}",
                 "ready", str(rig.path(f"ready-{task.id}")), "wait", str(release),
                 "env", "report.json", str(rig.lease_path(task.id))]
        wrappers.append(rig.spawn(task.id, token, AGENT_COMMAND=agent_command(*steps)))
    for task in tasks:  # both agents run at the same time
        wait_for(rig.path(f"ready-{task.id}").exists, RUN_TIMEOUT, "both agents to start")
    seen = {}
    for task in tasks:
        ws = workspace_of(rig, task.id)
        assert (ws / "same.txt").read_text() == f"written by {task.id}"
        assert sorted(p.name for p in ws.iterdir()) == [".git", "README", "same.txt", "src"]
        seen[task.id] = ws
    assert tree_snapshot(repo) == before  # REPO_DIR's working tree is untouched
    release.touch()
    for wrapper in wrappers:
        assert wrapper.wait(RUN_TIMEOUT) == 0
    for task in tasks:
        assert rig.tasks.get(task.id).status == COMPLETE
        branch = BRANCH.format(task.id)
        # The agent left its work uncommitted: it was committed on the task branch...
        assert git(repo, "show", f"{branch}:same.txt") == f"written by {task.id}"
        assert git(repo, "log", "-1", "--format=%an <%ae>|%s", branch) == \
            f"Agent Bot <bot@example.com>|task {task.id}: Edit {task.id}"
        # ...and the worktree of the completed task is gone, its branch kept.
        assert not seen[task.id].exists()
        rec = record.read(rig.settings.task_log_dir, task.id)
        assert rec is not None and rec.state == record.REMOVED
        assert rec.base_commit == head_before and rec.branch == branch
        data = taskfile.read(rig.settings.task_log_dir, task.id)
        assert data["workspace"] == str(seen[task.id]) and data["branch"] == branch
        assert data["base_commit"] == head_before
    # What each agent saw: its own workspace as cwd and in its environment.
    for task in tasks:
        report = json.loads(git(repo, "show", f"{BRANCH.format(task.id)}:report.json"))
        assert report["cwd"] == str(seen[task.id])
        assert report["env"]["TINYSCHEDULER_WORKSPACE"] == str(seen[task.id])
        assert report["env"]["TINYSCHEDULER_BRANCH"] == BRANCH.format(task.id)
    assert tree_snapshot(repo) == before
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "rev-parse", "HEAD") == head_before
    assert git(repo, "branch", "--show-current") == "main"
    assert len(git(repo, "worktree", "list").splitlines()) == 1


def test_a_retry_reuses_the_workspace(make_rig, repo: Path) -> None:
    rig = worktree_rig(make_rig, repo, RETRY_BACKOFF_SEC=0)
    task = rig.add("Flaky")
    task = rig.attempt(task, "write", "left.txt", "attempt 1", "exit", "3")
    assert task.status == IDLE
    assert (workspace_of(rig, task.id) / "left.txt").exists()  # kept for the retry
    task = rig.attempt(task, "expect", "left.txt", "exit", "0")
    assert task.status == COMPLETE, rig.summary(task.id)


def test_a_fresh_retry_starts_clean_and_keeps_the_old_work_on_a_branch(
        make_rig, repo: Path) -> None:
    rig = worktree_rig(make_rig, repo, RETRY_BACKOFF_SEC=0, WORKSPACE_FRESH_ON_RETRY=1)
    task = rig.add("Flaky")
    task = rig.attempt(task, "write", "left.txt", "attempt 1", "exit", "3")
    assert task.status == IDLE
    task = rig.attempt(task, "absent", "left.txt", "expect", "README", "exit", "0")
    assert task.status == COMPLETE, rig.summary(task.id)
    kept = f"tinyscheduler/kept/task-{task.id}-attempt-1"
    assert git(repo, "show", f"{kept}:left.txt") == "attempt 1"


def test_directory_mode_seeds_from_the_template_and_reuses_on_retry(make_rig,
                                                                   tmp_path: Path) -> None:
    template = tmp_path / "template"
    template.mkdir()
    (template / "seed.txt").write_text("seed")
    rig = make_rig(WORKSPACE_MODE="directory", WORKSPACE_TEMPLATE=str(template),
                   MIN_FREE_DISK_MB=0, RETRY_BACKOFF_SEC=0)
    task = rig.add()
    task = rig.attempt(task, "expect", "seed.txt", "write", "left.txt", "1", "exit", "3")
    assert task.status == IDLE
    task = rig.attempt(task, "expect", "left.txt", "exit", "0")
    assert task.status == COMPLETE
    ws = workspace_of(rig, task.id)
    assert ws.is_dir() and oct(ws.stat().st_mode & 0o777) == oct(0o700)
    assert (template / "seed.txt").read_text() == "seed" and not (template / "left.txt").exists()


def test_a_missing_target_branch_fails_the_launch_naming_it(make_rig, repo: Path) -> None:
    rig = worktree_rig(make_rig, repo, TARGET_BRANCH="nope")
    task = rig.attempt(rig.add(), "exit", "0")
    assert task.status == IDLE and "target branch 'nope' does not exist" in task.last_error


# --- hooks --------------------------------------------------------------------------------


def hook(log: Path, name: str) -> str:
    return " ".join([PY, str(FAKE_AGENT), "append", str(log), f"{name}:{{attempt}}:{{outcome}}"])


def test_hooks_run_at_their_moments(make_rig, repo: Path) -> None:
    log = repo.parent / "hooks.log"
    rig = worktree_rig(make_rig, repo, RETRY_BACKOFF_SEC=0, **{
        f"HOOK_{name.upper()}": hook(log, name)
        for name in ("after_create", "before_run", "after_run", "before_remove")})
    task = rig.attempt(rig.add(), "exit", "3")
    task = rig.attempt(task, "exit", "0")
    assert task.status == COMPLETE
    assert log.read_text().splitlines() == [
        "after_create:1:", "before_run:1:", "after_run:1:failed",
        "before_run:2:", "after_run:2:succeeded", "before_remove:2:"]


def test_a_hook_past_its_timeout_is_killed_and_the_launch_fails(make_rig, repo: Path) -> None:
    marker = repo.parent / "agent-ran"
    rig = worktree_rig(make_rig, repo, HOOK_TIMEOUT_SEC=1,
                       HOOK_BEFORE_RUN=agent_command("print", "installing", "sleep", "30"))
    task = rig.attempt(rig.add(), "write", str(marker), "x")
    assert task.status == IDLE
    assert "launch_failed" in task.last_error
    assert "hook before_run timed out after 1 s (killed)" in task.last_error
    assert "installing" in task.last_error
    assert not marker.exists()
    assert "installing" in rig.log_path(task.id).read_text()


def test_a_failing_after_create_hook_fails_the_launch_and_runs_again_next_time(
        make_rig, repo: Path) -> None:
    rig = worktree_rig(make_rig, repo, RETRY_BACKOFF_SEC=0,
                       HOOK_AFTER_CREATE=agent_command("print", "no deps", "exit", "4"))
    task = rig.attempt(rig.add(), "exit", "0")
    assert task.status == IDLE
    assert "hook after_create exited 4" in task.last_error and "no deps" in task.last_error
    task = rig.attempt(task, "exit", "0", HOOK_AFTER_CREATE="true")
    assert task.status == COMPLETE


# --- resource limits ----------------------------------------------------------------------


def test_an_agent_past_its_memory_limit_ends_naming_it(make_rig) -> None:
    rig = make_rig(AGENT_MEMORY_MAX_MB=300)
    hog = f"{PY} -S -c 'x = bytearray(2 * 1024 ** 3)'"
    token = rig.prepare(task := rig.add())
    assert rig.run(task.id, token, AGENT_COMMAND=hog) == 0
    task = rig.tasks.get(task.id)
    assert rig.summary(task.id).startswith("failed: memory limit 300 MB (exit code 1)")
    assert "memory limit 300 MB" in task.last_error


def test_an_agent_past_its_cpu_limit_is_killed_naming_it(make_rig, tmp_path: Path) -> None:
    (tmp_path / "agent-control.json").write_text(json.dumps(
        [{"agentName": "worker", "agentType": "dev", "cpuMaxSec": 1}]))
    rig = make_rig(AGENT_CPU_MAX_SEC=0)
    token = rig.prepare(task := rig.add())
    assert rig.run(task.id, token, AGENT_COMMAND=f"{PY} -S -c 'while True: pass'") == 0
    assert rig.summary(task.id).startswith("killed: CPU limit 1 s (signal 24)")
    assert rig.tasks.get(task.id).last_error.startswith("attempt 1 killed, signal 24: CPU limit")


def test_a_bad_limit_in_the_agent_control_file_fails_the_launch(make_rig,
                                                                tmp_path: Path) -> None:
    (tmp_path / "agent-control.json").write_text(json.dumps(
        [{"agentName": "worker", "agentType": "dev", "memoryMaxMb": "lots"}]))
    rig = make_rig()
    task = rig.attempt(rig.add(), "exit", "0")
    assert "memoryMaxMb is 'lots'" in task.last_error


# --- keeping failed work ------------------------------------------------------------------


def test_a_parked_task_keeps_its_workspace_and_unmerged_branch(make_rig, repo: Path) -> None:
    rig = worktree_rig(make_rig, repo, MAX_ATTEMPTS=1)
    task = rig.attempt(rig.add(), "write", "wip.txt", "half done", "exit", "3")
    assert task.status == FAILED
    ws = workspace_of(rig, task.id)
    assert (ws / "wip.txt").read_text() == "half done"
    assert git(repo, "show", f"{BRANCH.format(task.id)}:wip.txt") == "half done"
    assert git(ws, "status", "--porcelain") == ""


def test_the_wrapper_gives_a_task_back_unstarted_when_the_disk_is_low(make_rig,
                                                                        repo: Path) -> None:
    rig = worktree_rig(make_rig, repo)
    marker = repo.parent / "agent-ran"
    token = rig.prepare(task := rig.add())
    assert rig.run(task.id, token, MIN_FREE_DISK_MB=10**9,
                   AGENT_COMMAND=agent_command("write", str(marker), "x")) == 0
    task = rig.tasks.get(task.id)
    assert task.status == IDLE and task.attempts == 0  # skipped, not failed
    assert "low disk" in rig.summary(task.id) and not marker.exists()
    assert not workspace_of(rig, task.id).exists()


def test_a_hook_dies_with_its_wrapper(make_rig, repo: Path) -> None:
    ready = repo.parent / "hook-pid"
    rig = worktree_rig(make_rig, repo,
                       HOOK_BEFORE_RUN=agent_command("ready", str(ready), "sleep", "60"))
    token = rig.prepare(task := rig.add())
    wrapper = rig.spawn(task.id, token)
    hook_pid = _read_pid(ready)
    rig.track(hook_pid)
    os.kill(wrapper.pid, signal.SIGKILL)
    wrapper.wait(RUN_TIMEOUT)
    wait_for(lambda: _gone(hook_pid), RUN_TIMEOUT, "the hook to die with its wrapper")


def _read_pid(path: Path) -> int:
    wait_for(path.exists, RUN_TIMEOUT, f"{path.name} to be written")
    return int(path.read_text())


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
