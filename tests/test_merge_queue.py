"""The merge queue through whole passes: real git repositories, real schedulers, wrappers
and agents. Each succeeded task's branch lands on the target by compare-and-swap, one at a
time; conflicts and failed checks leave the target untouched."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_reconciler import Scheduler, wait_for
from test_reconciler import make_scheduler as make_scheduler  # noqa: F401 - the fixture
from test_workspace import FAKE_AGENT, PY, git, make_repo, tree_snapshot

from scheduler import faults

pytestmark = pytest.mark.processes


def fake(*steps: str) -> str:
    return shlex.join([PY, str(FAKE_AGENT), *steps])


def merge_scheduler(make_scheduler, tmp_path: Path, slots: int = 3,
                    **settings: object) -> Scheduler:
    repo = make_repo(tmp_path / "repo", {"README": "hello\n", "app.txt": "one\ntwo\n"})
    values = {"WORKSPACE_MODE": "worktree", "REPO_DIR": str(repo), "MIN_FREE_DISK_MB": 0,
              "SPAWN_TIMEOUT_SEC": 5, **settings}
    s = make_scheduler({"vaela": "dev"}, {"vaela": slots}, **values)
    s.repo = repo  # type: ignore[attr-defined]
    return s


def subjects(repo: Path, ref: str = "main") -> list[str]:
    return git(repo, "log", "--first-parent", "--format=%s", ref).splitlines()


def details(s: Scheduler, task: str) -> dict:
    with s.store() as store:
        return store.details(task)


def notes(s: Scheduler, task: str) -> str:
    return "\n".join(row["detail"] for row in s.history(task))


def test_three_tasks_in_parallel_all_merge_in_the_order_they_finished(
        make_scheduler, tmp_path: Path) -> None:
    go = tmp_path / "go"
    go.mkdir()
    s = merge_scheduler(make_scheduler, tmp_path, AGENT_COMMAND=fake(
        "write", "file-{task_id}.txt", "by {task_id}", "ready", str(go / "started-{task_id}"),
        "wait", str(go / "{task_id}")))
    repo = s.repo  # type: ignore[attr-defined]
    before, head = tree_snapshot(repo), git(repo, "rev-parse", "HEAD")
    tasks = [s.add(f"task {n}", "--queue", "dev") for n in range(3)]
    s.run_once()
    wait_for(lambda: all((go / f"started-{t}").exists() for t in tasks), timeout=30,
             what="all three agents to run at once")
    order = [tasks[2], tasks[0], tasks[1]]
    for task in order:
        (go / task).touch()
        wait_for(lambda task=task: s.tasks()[task].status == "complete", timeout=30,
                 what=f"task {task} to merge")
    wait_for(lambda: not s.leases(), what="the wrappers to finish")
    assert subjects(repo)[:3] == [f"Merge task {t}: task {n}" for t, n in
                                  reversed(list(zip(order, (2, 0, 1), strict=True)))]
    assert sorted(git(repo, "ls-tree", "--name-only", "main").splitlines()) == sorted(
        ["README", "app.txt"] + [f"file-{t}.txt" for t in tasks])
    for task in tasks:
        info = details(s, task)
        assert info["changed_files"] == [f"file-{task}.txt"]
        assert git(repo, "rev-parse", "--verify", info["merge_commit"]) == info["merge_commit"]
        history = notes(s, task)
        assert f"merged into main as {info['merge_commit'][:12]}" in history
        assert "merging into main: 1 file(s) changed" in history
    # REPO_DIR's files are untouched; its HEAD (main) moved, which is why docs recommend
    # a target branch that is not checked out there.
    assert tree_snapshot(repo) == before and git(repo, "rev-parse", "HEAD") != head
    assert git(repo, "branch", "--list", "tinyscheduler/*") == ""  # branches removed
    assert len(git(repo, "worktree", "list").splitlines()) == 1


def test_a_task_without_commits_completes_with_no_changes(make_scheduler,
                                                            tmp_path: Path) -> None:
    s = merge_scheduler(make_scheduler, tmp_path, AGENT_COMMAND=fake("print", "nothing"))
    repo = s.repo  # type: ignore[attr-defined]
    head = git(repo, "rev-parse", "main")
    task = s.add("look only", "--queue", "dev")
    s.pass_until(s.all_done)
    assert git(repo, "rev-parse", "main") == head
    assert "no changes" in notes(s, task) and details(s, task)["merge_commit"] is None
