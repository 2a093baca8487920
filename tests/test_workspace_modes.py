"""A workspace's life around attempts (``modes.begin`` / ``end``), called in this process
with real git repositories: what a fresh retry and a crash leave is moved aside or kept
on a branch, never deleted; and validate-config's workspace checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_workspace import git, make_repo

from scheduler.config.settings import PREFIX, load_settings
from scheduler.workspace import checks, modes, record
from scheduler.workspace.base import Context, WorkspaceError


def settings(base: Path, **values: object):
    return load_settings(environ={f"{PREFIX}{k}": str(v) for k, v in
                                  {"AGENT_COMMAND": "true", "MIN_FREE_DISK_MB": 0,
                                   **values}.items()}, cwd=base)


def context(s, attempt: int, notes: list[str] | None = None) -> Context:
    return Context(s, "5", attempt, title="the task", note=(notes if notes is not None
                                                            else []).append)


# --- directory mode -----------------------------------------------------------------------


def test_a_fresh_retry_moves_the_old_directory_aside(tmp_path: Path) -> None:
    s = settings(tmp_path, WORKSPACE_MODE="directory", WORKSPACE_FRESH_ON_RETRY="true")
    first = modes.begin(context(s, 1))
    assert first is not None and first.created
    (first.path / "draft.txt").write_text("attempt 1\n")
    leftover = s.workspaces_dir / f".{first.path.name}.tmp-999-abcd"
    leftover.mkdir()  # a crashed attempt's half-built directory

    notes: list[str] = []
    second = modes.begin(context(s, 2, notes))
    assert second is not None and second.path == first.path
    assert list(second.path.iterdir()) == [] and not leftover.exists()
    (kept,) = (s.workspaces_dir / ".kept").iterdir()
    assert kept.name.startswith("task-5-attempt-1-")
    assert (kept / "draft.txt").read_text() == "attempt 1\n"
    assert f"workspace {first.path}: the previous one moved to {kept}" in notes


def test_a_directory_without_a_record_is_moved_aside_as_orphaned(tmp_path: Path) -> None:
    s = settings(tmp_path, WORKSPACE_MODE="directory")
    stray = s.workspaces_dir / "task-5"
    stray.mkdir(parents=True)
    (stray / "unknown.txt").write_text("?\n")
    workspace = modes.begin(context(s, 1))
    assert workspace is not None and list(workspace.path.iterdir()) == []
    (kept,) = (s.workspaces_dir / ".kept").iterdir()
    assert kept.name.startswith("task-5-orphaned-") and (kept / "unknown.txt").exists()


def test_a_failing_after_run_hook_is_noted_and_the_outcome_stands(tmp_path: Path) -> None:
    s = settings(tmp_path, WORKSPACE_MODE="directory",
                 HOOK_AFTER_RUN="sh -c 'echo upload failed; exit 2'")
    notes: list[str] = []
    workspace = modes.begin(context(s, 1, notes))
    assert workspace is not None
    modes.end(context(s, 1, notes), workspace, "failed")
    assert "hook after_run exited 2; last lines: upload failed (the outcome stands)" in notes
    rec = record.read(s.task_log_dir, "5")
    assert rec is not None and rec.outcome == "failed"


# --- worktree mode ------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def test_a_plain_directory_where_the_worktree_goes_is_moved_aside(tmp_path, repo) -> None:
    s = settings(tmp_path, WORKSPACE_MODE="worktree", REPO_DIR=repo)
    stray = s.workspaces_dir / "task-5"
    stray.mkdir(parents=True)
    (stray / "notes.txt").write_text("someone's work\n")
    notes: list[str] = []
    workspace = modes.begin(context(s, 1, notes))
    assert workspace is not None and (workspace.path / ".git").is_file()
    (aside,) = (s.workspaces_dir / ".orphaned").iterdir()
    assert (aside / "notes.txt").read_text() == "someone's work\n"
    assert f"workspace {stray}: not a usable worktree; moved aside to {aside}" in notes


def test_a_fresh_retry_commits_leftovers_onto_a_kept_branch(tmp_path, repo) -> None:
    s = settings(tmp_path, WORKSPACE_MODE="worktree", REPO_DIR=repo,
                 WORKSPACE_FRESH_ON_RETRY="true", AUTO_COMMIT="false")
    first = modes.begin(context(s, 1))
    assert first is not None
    (first.path / "half.txt").write_text("unfinished\n")  # left uncommitted
    notes: list[str] = []
    second = modes.begin(context(s, 2, notes))
    assert second is not None and not (second.path / "half.txt").exists()
    kept = "tinyscheduler/kept/task-5-attempt-1"
    assert git(repo, "show", f"{kept}:half.txt") == "unfinished"
    assert git(repo, "log", "-1", "--format=%s", kept) == "task 5: work left by attempt 1"
    assert any(n.endswith(f"fresh retry; the last attempt's work is kept on {kept}")
               for n in notes)


def test_a_fresh_retry_without_work_starts_over_from_the_target(tmp_path, repo) -> None:
    s = settings(tmp_path, WORKSPACE_MODE="worktree", REPO_DIR=repo,
                 WORKSPACE_FRESH_ON_RETRY="true")
    assert modes.begin(context(s, 1)) is not None
    notes: list[str] = []
    second = modes.begin(context(s, 2, notes))
    assert second is not None and second.created
    assert git(repo, "branch", "--list", "tinyscheduler/kept/*") == ""
    assert any(n.endswith("fresh retry from main") for n in notes)


# --- validate-config's checks ---------------------------------------------------------------


def test_checks_name_a_directory_that_is_no_repository_and_a_missing_branch(tmp_path,
                                                                            repo) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    found = checks.check(settings(tmp_path, WORKSPACE_MODE="worktree", REPO_DIR=plain,
                                  TARGET_BRANCH="main"))
    assert found[0][0] == "error" and found[0][1].startswith(
        f"TINYSCHEDULER_REPO_DIR={plain} is not a git repository: ")
    found = checks.check(settings(tmp_path, WORKSPACE_MODE="worktree", REPO_DIR=repo,
                                  TARGET_BRANCH="release"))
    assert found[0] == ("error", f"TINYSCHEDULER_TARGET_BRANCH=release is not a branch of "
                                 f"{repo}; set it to an existing branch")


def test_checks_warn_of_low_disk_for_directory_mode(tmp_path) -> None:
    s = settings(tmp_path, WORKSPACE_MODE="directory", MIN_FREE_DISK_MB=10**9)
    found = checks.check(s)
    assert found[0] == ("ok", f"workspace mode directory in {s.workspaces_dir}")
    assert found[1][0] == "warning" and "below MIN_FREE_DISK_MB=1000000000" in found[1][1]
    assert os.path.lexists(s.workspaces_dir) is False  # checking creates nothing


def test_a_half_made_worktree_is_removed_and_made_again(tmp_path, repo) -> None:
    s = settings(tmp_path, WORKSPACE_MODE="worktree", REPO_DIR=repo)
    path = s.workspaces_dir / "task-5"
    path.mkdir(parents=True)
    (path / "partial").write_text("")  # a crash before git registered the worktree
    record.write(s.task_log_dir, record.Record("5", "worktree", str(path), record.CREATING,
                                               attempt=1))
    notes: list[str] = []
    workspace = modes.begin(context(s, 2, notes))
    assert workspace is not None and (path / ".git").is_file()
    assert not (path / "partial").exists() and not (s.workspaces_dir / ".orphaned").exists()
    assert f"workspace {path}: repaired a half-made worktree" in notes


def test_a_completed_worktree_is_removed_even_when_before_remove_fails(tmp_path, repo) -> None:
    s = settings(tmp_path, WORKSPACE_MODE="worktree", REPO_DIR=repo,
                 HOOK_BEFORE_REMOVE="sh -c 'echo no archive; exit 5'")
    notes: list[str] = []
    workspace = modes.begin(context(s, 1, notes))
    assert workspace is not None
    (workspace.path / "done.txt").write_text("done\n")
    modes.end(context(s, 1, notes), workspace, "succeeded")  # auto-commit
    modes.tidy(context(s, 1, notes), workspace, "succeeded")
    assert not workspace.path.exists()
    assert git(repo, "show", "tinyscheduler/task-5:done.txt") == "done"
    assert "hook before_remove exited 5; last lines: no archive (the workspace is removed " \
           "anyway)" in notes


def test_a_task_branch_checked_out_elsewhere_fails_the_launch_naming_it(tmp_path,
                                                                        repo) -> None:
    s = settings(tmp_path, WORKSPACE_MODE="worktree", REPO_DIR=repo)
    mine = tmp_path / "my-checkout"
    git(repo, "worktree", "add", "-q", "-b", "tinyscheduler/task-5", str(mine), "main")
    with pytest.raises(WorkspaceError) as caught:
        modes.begin(context(s, 1))
    message = str(caught.value)
    assert message.startswith("workspace: git worktree add --no-checkout in ")
    assert "tinyscheduler/task-5" in message and str(mine) in message
    assert (mine / "README").exists()  # the person's checkout is untouched


def test_a_workspaces_directory_under_a_file_fails_the_launch_naming_it(tmp_path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    s = settings(tmp_path, WORKSPACE_MODE="directory",
                 WORKSPACES_DIR=tmp_path / "not-a-dir" / "workspaces")
    with pytest.raises(WorkspaceError, match=r"^workspace: \[Errno 20\] Not a directory: "):
        modes.begin(context(s, 1))


def test_a_failed_auto_commit_is_noted_and_the_outcome_recorded(tmp_path, repo) -> None:
    s = settings(tmp_path, WORKSPACE_MODE="worktree", REPO_DIR=repo)
    workspace = modes.begin(context(s, 1))
    assert workspace is not None
    (workspace.path / "done.txt").write_text("done\n")
    gitdir = Path(git(workspace.path, "rev-parse", "--absolute-git-dir"))
    (gitdir / "index.lock").write_text("")  # a git the agent left running, or killed
    notes: list[str] = []
    modes.end(context(s, 1, notes), workspace, "succeeded")
    (failed,) = [n for n in notes if n.startswith("auto-commit failed: ")]
    assert failed.startswith("auto-commit failed: git add --all in ")
    # git's own error line, not the advice it prints after it
    assert failed.endswith(f"exited 128: fatal: Unable to create '{gitdir}/index.lock': "
                           "File exists.")
    rec = record.read(s.task_log_dir, "5")
    assert rec is not None and rec.outcome == "succeeded"
    assert (workspace.path / "done.txt").exists()  # nothing lost: it stays uncommitted
