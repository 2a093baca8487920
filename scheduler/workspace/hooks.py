"""Lifecycle hooks: argv templates (no shell) run in the workspace, bounded in time, their
output appended to the attempt log.

``after_create`` (once, when a workspace is first made) and ``before_run`` (every
attempt) must succeed or the attempt ends ``launch_failed``; ``after_run`` and
``before_remove`` failures are logged and change nothing. ``after_merge`` (the merge
queue) runs after a task's branch landed on the target; its failure is reported and never
undoes the merge.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping

from scheduler.workspace.base import Context, Workspace
from scheduler.workspace.process import Finished, run_bounded

#: The hooks, in the order of a workspace's life.
NAMES = ("after_create", "before_run", "after_run", "after_merge", "before_remove")
#: Hooks whose failure ends the attempt.
REQUIRED = ("after_create", "before_run")
PLACEHOLDERS = ("task_id", "workspace", "branch", "attempt", "outcome", "commit", "target")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


def fill(template: str, values: Mapping[str, str]) -> list[str]:
    """Split like shell words, then fill placeholders inside each word (never splitting)."""
    return [_PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), word)
            for word in shlex.split(template)]


def run(ctx: Context, name: str, workspace: Workspace, outcome: str = "",
        extra: Mapping[str, str] | None = None) -> str | None:
    """Run hook ``name`` if configured; None when it succeeded or is not set, else why it
    failed (``hook before_run exited 3: <last lines>``)."""
    template = getattr(ctx.settings, f"hook_{name}")
    if not template:
        return None
    values = {"task_id": ctx.task_id, "workspace": str(workspace.path),
              "branch": workspace.branch or "", "attempt": str(ctx.attempt),
              "outcome": outcome, **(extra or {})}
    argv = fill(template, values)
    env = {k: v for k, v in os.environ.items() if k != "TINYSCHEDULER_MCP_TOKEN"}
    env.update({"TINYSCHEDULER_TASK_ID": ctx.task_id, "TINYSCHEDULER_ATTEMPT": str(ctx.attempt),
                "TINYSCHEDULER_WORKSPACE": str(workspace.path),
                "TINYSCHEDULER_HOOK": name, "TINYSCHEDULER_OUTCOME": outcome})
    if workspace.branch:
        env["TINYSCHEDULER_BRANCH"] = workspace.branch
    ctx.note(f"hook {name}: argv {argv}")
    timeout = ctx.settings.hook_timeout_sec
    done = run_bounded(argv, cwd=workspace.path, env=env, timeout=timeout,
                       grace=ctx.settings.kill_grace_sec, sink=ctx.log_write, tick=ctx.tick,
                       tick_every=ctx.tick_every, die_with_parent=True)
    ctx.note(f"hook {name} {done.describe(timeout)}")
    return None if done.ok else failure(name, done, timeout)


def failure(name: str, done: Finished, timeout: float) -> str:
    tail = done.tail(5)
    return f"hook {name} {done.describe(timeout)}" + (f"; last lines: {tail}" if tail else "")
