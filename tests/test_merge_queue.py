"""The merge queue through whole passes: real git repositories, real schedulers, wrappers
and agents. Each succeeded task's branch lands on the target by compare-and-swap, one at a
time; conflicts and failed checks leave the target untouched."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
from test_reconciler import Scheduler, alive, wait_for
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


def same_line_scheduler(make_scheduler, tmp_path: Path, **settings: object) -> Scheduler:
    """Two agents rewrite line 2 of app.txt, each once its release file exists."""
    go = tmp_path / "go"
    go.mkdir()
    s = merge_scheduler(make_scheduler, tmp_path, AGENT_COMMAND=fake(
        "ready", str(go / "started-{task_id}"), "wait", str(go / "{task_id}"),
        "write", "app.txt", "one\nchanged by {task_id}\n"), **settings)
    s.go = go  # type: ignore[attr-defined]
    return s


def run_in_turn(s: Scheduler, first: str, second: str) -> str:
    """Both agents start from the same base; the first finishes (and merges) first; the
    target's commit after the first merge."""
    go = s.go  # type: ignore[attr-defined]
    s.run_once()
    wait_for(lambda: (go / f"started-{first}").exists() and (go / f"started-{second}").exists(),
             timeout=30, what="both agents to start from the same base")
    (go / first).touch()
    wait_for(lambda: s.tasks()[first].status == "complete", timeout=30, what="the first merge")
    merged = git(s.repo, "rev-parse", "main")  # type: ignore[attr-defined]
    (go / second).touch()
    return merged


def test_same_line_conflict_then_retry_on_the_new_base_merges(make_scheduler,
                                                                tmp_path: Path) -> None:
    s = same_line_scheduler(make_scheduler, tmp_path)
    repo = s.repo  # type: ignore[attr-defined]
    first, second = (s.add(f"edit line 2 ({n})", "--queue", "dev") for n in (1, 2))
    after_first = run_in_turn(s, first, second)
    wait_for(lambda: s.tasks()[second].attempts == 1, timeout=30, what="the conflict")
    wait_for(lambda: not s.leases(), what="the wrapper to finish")
    assert git(repo, "rev-parse", "main") == after_first  # untouched by the conflict
    conflict = [row for row in s.history(second) if row["from_status"] == "working"
                and row["to_status"] == "idle"][0]["detail"]
    assert "merge conflict with main" in conflict and "in app.txt" in conflict
    assert "main untouched" in conflict
    assert "conflict" in s.tasks()[second].last_error
    kept = f"tinyscheduler/kept/task-{second}-attempt-1"
    assert git(repo, "show", f"{kept}:app.txt") == f"one\nchanged by {second}"  # not lost
    s.pass_until(s.all_done, timeout=60)
    assert git(repo, "rev-parse", "main^1") == after_first  # the retry merged on top
    assert git(repo, "show", "main:app.txt") == f"one\nchanged by {second}"
    assert s.tasks()[second].attempts == 1  # the conflict counted as an attempt
    assert f"also changed by task {first}: app.txt" in notes(s, second)
    assert f"also changed by task {second} (merged later): app.txt" in notes(s, first)


def test_a_conflict_with_park_waits_for_a_person(make_scheduler, tmp_path: Path) -> None:
    s = same_line_scheduler(make_scheduler, tmp_path, MERGE_CONFLICT="park")
    repo = s.repo  # type: ignore[attr-defined]
    first, second = (s.add(f"edit line 2 ({n})", "--queue", "dev") for n in (1, 2))
    run_in_turn(s, first, second)
    wait_for(lambda: s.tasks()[second].status == "failed", timeout=30, what="the park")
    wait_for(lambda: not s.leases(), what="the wrapper to finish")
    assert s.tasks()[second].parked and "conflict" in s.tasks()[second].last_error
    assert git(repo, "show", "main:app.txt") == f"one\nchanged by {first}"
    # the work stays in its worktree and branch for the person
    assert git(repo, "show", f"tinyscheduler/task-{second}:app.txt") == \
        f"one\nchanged by {second}"


def test_a_failing_check_leaves_the_target_unchanged(make_scheduler, tmp_path: Path) -> None:
    check = shlex.join([sys.executable, "-c", "import sys; print('3 tests broke'); "
                        "sys.exit(1)"])
    s = merge_scheduler(make_scheduler, tmp_path, MAX_ATTEMPTS=1, MERGE_CHECK_COMMAND=check,
                        AGENT_COMMAND=fake("write", "new.txt", "x"))
    repo = s.repo  # type: ignore[attr-defined]
    head = git(repo, "rev-parse", "main")
    task = s.add("break the tests", "--queue", "dev")
    s.pass_until(lambda: s.tasks()[task].status == "failed")
    assert git(repo, "rev-parse", "main") == head
    error = s.tasks()[task].last_error
    assert "check_failed" in error and "merge check failed" in error and "3 tests broke" in error


def test_a_commit_to_the_target_during_the_merge_is_not_lost(make_scheduler,
                                                               tmp_path: Path) -> None:
    """The check moves the target (as someone pushing meanwhile would): the compare-and-
    swap fails, the merge is redone on the new tip, and both commits are kept."""
    repo_dir = tmp_path / "repo"
    mark = tmp_path / "moved-once"
    mover = (
        "import os, subprocess, sys\n"
        "repo, mark = sys.argv[1], sys.argv[2]\n"
        "if not os.path.exists(mark):\n"
        "    open(mark, 'w').close()\n"
        "    env = {k: v for k, v in os.environ.items() if not k.startswith('GIT_')}\n"
        "    env.update(GIT_AUTHOR_NAME='x', GIT_AUTHOR_EMAIL='x@x', GIT_COMMITTER_NAME='x',"
        " GIT_COMMITTER_EMAIL='x@x')\n"
        "    g = lambda *a: subprocess.run(['git', '-C', repo, *a], env=env, check=True,"
        " capture_output=True, text=True).stdout.strip()\n"
        "    new = g('commit-tree', 'main^{tree}', '-p', 'main', '-m', 'pushed meanwhile')\n"
        "    g('update-ref', 'refs/heads/main', new)\n")
    check = shlex.join([sys.executable, "-c", mover, str(repo_dir), str(mark)])
    s = merge_scheduler(make_scheduler, tmp_path, MERGE_CHECK_COMMAND=check,
                        AGENT_COMMAND=fake("write", "new.txt", "x"))
    task = s.add("add a file", "--queue", "dev")
    s.pass_until(s.all_done)
    assert mark.exists()
    assert subjects(repo_dir)[:2] == ["Merge task 1: add a file", "pushed meanwhile"]
    assert "moved during the merge; redone on its new tip" in notes(s, task)


@pytest.mark.parametrize("point", faults.MERGE_POINTS)
def test_kill_9_at_every_merge_point_merges_exactly_once(make_scheduler, tmp_path: Path,
                                                         point: str) -> None:
    check = shlex.join([sys.executable, "-c", "pass"])
    s = merge_scheduler(make_scheduler, tmp_path, MERGE_CHECK_COMMAND=check,
                        AGENT_COMMAND=fake("append", "runs.txt", "agent ran"))
    repo = s.repo  # type: ignore[attr-defined]
    head = git(repo, "rev-parse", "main")
    task = s.add("append a line", "--queue", "dev")
    env = s.environ()
    env[faults.CRASH_AT_VARIABLE] = point  # the forked wrapper SIGKILLs itself at the point
    assert s.cli("run", "--once", env=env).returncode == 0
    wait_for(lambda: s.leases() and s.leases()[task].pid is not None
             and not alive(s.leases()[task].pid), timeout=30, what="the wrapper to die")
    now = git(repo, "rev-parse", "main")
    if point in ("merge-after-cas", "merge-before-cleanup"):  # the new commit: the merge
        assert git(repo, "rev-list", "--parents", "-n", "1", now).split()[1:] == \
            [head, git(repo, "rev-parse", f"tinyscheduler/task-{task}")]
    else:
        assert now == head  # the old commit, untouched
    s.pass_until(lambda: s.all_done() and not s.leases(), timeout=60)
    merges = [line for line in subjects(repo) if line.startswith(f"Merge task {task}")]
    assert len(merges) == 1
    assert git(repo, "show", "main:runs.txt") == "agent ran"  # the agent ran once
    assert details(s, task)["merge_commit"] == git(repo, "rev-parse", "main")
    assert s.tasks()[task].status == "complete"  # not stuck merging
    assert not list((s.state / "workspaces" / ".merge").glob("merge-*"))  # no leftovers


def test_task_revert_adds_a_revert_commit_and_a_conflicting_one_changes_nothing(
        make_scheduler, tmp_path: Path) -> None:
    s = merge_scheduler(make_scheduler, tmp_path, slots=1, AGENT_COMMAND=fake(
        "write", "app.txt", "one\nchanged by {task_id}\n", "write", "own-{task_id}.txt", "x"))
    repo = s.repo  # type: ignore[attr-defined]
    first = s.add("first edit", "--queue", "dev")
    s.pass_until(s.all_done)
    second = s.add("second edit", "--queue", "dev")
    s.pass_until(s.all_done)
    wait_for(lambda: not s.leases(), what="the wrappers to finish")
    head = git(repo, "rev-parse", "main")
    refused = s.cli("task", "revert", first)  # the second edit rewrote the same line
    assert refused.returncode == 1 and "conflicts in app.txt; nothing changed" in refused.stderr
    assert git(repo, "rev-parse", "main") == head
    done = s.cli("task", "revert", second)
    assert done.returncode == 0, done.stderr
    assert git(repo, "log", "-1", "--format=%s", "main") == f"Revert task {second}: second edit"
    assert git(repo, "show", "main:app.txt") == f"one\nchanged by {first}"
    assert git(repo, "rev-parse", "main^") == head
    history = notes(s, second)
    assert "merged into main as" in history and "reverted on main" in history
    assert s.tasks()[second].status == "complete"  # reopens nothing
    shown = s.cli("task", "show", second).stdout
    assert "merged as" in shown and "own-2.txt" in shown


def test_a_task_waiting_to_merge_holds_the_files_it_changed(make_scheduler,
                                                             tmp_path: Path) -> None:
    """A task that declared nothing holds the files it actually changed while it waits to
    merge (here: while its check runs): a task declaring one of them waits."""
    release = tmp_path / "check-may-finish"
    check = shlex.join([sys.executable, "-c", "import os, sys, time\n"
                        "while not os.path.exists(sys.argv[1]): time.sleep(0.02)",
                        str(release)])
    s = merge_scheduler(make_scheduler, tmp_path, MERGE_CHECK_COMMAND=check,
                        AGENT_COMMAND=fake("write", "app.txt", "rewritten\n"))
    first = s.add("rewrite app.txt", "--queue", "dev")
    s.run_once()
    wait_for(lambda: s.leases().get(first) and s.leases()[first].state == "merging",
             timeout=30, what="the first task to wait for its merge")
    assert s.leases()[first].metadata["changed_files"] == ["app.txt"]
    second = s.add("edit app.txt too", "--queue", "dev", "--files", "app.txt")
    assert f"overlaps files of task {first} (app.txt)" in s.cli("run", "--once",
                                                              "--dry-run").stdout
    assert f"task {first}" in s.cli("status").stdout and "merging" in s.cli("status").stdout
    listed = s.cli("task", "list").stdout.splitlines()
    assert listed[1].split()[:2] == [first, "merging"]
    s.run_once()
    assert s.statuses()[second] == "idle"
    release.touch()
    s.pass_until(s.all_done, timeout=60)


def test_merge_settings_are_validated_and_the_checked_out_target_is_warned_about(
        make_scheduler, tmp_path: Path) -> None:
    s = merge_scheduler(make_scheduler, tmp_path)
    repo = s.repo  # type: ignore[attr-defined]
    for name, value, named in (
            ("MERGE", "squash", "accepted: off | merge | rebase"),
            ("MERGE_CONFLICT", "ask", "accepted: retry | park"),
            ("MERGE_CHECK_TIMEOUT_SEC", "0", "TINYSCHEDULER_MERGE_CHECK_TIMEOUT_SEC='0'"),
            ("MERGE_LINK_TEMPLATE", "https://x/{sha}", "unknown placeholder {sha}"),
            ("MERGE_CHECK_COMMAND", "make 'test", "TINYSCHEDULER_MERGE_CHECK_COMMAND")):
        bad = s.cli("config", "--show", **{name: value})
        assert bad.returncode == 2 and named in bad.stderr, (name, bad.stderr)
    off = s.cli("config", "--show", WORKSPACE_MODE="none", MERGE="merge")
    assert off.returncode == 2 and "needs TINYSCHEDULER_WORKSPACE_MODE=worktree" in off.stderr
    warned = s.cli("validate-config").stdout
    assert "checked out in REPO_DIR" in warned and "staged differences" in warned
    git(repo, "branch", "integration")
    fine = s.cli("validate-config", TARGET_BRANCH="integration").stdout
    assert "merge queue: merge into integration" in fine and "checked out" not in fine


def test_rebase_mode_keeps_the_target_linear_and_the_after_merge_hook_runs(
        make_scheduler, tmp_path: Path) -> None:
    hook_out = tmp_path / "hook.txt"
    hook = shlex.join([sys.executable, "-c", "import sys; open(sys.argv[1], 'w').write("
                       "' '.join(sys.argv[2:])); sys.exit(4)", str(hook_out), "{task_id}",
                       "{commit}", "{target}"])
    s = merge_scheduler(make_scheduler, tmp_path, MERGE="rebase", HOOK_AFTER_MERGE=hook,
                        MERGE_LINK_TEMPLATE="https://git.example/c/{commit}",
                        AGENT_COMMAND=fake("write", "new.txt", "x"))
    repo = s.repo  # type: ignore[attr-defined]
    task = s.add("rebase me", "--queue", "dev")
    s.pass_until(s.all_done)
    head = git(repo, "rev-parse", "main")
    assert git(repo, "rev-list", "--merges", "main") == ""  # linear
    assert git(repo, "log", "-1", "--format=%s", "main") == f"task {task}: rebase me"
    assert hook_out.read_text() == f"{task} {head} main"
    history = notes(s, task)
    assert f"https://git.example/c/{head}" in history
    assert "hook after_merge exited 4" in history  # reported; the merge stands
    assert s.cli("task", "revert", task).returncode == 0
    assert git(repo, "ls-tree", "--name-only", "main").split() == ["README", "app.txt"]
