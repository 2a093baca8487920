"""What ``validate-config`` checks for workspaces and the sandbox: (level, message) pairs,
level ``ok``, ``warning`` or ``error``."""

from __future__ import annotations

import shutil

from scheduler.workspace import disk, sandbox
from scheduler.workspace import gitcmd as git


def check(settings) -> list[tuple[str, str]]:
    found = []
    if settings.workspace_mode == "worktree":
        found += _check_worktree(settings)
    elif settings.workspace_mode == "directory":
        found.append(("ok", f"workspace mode directory in {settings.workspaces_dir}"))
    if settings.workspace_mode != "none":
        low = disk.shortage(settings.workspaces_dir, settings.min_free_disk_mb)
        if low:
            found.append(("warning", f"low disk: {low}; tasks will be skipped until space is "
                                     "freed (or lower TINYSCHEDULER_MIN_FREE_DISK_MB)"))
    if settings.sandbox == "bwrap":
        problem = sandbox.check()
        found.append(("error", problem) if problem else
                     ("ok", f"sandbox bwrap ({sandbox.find()}) can create its namespaces"))
    return found


def _check_worktree(settings) -> list[tuple[str, str]]:
    if shutil.which("git") is None:
        return [("error", "WORKSPACE_MODE=worktree but git is not on PATH; install git "
                          "(Debian/Ubuntu: apt-get install git)")]
    repo = settings.repo_dir
    done = git.run(repo, "rev-parse", "--git-dir", check=False, timeout=10)
    if not done.ok:
        return [("error", f"TINYSCHEDULER_REPO_DIR={repo} is not a git repository: "
                          f"{done.tail(1) or done.describe(10)}")]
    if git.rev(repo, f"refs/heads/{settings.target_branch}") is None:
        return [("error", f"TINYSCHEDULER_TARGET_BRANCH={settings.target_branch} is not a "
                          f"branch of {repo}; set it to an existing branch")]
    found = [("ok", f"workspace mode worktree: {repo}, branch {settings.target_branch}, "
                    f"workspaces in {settings.workspaces_dir}")]
    if settings.merge != "off":
        checked_out = git.run(repo, "symbolic-ref", "--quiet", "HEAD", check=False, timeout=10)
        head = checked_out.output.decode(errors="replace").strip()
        if checked_out.ok and head == f"refs/heads/{settings.target_branch}":
            found.append(("warning", f"MERGE={settings.merge} moves TARGET_BRANCH="
                          f"{settings.target_branch}, which is checked out in REPO_DIR {repo}: "
                          "its files stay as they are, so `git status` there will show the "
                          "merged work as staged differences; use a target branch that is not "
                          "checked out in REPO_DIR (e.g. TINYSCHEDULER_TARGET_BRANCH="
                          "integration)"))
        else:
            found.append(("ok", f"merge queue: {settings.merge} into {settings.target_branch}"
                          + (f", checked by {settings.merge_check_command}"
                             if settings.merge_check_command else ", no check")))
    return found
