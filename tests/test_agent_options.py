"""Per-agent overrides in the agent control file: each replaces the global setting for
that agent only, and a bad one is a clean error naming the file, the agent and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scheduler.agents import options
from scheduler.config.settings import PREFIX, load_settings
from scheduler.errors import ConfigError


def settings_with(tmp_path: Path, entries: object):
    (tmp_path / "agent-control.json").write_text(json.dumps(entries))
    return load_settings(environ={PREFIX + "RATE_LIMIT_EXIT_CODES": "75",
                                  PREFIX + "AGENT_DAILY_COST_MAX_USD": "5"}, cwd=tmp_path)


def test_overrides_apply_to_their_agent_only(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, [
        {"agentName": "vaela", "agentType": "dev", "rateLimitPatterns": ["slow down"],
         "rateLimitExitCodes": [42, 43], "dailyCostMaxUsd": 12.5},
        {"agentName": "damien", "agentType": "dev", "dailyCostMaxUsd": 0},
        {"agentName": "plain", "agentType": "dev"},
    ])
    found = options.load(settings)
    assert sorted(found) == ["damien", "vaela"]  # only entries that override something
    vaela = found["vaela"]
    assert vaela.rate_limit_patterns.search("Please SLOW DOWN now")  # case-insensitive
    assert not vaela.rate_limit_patterns.search("rate limit exceeded")  # replaced, not added
    assert (vaela.rate_limit_exit_codes, vaela.daily_cost_max_usd) == ((42, 43), 12.5)
    damien = found["damien"]
    assert (damien.rate_limit_exit_codes, damien.daily_cost_max_usd) == ((75,), 0.0)
    assert options.for_agent(settings, "plain") == options.defaults(settings)
    assert options.defaults(settings).daily_cost_max_usd == 5.0


@pytest.mark.parametrize(("field", "value", "accepted"), [
    ("rateLimitPatterns", "slow", "an array of regular expressions"),
    ("rateLimitPatterns", [""], "an array of regular expressions"),
    ("rateLimitPatterns", ["(unclosed"], "is not a regular expression"),
    ("rateLimitExitCodes", [0], "an array of exit codes from 1 to 255"),
    ("rateLimitExitCodes", [256], "an array of exit codes from 1 to 255"),
    ("rateLimitExitCodes", [True], "an array of exit codes from 1 to 255"),
    ("rateLimitExitCodes", 42, "an array of exit codes from 1 to 255"),
    ("dailyCostMaxUsd", -1, "from 0 to 1000000"),
    ("dailyCostMaxUsd", "5", "from 0 to 1000000"),
    ("dailyCostMaxUsd", True, "from 0 to 1000000"),
])
def test_a_bad_override_is_a_clean_error(tmp_path: Path, field: str, value: object,
                                         accepted: str) -> None:
    settings = settings_with(tmp_path, [{"agentName": "vaela", "agentType": "dev",
                                         field: value}])
    with pytest.raises(ConfigError) as raised:
        options.load(settings)
    message = str(raised.value)
    assert message.startswith(f"agent control file {tmp_path / 'agent-control.json'}: "
                              "agent 'vaela': ")
    assert accepted in message and "\n" not in message


@pytest.mark.parametrize("content", ["[{", '{"agentName": "vaela"}', None])
def test_no_file_or_an_unusable_one_means_no_overrides(tmp_path: Path, content) -> None:
    if content is not None:
        (tmp_path / "agent-control.json").write_text(content)
    settings = load_settings(environ={}, cwd=tmp_path)
    assert options.load(settings) == {}  # the registry reports a bad file itself


def test_a_bad_override_is_a_pass_error_not_a_crash(tmp_path: Path) -> None:
    """In a pass, the bad entry is reported (exit 1) and dispatch goes on without holds."""
    from test_wrapper import AGENT, NoLaunch, Rig

    from scheduler.config.registry import Agent, Registry
    from scheduler.reconcile.reconciler import Reconciler

    rig = Rig(tmp_path)
    try:
        (tmp_path / "agent-control.json").write_text(json.dumps(
            [{"agentName": AGENT, "agentType": "dev", "dailyCostMaxUsd": -3}]))
        task = rig.add()
        launcher = NoLaunch()
        reconciler = Reconciler(rig.settings, Registry((Agent(AGENT, None, 1),), legacy=True),
                                source=rig.tasks, launcher=launcher)
        summary = reconciler.run_pass().summary
        assert any(e.startswith("agent control file ") and "dailyCostMaxUsd is -3" in e
                   for e in summary.errors), summary.errors
        assert launcher.launched == [task.id]  # planned all the same
    finally:
        rig.close()


def test_without_setproctitle_the_short_process_name_is_still_set(spawn_python) -> None:
    child = spawn_python(
        "import sys\n"
        "sys.modules['setproctitle'] = None  # as if it were not installed\n"
        "from wrapper.title import set_title, wrapper_title\n"
        "set_title(wrapper_title('12', 'vaela'))\n"
        "print(open('/proc/self/comm').read().strip(), flush=True)\n")
    assert child.stdout.readline().strip() == "tinyscheduler-w"
    assert child.wait(timeout=10) == 0


@pytest.mark.processes
def test_a_wrapper_with_a_bad_override_runs_on_the_global_settings(tmp_path: Path) -> None:
    from test_wrapper import AGENT, Rig

    rig = Rig(tmp_path)
    try:
        (tmp_path / "agent-control.json").write_text(json.dumps(
            [{"agentName": AGENT, "agentType": "dev", "rateLimitExitCodes": "often"}]))
        task = rig.attempt(rig.add(), "print", "done")
        assert task.status == "complete"
        log = rig.log_path(task.id).read_text()
        assert "agent options ignored: agent control file " in log
        assert "rateLimitExitCodes is 'often'" in log
    finally:
        rig.close()
