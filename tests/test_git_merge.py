"""Merging a task branch onto its target with real git repositories: compare-and-swap,
conflicts, checks, a target that moves meanwhile, rebase, revert, and kill -9."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_reconciler import alive, wait_for

from scheduler import faults
from scheduler.merge.git_merge import (
    CHECK_FAILED,
    CONFLICT,
    MERGED,
    NO_CHANGES,
    Check,
    Git,
    GitError,
    merge,
    revert,
)

AUTHOR = {"GIT_AUTHOR_NAME": "tinyscheduler", "GIT_AUTHOR_EMAIL": "ts@example.invalid"}
ROOT = Path(__file__).resolve().parent.parent


class Repo:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        self.git("init", "-q", "-b", "main")
        self.git("config", "user.name", "test")
        self.git("config", "user.email", "test@example.invalid")
        self.write("app.py", "def login():\n    return False\n")
        self.write("README.md", "hello\n")
        self.commit("init")

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=self.path, check=True, capture_output=True,
                              text=True).stdout.strip()

    def write(self, name: str, text: str) -> None:
        (self.path / name).parent.mkdir(parents=True, exist_ok=True)
        (self.path / name).write_text(text)

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-qm", message)
        return self.git("rev-parse", "HEAD")

    def branch(self, name: str, files: dict[str, str], start: str = "main") -> str:
        """A branch from ``start`` with one commit writing ``files``; main stays checked out."""
        self.git("checkout", "-q", "-b", name, start)
        for file, text in files.items():
            self.write(file, text)
        tip = self.commit(f"work on {name}")
        self.git("checkout", "-q", "main")
        return tip

    def rev(self, name: str = "main") -> str:
        return self.git("rev-parse", name)

    def show(self, rev: str, name: str) -> str:
        return self.git("show", f"{rev}:{name}")


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "repo")


def _merge(repo: Repo, branch: str, **kwargs) -> object:
    return merge(Git(repo.path), "main", branch, message=f"merge {branch}", author=AUTHOR,
                 scratch=repo.path.parent / "scratch", **kwargs)


def test_a_branch_is_merged_and_the_working_tree_is_untouched(repo):
    before = repo.rev()
    repo.branch("task-1", {"auth.py": "ok\n"})
    files_before = {p.name: p.read_text() for p in repo.path.iterdir() if p.is_file()}
    outcome = _merge(repo, "task-1")
    assert outcome.outcome == MERGED and outcome.target_before == before
    assert repo.rev() == outcome.commit != before
    assert repo.git("rev-list", "--parents", "-n", "1", "main").split()[1:] == \
        [before, repo.rev("task-1")]
    assert outcome.changed_files == ("auth.py",)
    assert repo.show("main", "auth.py") == "ok"
    assert {p.name: p.read_text() for p in repo.path.iterdir() if p.is_file()} == files_before
    assert not list((repo.path.parent / "scratch").glob("merge-*"))


def test_merging_again_changes_nothing(repo):
    repo.branch("task-1", {"auth.py": "ok\n"})
    first = _merge(repo, "task-1")
    again = _merge(repo, "task-1")
    assert again.outcome == MERGED and again.already and again.commit == first.commit
    assert repo.git("rev-list", "--count", "main") == "3"


def test_a_merge_redone_after_later_merges_names_its_own_merge_commit(repo):
    repo.branch("task-1", {"auth.py": "ok\n"})
    repo.branch("task-2", {"billing.py": "ok\n"})
    first = _merge(repo, "task-1")
    _merge(repo, "task-2")
    again = _merge(repo, "task-1")  # as after a crash between the swap and the report
    assert again.already and again.commit == first.commit != repo.rev()


def test_a_branch_without_work_is_no_changes(repo):
    base = repo.rev()
    repo.git("branch", "task-1")
    repo.branch("later", {"x.txt": "x\n"})
    _merge(repo, "later")
    assert _merge(repo, "task-1", base=base).outcome == NO_CHANGES
    repo.git("branch", "task-2")
    assert _merge(repo, "task-2").outcome == NO_CHANGES


def test_a_conflict_names_the_files_and_leaves_the_target(repo):
    repo.branch("task-1", {"app.py": "def login():\n    return 1\n"})
    repo.branch("task-2", {"app.py": "def login():\n    return 2\n", "new.py": "x\n"})
    assert _merge(repo, "task-1").outcome == MERGED
    target = repo.rev()
    outcome = _merge(repo, "task-2")
    assert outcome.outcome == CONFLICT and outcome.conflicts == ("app.py",)
    assert repo.rev() == target
    assert (repo.path / "app.py").read_text() == "def login():\n    return False\n"


def test_a_failing_check_leaves_the_target_and_keeps_its_output(repo):
    before = repo.rev()
    repo.branch("task-1", {"auth.py": "broken\n"})
    check = Check([sys.executable, "-c", "import sys; print('2 tests failed'); sys.exit(1)"],
                  timeout_sec=30)
    outcome = _merge(repo, "task-1", check=check)
    assert outcome.outcome == CHECK_FAILED
    assert "2 tests failed" in outcome.check_tail
    assert repo.rev() == before


def test_the_check_runs_on_the_merged_result(repo):
    repo.branch("task-1", {"a.txt": "a\n"})
    repo.branch("task-2", {"b.txt": "b\n"})
    _merge(repo, "task-1")
    check = Check(["sh", "-c", "test -f a.txt && test -f b.txt"], timeout_sec=30)
    assert _merge(repo, "task-2", check=check).outcome == MERGED


def test_a_hung_check_is_stopped(repo):
    before = repo.rev()
    repo.branch("task-1", {"a.txt": "a\n"})
    check = Check([sys.executable, "-c", "import time; time.sleep(60)"], timeout_sec=0.5,
                  kill_grace_sec=0.5)
    outcome = _merge(repo, "task-1", check=check)
    assert outcome.outcome == CHECK_FAILED
    assert "ran longer than 0.5 s" in outcome.check_tail
    assert repo.rev() == before


def test_a_long_check_heartbeats_and_a_lost_lease_stops_it(repo, tmp_path):
    """The check calls ``tick`` (the wrapper's heartbeat) while it runs; the repository
    lock is held around the ref update and the temporary worktree's add and remove."""
    before = repo.rev()
    repo.branch("task-1", {"a.txt": "a\n"})
    marker = tmp_path / "check-started"
    check = Check([sys.executable, "-c", "import pathlib, sys, time; "
                   "pathlib.Path(sys.argv[1]).touch(); time.sleep(0.3)", str(marker)],
                  timeout_sec=30)
    ticks: list[float] = []
    locked: list[str] = []

    @contextmanager
    def lock():
        locked.append("held")
        yield

    git = Git(repo.path, lock=lock, tick=lambda: ticks.append(1) or True, tick_every=0.05)
    outcome = merge(git, "main", "task-1", message="m", author=AUTHOR,
                    scratch=tmp_path / "scratch", check=check)
    assert outcome.outcome == MERGED and len(ticks) >= 2
    assert len(locked) == 3  # worktree add, worktree remove, the compare-and-swap
    repo.branch("task-2", {"b.txt": "b\n"})
    lost = Git(repo.path, tick=lambda: False, tick_every=0.05)
    with pytest.raises(GitError, match="lease was lost"):
        merge(lost, "main", "task-2", message="m", author=AUTHOR,
              scratch=tmp_path / "scratch", check=Check(
                  [sys.executable, "-c", "import time; time.sleep(60)"], timeout_sec=60))
    assert repo.rev() == outcome.commit != before  # the second merge never landed


def test_git_steps_heartbeat_between_commands(repo, tmp_path):
    repo.branch("task-1", {"a.txt": "a\n"})
    ticks: list[int] = []
    git = Git(repo.path, tick=lambda: ticks.append(1) or True, tick_every=0)
    merge(git, "main", "task-1", message="m", author=AUTHOR, scratch=tmp_path / "s")
    assert len(ticks) >= 5  # one before each git command
    before = repo.rev()
    repo.branch("task-2", {"b.txt": "b\n"})
    with pytest.raises(GitError, match="the lease was lost during the merge"):
        merge(Git(repo.path, tick=lambda: False, tick_every=0), "main", "task-2", message="m",
              author=AUTHOR, scratch=tmp_path / "s")
    assert repo.rev() == before


def test_a_commit_added_to_the_target_meanwhile_is_never_lost(repo):
    repo.branch("task-1", {"a.txt": "a\n"})
    concurrent = repo.branch("someone-else", {"c.txt": "c\n"})
    # The check plays a person pushing to main while the merge is being checked.
    moved = repo.path.parent / "moved"
    script = (f"import os, subprocess\n"
              f"if not os.path.exists({str(moved)!r}):\n"
              f"    open({str(moved)!r}, 'w').close()\n"
              f"    subprocess.run(['git', '-C', {str(repo.path)!r}, 'update-ref', "
              f"'refs/heads/main', {concurrent!r}], check=True)\n")
    outcome = _merge(repo, "task-1", check=Check([sys.executable, "-c", script], 30))
    assert outcome.outcome == MERGED and outcome.races == 1
    assert outcome.target_before == concurrent
    assert repo.git("merge-base", "--is-ancestor", concurrent, "main") == ""
    assert repo.show("main", "a.txt") == "a" and repo.show("main", "c.txt") == "c"


def test_rebase_mode_replays_the_work_on_the_tip(repo):
    repo.branch("task-1", {"a.txt": "a\n"})
    repo.branch("task-2", {"b.txt": "b\n"})
    _merge(repo, "task-1", mode="rebase")
    outcome = _merge(repo, "task-2", mode="rebase")
    assert outcome.outcome == MERGED
    assert repo.git("rev-list", "--merges", "--count", "main") == "0"
    assert repo.git("log", "--format=%s", "main").splitlines() == [
        "work on task-2", "work on task-1", "init"]


def test_revert_undoes_a_merge_with_a_new_commit(repo):
    repo.branch("task-1", {"auth.py": "ok\n"})
    merged = _merge(repo, "task-1").commit
    outcome = revert(Git(repo.path), "main", merged, message="revert task 1", author=AUTHOR,
                     scratch=repo.path.parent / "scratch")
    assert outcome.outcome == MERGED and outcome.changed_files == ("auth.py",)
    assert repo.git("log", "-1", "--format=%s", "main") == "revert task 1"
    assert "auth.py" not in repo.git("ls-tree", "--name-only", "main").split()
    assert repo.git("merge-base", "--is-ancestor", merged, "main") == ""


def test_revert_of_a_rebased_task_undoes_all_its_commits(repo):
    repo.git("checkout", "-q", "-b", "task-1")
    for name in ("a.txt", "b.txt"):
        repo.write(name, "x\n")
        repo.commit(f"add {name}")
    repo.git("checkout", "-q", "main")
    repo.branch("other", {"c.txt": "c\n"})
    _merge(repo, "other")
    landed = _merge(repo, "task-1", mode="rebase")
    undone = revert(Git(repo.path), "main", landed.commit, message="revert task 1",
                    author=AUTHOR, scratch=repo.path.parent / "scratch",
                    since=landed.target_before)
    assert undone.outcome == MERGED and undone.changed_files == ("a.txt", "b.txt")
    assert repo.git("ls-tree", "--name-only", "main").split() == ["README.md", "app.py",
                                                                   "c.txt"]


def test_a_revert_that_conflicts_changes_nothing(repo):
    repo.branch("task-1", {"app.py": "def login():\n    return 1\n"})
    merged = _merge(repo, "task-1").commit
    repo.write("app.py", "def login():\n    return 3\n")
    later = repo.commit("later change")
    outcome = revert(Git(repo.path), "main", merged, message="revert", author=AUTHOR,
                     scratch=repo.path.parent / "scratch")
    assert outcome.outcome == CONFLICT and outcome.conflicts == ("app.py",)
    assert repo.rev() == later


def test_a_missing_branch_is_a_clear_error(repo):
    with pytest.raises(GitError, match="branch task-9 does not exist"):
        _merge(repo, "task-9")


def test_a_rebase_that_conflicts_names_the_files_and_leaves_the_target(repo):
    repo.branch("task-1", {"app.py": "def login():\n    return 1\n"})
    repo.branch("task-2", {"app.py": "def login():\n    return 2\n"})
    assert _merge(repo, "task-1", mode="rebase").outcome == MERGED
    target = repo.rev()
    outcome = _merge(repo, "task-2", mode="rebase")
    assert outcome.outcome == CONFLICT and outcome.conflicts == ("app.py",)
    assert repo.rev() == target and repo.rev("task-2") != target
    assert not list((repo.path.parent / "scratch").glob("merge-*"))  # the rebase aborted
    assert repo.git("worktree", "list").count("\n") == 0


def test_a_branch_whose_commits_cancel_out_has_no_changes(repo):
    repo.git("checkout", "-q", "-b", "task-1")
    repo.write("tmp.txt", "scratch\n")
    repo.commit("add a scratch file")
    (repo.path / "tmp.txt").unlink()
    repo.commit("remove it again")
    repo.git("checkout", "-q", "main")
    before = repo.rev()
    outcome = _merge(repo, "task-1")
    assert outcome.outcome == NO_CHANGES and repo.rev() == before


def test_a_check_that_cannot_start_fails_the_merge_naming_it(repo, tmp_path):
    before = repo.rev()
    repo.branch("task-1", {"a.txt": "a\n"})
    missing = tmp_path / "no-such-check"
    outcome = _merge(repo, "task-1", check=Check([str(missing)], timeout_sec=30))
    assert outcome.outcome == CHECK_FAILED and repo.rev() == before
    assert outcome.check_tail == f"the check could not start: {missing}: No such file or " \
                                 "directory"


MOVE_MAIN = r'''
import subprocess, sys
def git(*args):
    return subprocess.run(["git", "-C", sys.argv[1], *args], check=True, capture_output=True,
                          text=True).stdout.strip()
new = git("commit-tree", "main^{tree}", "-p", "main", "-m", "someone else's commit")
git("update-ref", "refs/heads/main", new)
'''


def test_a_target_that_never_stops_moving_is_given_up_on(repo, monkeypatch):
    import scheduler.merge.git_merge as git_merge

    monkeypatch.setattr(git_merge, "MAX_RACES", 3)
    repo.branch("task-1", {"a.txt": "a\n"})
    before = repo.rev()
    mover = Check([sys.executable, "-c", MOVE_MAIN, str(repo.path)], timeout_sec=30)
    with pytest.raises(GitError, match="target main kept moving: gave up after 3 attempts"):
        _merge(repo, "task-1", check=mover)
    assert repo.git("rev-list", "--count", f"{before}..main") == "3"  # only the movers'
    assert repo.git("log", "--format=%s", "main").splitlines()[:3] == \
        ["someone else's commit"] * 3


def test_revert_refuses_what_it_cannot_undo(repo):
    repo.branch("task-1", {"a.txt": "a\n"})
    merged = _merge(repo, "task-1").commit
    elsewhere = repo.branch("task-2", {"b.txt": "b\n"})
    before = repo.rev()

    def undo(commit: str, **kwargs) -> object:
        return revert(Git(repo.path), "main", commit, message="revert", author=AUTHOR,
                      scratch=repo.path.parent / "scratch", **kwargs)

    with pytest.raises(GitError, match=f"commit {elsewhere} is not on main"):
        undo(elsewhere)
    with pytest.raises(GitError, match="commit 0{40} does not exist"):
        undo("0" * 40)
    with pytest.raises(GitError, match=f"commit {elsewhere} is not an ancestor of "
                                       f"{repo.rev('task-1')}"):
        undo(repo.rev("task-1"), since=elsewhere)
    repo.git("branch", "-m", "main", "trunk")
    with pytest.raises(GitError, match="target main does not exist"):
        undo(merged)
    repo.git("branch", "-m", "trunk", "main")
    assert repo.rev() == before


def test_clean_scratch_removes_what_a_dead_merge_left_and_never_a_live_ones(repo, tmp_path):
    from scheduler.merge.git_merge import clean_scratch
    from scheduler.merge.landing import _in_use

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    gone = subprocess.Popen([sys.executable, "-S", "-c", "pass"])
    gone.wait()
    dead = scratch / f"merge-{gone.pid}-0a0b0c0d"
    live = scratch / f"merge-{os.getpid()}-01020304"
    odd = scratch / "merge-notapid"
    for path in (dead, live, odd):
        path.mkdir()
        (path / "file.txt").write_text("x\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    link = scratch / f"merge-{gone.pid}-linked"
    link.symlink_to(outside)
    other = scratch / "notes.txt"
    other.write_text("not a merge\n")

    clean_scratch(Git(repo.path), scratch, _in_use)
    assert sorted(p.name for p in scratch.iterdir()) == [live.name, "notes.txt"]
    assert outside.is_dir()  # the link went, not what it points at


KILL = r'''
import sys
from pathlib import Path
from scheduler.merge.git_merge import Git, merge
repo = Path(sys.argv[1])
merge(Git(repo), "main", sys.argv[2], message="merge it",
      author={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x"}, scratch=repo.parent / "s",
      check=None)
'''


@pytest.mark.processes
@pytest.mark.parametrize("point", ["merge-before-check", "merge-before-cas",
                                   "merge-after-cas"])
def test_kill_9_at_each_merge_point_leaves_the_target_whole(repo, point):
    before = repo.rev()
    repo.branch("task-1", {"a.txt": "a\n"})
    env = {**os.environ, faults.CRASH_AT_VARIABLE: point, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILL, str(repo.path), "task-1"], env=env,
                          capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    after_crash = repo.rev()
    assert after_crash in (before, repo.git("rev-parse", "main")), "old or new, nothing else"
    if point == "merge-after-cas":
        assert after_crash != before
    else:
        assert after_crash == before
    outcome = _merge(repo, "task-1")  # the next attempt finishes or redoes it
    assert outcome.outcome == MERGED
    assert outcome.already == (point == "merge-after-cas")
    assert repo.git("rev-list", "--merges", "--count", "main") == "1", "merged exactly once"


HUNG = r'''
import sys
from pathlib import Path
from scheduler.merge.git_merge import Check, Git, merge
repo, pid_file = Path(sys.argv[1]), sys.argv[2]
check = Check([sys.executable, "-c", "import os, sys, time; "
               "open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)", pid_file],
              timeout_sec=300)
merge(Git(repo), "main", "task-1", message="m",
      author={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x"}, scratch=repo.parent / "s",
      check=check)
'''


@pytest.mark.processes
def test_a_check_dies_with_the_process_that_runs_it(repo, tmp_path):
    """A killed wrapper leaves no check running unbounded (nobody would stop it)."""
    before = repo.rev()
    repo.branch("task-1", {"a.txt": "a\n"})
    pid_file = tmp_path / "check.pid"
    merger = subprocess.Popen([sys.executable, "-c", HUNG, str(repo.path), str(pid_file)],
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text(), 30, "the check to start")
        check_pid = int(pid_file.read_text())
        merger.kill()
        merger.wait(timeout=30)
        wait_for(lambda: not alive(check_pid), 30, "the check to be stopped")
    finally:
        merger.kill()
        merger.wait(timeout=30)
    assert repo.rev() == before



def test_landing_onto_a_missing_target_is_an_error_that_keeps_the_workspace(repo, tmp_path):
    from scheduler.config.settings import load_settings
    from scheduler.merge import landing
    from scheduler.workspace.base import Context, Workspace

    settings = load_settings(environ={"TINYSCHEDULER_WORKSPACE_MODE": "worktree",
                                      "TINYSCHEDULER_REPO_DIR": str(repo.path),
                                      "TINYSCHEDULER_TARGET_BRANCH": "release",
                                      "TINYSCHEDULER_AGENT_COMMAND": "true"}, cwd=tmp_path)
    path = settings.workspaces_dir / "task-4"
    repo.git("worktree", "add", "-q", "-b", "tinyscheduler/task-4", str(path), "main")
    (path / "login.py").write_text("ok\n")
    repo.git("-C", str(path), "add", "-A")
    repo.git("-C", str(path), "commit", "-qm", "login")
    ctx = Context(settings, "4", 1, title="add login")
    workspace = Workspace("4", "worktree", path, "tinyscheduler/task-4", repo.rev("main"))
    held: list = []
    landed = landing.land(ctx, workspace, held.append)
    assert landed.outcome == landing.ERROR and held == []
    assert landed.error == "branch release does not exist"
    verdict = landing.verdict(landed, settings, "4", 0.1)
    assert verdict.text == "merge into release failed: branch release does not exist"
    landing.tidy(ctx, workspace, landed)  # the merge never ended: nothing is removed
    assert (path / "login.py").exists() and repo.rev("tinyscheduler/task-4")
