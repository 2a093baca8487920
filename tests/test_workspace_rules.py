"""The pure rules of scheduler.workspace: naming a limit, the bwrap argv, hook templates,
branch names, per-agent limits from the agent-control file."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from scheduler.config.registry import Resources, load_registry
from scheduler.config.settings import load_settings
from scheduler.errors import ConfigError
from scheduler.workspace import hooks, limits, sandbox
from scheduler.workspace.base import WorkspaceError
from scheduler.workspace.worktree import branch_for

CPU, MEM = limits.Limits(cpu_sec=60), limits.Limits(memory_mb=512)


@pytest.mark.parametrize(("given", "how", "expected"), [
    (CPU, dict(signum=signal.SIGXCPU), "CPU limit 60 s"),
    (CPU, dict(signum=signal.SIGKILL, cpu_sec=61.0), "CPU limit 60 s"),
    (CPU, dict(signum=signal.SIGKILL, cpu_sec=3.0), None),  # killed by someone else
    (CPU, dict(exit_code=128 + signal.SIGXCPU, sandboxed=True), "CPU limit 60 s"),
    (CPU, dict(exit_code=128 + signal.SIGXCPU), None),  # a plain exit code, no bwrap
    (MEM, dict(exit_code=1, tail="Traceback...\nMemoryError"), "memory limit 512 MB"),
    (MEM, dict(signum=signal.SIGABRT, tail="FATAL ERROR: heap out of memory"),
     "memory limit 512 MB"),
    (MEM, dict(exit_code=1, tail="AssertionError"), None),
    (limits.Limits(file_mb=5), dict(signum=signal.SIGXFSZ), "file size limit 5 MB"),
    (limits.Limits(file_mb=5), dict(exit_code=1, tail="OSError: [Errno 27] File too large"),
     "file size limit 5 MB"),
    (limits.Limits(open_files=64), dict(exit_code=1, tail="OSError: Too many open files"),
     "open files limit 64"),
    (limits.NONE, dict(signum=signal.SIGXCPU), None),
])
def test_the_limit_that_stopped_an_agent_is_named(given, how, expected):
    args = {"exit_code": None, "signum": None, "cpu_sec": None, "tail": "", **how}
    assert limits.name_the_limit(given, **args) == expected


def test_an_agents_own_limits_override_the_global_ones(tmp_path: Path):
    settings = load_settings(environ={"TINYSCHEDULER_AGENT_CPU_MAX_SEC": "100",
                                      "TINYSCHEDULER_AGENT_MEMORY_MAX_MB": "2048"}, cwd=tmp_path)
    mine = limits.effective(settings, Resources(cpu_sec=0, open_files=64))
    assert mine == limits.Limits(memory_mb=2048, cpu_sec=0, file_mb=0, open_files=64)
    triples = dict((which, (soft, hard)) for which, soft, hard in limits.rlimits(mine))
    import resource

    assert triples == {resource.RLIMIT_AS: (2048 << 20, 2048 << 20),
                       resource.RLIMIT_NOFILE: (64, 64)}


@pytest.mark.parametrize("bad", ["4096", -1, 1.5, True, None, 2**41])
def test_resource_fields_are_validated_like_every_other_field(tmp_path: Path, bad):
    control = tmp_path / "agents.json"
    control.write_text(json.dumps([{"agentName": "a", "agentType": "q", "cpuMaxSec": bad}]))
    with pytest.raises(ConfigError, match=r"item 0: cpuMaxSec is .*accepted: a whole number"):
        load_registry(control, {}, 1)


def test_resource_fields_reach_the_registry(tmp_path: Path):
    control = tmp_path / "agents.json"
    control.write_text(json.dumps([{"agentName": "a", "agentType": "q", "memoryMaxMb": 4096,
                                    "fileMaxMb": 0}]))
    [agent] = load_registry(control, {}, 1).agents
    assert agent.resources == Resources(memory_mb=4096, file_mb=0)


def test_the_private_tmp_comes_before_every_bind():
    argv = sandbox.wrap(["agent", "--x"], program="/usr/bin/bwrap", workspace=Path("/tmp/ws"),
                        cwd=Path("/tmp/ws"), writable=[Path("/cache")],
                        readable=[Path("/tmp/base")])
    tmpfs = argv.index("--tmpfs")
    binds = [i for i, word in enumerate(argv) if word.startswith(("--bind", "--ro-bind-try"))]
    assert argv[:5] == ["/usr/bin/bwrap", "--ro-bind", "/", "/", "--dev"]
    assert all(i > tmpfs for i in binds)
    assert argv[-5:] == ["--chdir", "/tmp/ws", "--", "agent", "--x"]
    assert "--unshare-net" not in argv and "--die-with-parent" not in argv


def test_hook_templates_fill_placeholders_inside_words():
    argv = hooks.fill("cp '{workspace}/../a b' {workspace}/.env --tag={task_id}:{outcome} {x}",
                      {"workspace": "/w s", "task_id": "7", "outcome": "failed"})
    assert argv == ["cp", "/w s/../a b", "/w s/.env", "--tag=7:failed", "{x}"]


@pytest.mark.parametrize("task_id", ["a..b", "x.lock", "trailing."])
def test_ids_git_cannot_use_as_a_branch_are_refused(task_id):
    with pytest.raises(WorkspaceError, match="cannot name a git branch"):
        branch_for(task_id)


def test_branch_names_follow_the_task_id():
    assert branch_for("42") == "tinyscheduler/task-42"
    assert branch_for("fix-login_2.v1") == "tinyscheduler/task-fix-login_2.v1"


def test_an_agent_installed_under_tmp_stays_visible_in_the_private_tmp(tmp_path: Path) -> None:
    from scheduler.workspace import sandbox

    program = tmp_path / "venv" / "bin" / "python"
    program.parent.mkdir(parents=True)
    program.write_text("")
    script = tmp_path / "agent.py"
    script.write_text("")
    words = [str(program), "-S", str(script), "--title=x", "/tmp", "/tmp/loose-file"]
    assert str(tmp_path).startswith("/tmp/")
    assert sandbox.hidden_by_private_tmp(words) == [program.parent, tmp_path]
    assert sandbox.hidden_by_private_tmp(["/usr/bin/true", "/etc/hostname"]) == []
