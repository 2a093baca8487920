"""Mistakes a new user makes that must not pass silently: tasks no agent can run, limits
and pauses naming unknown agents, an agent control file that cannot work."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import pytest

from scheduler.cli import main
from scheduler.config.registry import Agent, Registry
from scheduler.config.settings import PREFIX
from scheduler.reconcile.planner import plan
from scheduler.sources.base import Task


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """A clean directory with two agents on two queues and an agent program that exists."""
    for key in list(os.environ):
        if key.startswith(PREFIX):
            monkeypatch.delenv(key)
    monkeypatch.setenv(f"{PREFIX}AGENT_COMMAND", "true")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "agent-control.json").write_text(json.dumps([
        {"agentName": "vaela", "agentType": "dev"},
        {"agentName": "damien", "agentType": "review"},
    ]))
    return tmp_path


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


KNOWN = "known agents: damien, vaela; known queues: dev, review"


# --- tasks that no agent can run -------------------------------------------------------------


@pytest.mark.parametrize(("args", "reason"), [
    (("--queue", "devv"), "queue devv has no agents"),
    (("--agent", "vaelaa"), "assigned to vaelaa, which is not a known agent"),
    ((), "neither a queue nor an agent"),
])
def test_task_add_warns_when_no_agent_can_run_it(cwd, capsys, args, reason):
    code, out, err = cli(capsys, "task", "add", "Fix it", *args)
    assert code == 0 and out.startswith("added task 1")
    assert f"warning: no agent can run task 1: {reason} ({KNOWN})" in err


@pytest.mark.parametrize("args", [("--queue", "dev"), ("--agent", "damien")])
def test_task_add_is_quiet_when_an_agent_can_run_it(cwd, capsys, args):
    code, _, err = cli(capsys, "task", "add", "Fix it", *args)
    assert code == 0 and err == ""


def test_task_add_in_legacy_mode_warns_about_an_unassigned_task(cwd, capsys, monkeypatch):
    (cwd / "agent-control.json").unlink()
    monkeypatch.setenv(f"{PREFIX}AGENT_LIMITS", "solo=1")
    code, _, err = cli(capsys, "task", "add", "Fix it", "--queue", "dev")
    assert code == 0 and "legacy mode (no agent control file) runs assigned tasks only" in err
    code, _, err = cli(capsys, "task", "add", "Fix it", "--agent", "solo")
    assert code == 0 and err == ""


def test_dry_run_and_status_list_the_tasks_no_agent_can_run(cwd, capsys):
    for args in (("--queue", "devv"), ("--agent", "ghost"), ()):
        assert cli(capsys, "task", "add", "Lost", *args)[0] == 0
    code, out, _ = cli(capsys, "run", "--once", "--dry-run")
    assert code == 0
    assert "task 1: queue devv has no agents" in out
    assert "task 2: assigned to ghost, which is not a known agent" in out
    assert "task 3: neither a queue nor an agent" in out

    code, _, _ = cli(capsys, "run", "--once")  # nothing to spawn: only the summary is written
    assert code == 0
    code, out, _ = cli(capsys, "status")
    assert "NO AGENT CAN RUN 3 task(s)" in out
    assert "  task 1: queue devv has no agents" in out
    code, out, _ = cli(capsys, "status", "--json")
    assert sorted(row["task"] for row in json.loads(out)["last_pass"]["unrunnable"]) == \
        ["1", "2", "3"]


def test_the_planner_names_legacy_unassigned_tasks():
    registry = Registry((Agent("solo", None, 1),), legacy=True)
    result = plan([], [Task(id="1", title="t", queue="dev")], registry,
                  datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert result.spawns == ()
    assert result.skips[0].kind == "unknown-agent"
    assert "legacy mode" in result.skips[0].reason


# --- limits and pauses naming unknown agents ------------------------------------------------


def test_agent_limits_naming_an_unknown_agent_warns_with_the_known_names(cwd, capsys,
                                                                         monkeypatch):
    monkeypatch.setenv(f"{PREFIX}AGENT_LIMITS", "vaela=2,vaelaa=3")
    code, out, _ = cli(capsys, "validate-config")
    assert code == 0
    assert (f"WARNING  {PREFIX}AGENT_LIMITS names vaelaa, which is not an agent of the agent "
            f"control file, so its limit is ignored ({KNOWN})") in out
    code, _, err = cli(capsys, "run", "--once", "--dry-run")
    assert code == 0 and "AGENT_LIMITS names vaelaa" in err


@pytest.mark.parametrize(("args", "named"), [
    (("--agent", "vaelaa"), "agent 'vaelaa' is not a known agent"),
    (("--queue", "devv"), "queue 'devv' is not a known queue"),
])
def test_pause_of_an_unknown_name_is_refused_with_the_known_names(cwd, capsys, args, named):
    code, _, err = cli(capsys, "pause", *args)
    assert code == 2 and named in err and KNOWN in err
    assert not (cwd / "state" / "paused.json").exists()


def test_a_paused_name_that_left_the_registry_can_still_be_resumed(cwd, capsys):
    assert cli(capsys, "pause", "--agent", "damien")[0] == 0
    (cwd / "agent-control.json").write_text(json.dumps(
        [{"agentName": "vaela", "agentType": "dev"}]))
    code, out, _ = cli(capsys, "resume", "--agent", "damien")
    assert code == 0 and "not paused" in out


# --- the agent control file -----------------------------------------------------------------


def test_an_empty_agent_control_file_warns_that_nothing_can_run(cwd, capsys):
    (cwd / "agent-control.json").write_text("[]")
    code, out, _ = cli(capsys, "validate-config")
    assert code == 0
    assert "WARNING  the agent control file lists no agents: no task can ever run" in out


def test_agent_table_columns_line_up_with_short_names(cwd, capsys):
    (cwd / "agent-control.json").write_text(json.dumps(
        [{"agentName": "a", "agentType": "q"}, {"agentName": "bb", "agentType": "review"}]))
    code, out, _ = cli(capsys, "validate-config")
    assert code == 0
    table = out.split("effective agents (registry):\n", 1)[1].splitlines()[:3]
    assert table == ["  AGENT  QUEUE   LIMIT",
                     "  a      q       1",
                     "  bb     review  1"]


def test_the_pass_summary_names_at_most_20_unrunnable_tasks(cwd, capsys):
    for number in range(25):
        assert cli(capsys, "task", "add", f"lost {number}", "--queue", "nowhere")[0] == 0
    assert cli(capsys, "run", "--once")[0] == 0
    code, out, _ = cli(capsys, "status")
    assert "NO AGENT CAN RUN 25 task(s), the first 20 shown" in out
    assert out.count("queue nowhere has no agents") == 20


@pytest.mark.processes
def test_an_agent_that_could_not_start_makes_the_next_pass_fail(tmp_path):
    """A wrapper finds the recipe missing after the pass that spawned it has ended: the
    next pass says so and exits 1, and status is unhealthy, instead of all being well
    while the task burns its attempts."""
    import shlex
    import sys

    from test_reconciler import Scheduler, kill_leftovers, wait_for

    s = Scheduler(tmp_path, {"vaela": "dev"}, {"vaela": 1}, MAX_ATTEMPTS=5,
                  AGENT_COMMAND=f"{shlex.quote(sys.executable)} -c pass {{recipe_path}}")
    try:
        task_id = s.add("needs a recipe", "--queue", "dev")
        s.run_once()
        failed = wait_for(lambda: s.tasks()[task_id].last_error,
                          what="the launch failure to be recorded")
        assert failed.startswith("attempt 1 launch_failed")

        second = s.run_once(expect=1)
        assert f"task {task_id}: its agent could not start: recipe 'vaela.yaml' not found" \
            in second.stderr
        status = s.cli("status")
        assert status.returncode == 1 and "its agent could not start" in status.stdout
    finally:
        kill_leftovers(tmp_path)
