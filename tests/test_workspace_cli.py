"""``workspace list`` and ``workspace prune`` on workspaces set up by hand (real git
repositories and worktrees, the CLI in this process): what the text listing says, and
what prune refuses to delete."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from test_workspace import git, make_repo

from scheduler import clock
from scheduler.cli import main
from scheduler.config.settings import PREFIX, load_settings
from scheduler.state.leases import STARTING, Lease, LeaseStore
from scheduler.workspace import record
from scheduler.workspace.prune import prune


@pytest.fixture
def base(tmp_path: Path, monkeypatch) -> Path:
    """A base path with a repository (``repo``, branch main) and no TINYSCHEDULER_*
    variables but the agent command."""
    for key in list(os.environ):
        if key.startswith(PREFIX):
            monkeypatch.delenv(key)
    monkeypatch.setenv(f"{PREFIX}AGENT_COMMAND", "true")
    monkeypatch.chdir(tmp_path)
    make_repo(tmp_path / "repo")
    return tmp_path


def settings(base: Path, **values: str):
    return load_settings(environ={f"{PREFIX}{k}": v for k, v in values.items()}, cwd=base)


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert not err.strip() or code != 0, err
    return code, out


def worktree(base: Path, task_id: str, **fields: object) -> record.Record:
    """A real worktree of ``repo`` on ``tinyscheduler/task-<id>`` and its ready record."""
    s = settings(base)
    path = s.workspaces_dir / f"task-{task_id}"
    path.parent.mkdir(parents=True, exist_ok=True)
    branch = f"tinyscheduler/task-{task_id}"
    git(base / "repo", "worktree", "add", "-q", "-b", branch, str(path), "main")
    rec = record.Record(task_id, "worktree", str(path), record.READY, branch=branch,
                        base_commit=git(base / "repo", "rev-parse", "main"),
                        target_branch="main", repo_dir=str(base / "repo"), attempt=1,
                        **fields)  # type: ignore[arg-type]
    return record.write(s.task_log_dir, rec)


def directory(base: Path, task_id: str, **fields: object) -> record.Record:
    s = settings(base)
    path = s.workspaces_dir / f"task-{task_id}"
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("work\n")
    return record.write(s.task_log_dir, record.Record(
        task_id, "directory", str(path), record.READY, attempt=2, **fields))  # type: ignore[arg-type]


# --- workspace list -----------------------------------------------------------------------


def test_list_says_so_when_there_is_no_workspace(base, capsys):
    assert cli(capsys, "workspace", "list") == (0, "no workspaces\n")


def test_list_shows_each_workspace_its_branch_and_its_live_lease(base, capsys):
    worktree(base, "1")
    directory(base, "2", outcome="failed", note="kept: uncommitted changes")
    gone = worktree(base, "3")
    git(base / "repo", "worktree", "remove", "--force", gone.path)
    git(base / "repo", "branch", "-D", "tinyscheduler/task-3")
    record.write(settings(base).task_log_dir, gone.changed(state=record.REMOVED))
    half = worktree(base, "4")
    git(base / "repo", "worktree", "remove", "--force", half.path)  # the branch stays
    s = settings(base)
    now = clock.now()
    LeaseStore(s.running_dir).create(Lease("1", "vaela", STARTING, "tok-1", now, now, "here"))

    code, out = cli(capsys, "workspace", "list")
    assert code == 0
    lines = out.splitlines()
    ws = s.workspaces_dir
    assert lines[0].split() == ["task", "1", "worktree", "ready", "attempt", "1", "-",
                                str(ws / "task-1"), "branch", "tinyscheduler/task-1",
                                "LEASE", "LIVE"]
    assert lines[1].split() == ["task", "2", "directory", "ready", "attempt", "2", "failed",
                                str(ws / "task-2")]
    assert lines[2] == "  note: kept: uncommitted changes"
    assert lines[3].endswith(f"{ws / 'task-4'} (removed) branch tinyscheduler/task-4")
    assert len(lines) == 4  # task 3: removed, branch deleted: nothing left to show


def test_list_marks_a_branch_deleted_under_an_existing_workspace(base, capsys):
    rec = worktree(base, "5")
    git(base / "repo", "worktree", "remove", "--force", rec.path)
    Path(rec.path).mkdir()
    git(base / "repo", "branch", "-D", "tinyscheduler/task-5")
    code, out = cli(capsys, "workspace", "list")
    assert code == 0
    assert out.rstrip().endswith(f"{rec.path} branch tinyscheduler/task-5 (deleted)")


# --- workspace prune ----------------------------------------------------------------------


def test_prune_never_deletes_a_path_that_is_not_a_task_workspace(base, capsys):
    s = settings(base)
    precious = base / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine\n")
    record.write(s.task_log_dir, record.Record("7", "directory", str(precious), record.READY))
    link = s.workspaces_dir / "task-8"
    link.parent.mkdir(parents=True)
    link.symlink_to(precious)
    record.write(s.task_log_dir, record.Record("8", "directory", str(link), record.READY))
    record.write(s.task_log_dir, record.Record("9", "directory", "state/workspaces/task-9",
                                               record.READY))

    code, out = cli(capsys, "workspace", "prune", "--force")
    assert code == 0
    assert f"task 7: skipped record names {precious}, not a task-7 directory; left alone" in out
    assert f"task 8: skipped record names {link}, not a task-8 directory" in out
    assert "task 9: skipped record names state/workspaces/task-9, not a task-9" in out
    assert out.splitlines()[-1] == "0 removed, 3 kept or skipped"
    assert (precious / "keep.txt").read_text() == "mine\n" and link.is_symlink()
    assert record.read(s.task_log_dir, "7") is not None  # the record stays to be looked at


def test_prune_removes_a_directory_workspace_and_its_record(base, capsys):
    rec = directory(base, "2")
    code, out = cli(capsys, "workspace", "prune")
    assert code == 0
    assert f"task 2: removed {rec.path}: removed" in out
    assert not os.path.lexists(rec.path)
    assert record.read(settings(base).task_log_dir, "2") is None
    assert cli(capsys, "workspace", "list") == (0, "no workspaces\n")


def test_prune_keeps_uncommitted_changes_and_a_broken_worktree_unless_forced(base, capsys):
    dirty = worktree(base, "1")
    Path(dirty.path, "unsaved.txt").write_text("draft\n")
    broken = worktree(base, "2")
    git(base / "repo", "worktree", "remove", "--force", broken.path)
    git(base / "repo", "branch", "-D", "tinyscheduler/task-2")
    Path(broken.path).mkdir()  # a plain directory where the worktree was
    (Path(broken.path) / "left.txt").write_text("?\n")

    code, out = cli(capsys, "workspace", "prune")
    assert code == 0
    assert f"task 1: kept {dirty.path}: uncommitted changes (use --force to remove)" in out
    assert f"task 2: kept {broken.path}: not a git worktree (use --force to remove)" in out
    assert Path(dirty.path, "unsaved.txt").exists() and Path(broken.path, "left.txt").exists()
    # the kept worktree keeps its branch (checked out there; deleting it used to fail the
    # whole prune with a git error before task 2 was looked at)
    assert git(base / "repo", "branch", "--list", "tinyscheduler/task-1")
    s = settings(base)
    kept = record.read(s.task_log_dir, "1")
    assert kept is not None and kept.state == record.READY
    assert kept.note == f"{dirty.path}: uncommitted changes (use --force to remove)"

    code, out = cli(capsys, "workspace", "prune", "--force")
    assert code == 0
    assert not os.path.lexists(dirty.path) and not os.path.lexists(broken.path)
    assert "branch tinyscheduler/task-1" in out  # no commits of its own: deleted
    assert git(base / "repo", "branch", "--list", "tinyscheduler/*") == ""
    assert git(base / "repo", "worktree", "list").count("\n") == 0  # the repository alone
    assert record.all_records(s.task_log_dir) == []


def test_prune_older_than_leaves_recent_workspaces(base, capsys):
    s = settings(base)
    old, recent = directory(base, "1"), directory(base, "2")
    record.write(s.task_log_dir, record.Record(**{
        **old.__dict__, "updated_at": clock.to_iso(clock.now() - timedelta(days=10))}))
    code, out = cli(capsys, "workspace", "prune", "--older-than", "7")
    assert code == 0
    assert out.splitlines() == [f"task 1: removed {old.path}: removed",
                                "1 removed, 0 kept or skipped"]
    assert not os.path.lexists(old.path) and os.path.isdir(recent.path)
    assert [a.task_id for a in prune(s, older_than_days=7)] == []  # task 2 is a day old at most


def test_a_failing_before_remove_hook_is_reported_and_the_workspace_goes(base, capsys,
                                                                         monkeypatch):
    rec = directory(base, "3")
    monkeypatch.setenv(f"{PREFIX}HOOK_BEFORE_REMOVE", "sh -c 'echo cannot archive; exit 4'")
    code, out = cli(capsys, "workspace", "prune")
    assert code == 0
    assert f"task 3: removed {rec.path}: removed (hook before_remove exited 4; " \
           "last lines: cannot archive)" in out
    assert not os.path.lexists(rec.path)
