"""Every whole-number setting has one explicit range: enforced at load (exit 2), printed
by the docs generator, shared with the lease decoder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.bounds import BACKOFF_MAX_SEC as MAX_RETRY_DELAY_SEC
from scheduler.config.settings import (
    HEARTBEAT_SEC_BOUNDS,
    OPTIONS,
    PREFIX,
    STALE_MULTIPLIER_BOUNDS,
    load_settings,
)
from scheduler.errors import ConfigError
from scheduler.sources.base import RetryPolicy
from scheduler.state.leases import Lease, LeaseDecodeError
from tests.test_leases import make_lease

ROOT = Path(__file__).resolve().parent.parent
WHOLE = [option for option in OPTIONS if option.bounds is not None
         and option.name != "AGENT_LIMITS"]


def load(tmp_path: Path, **env: str):
    return load_settings(environ={PREFIX + k: v for k, v in env.items()}, cwd=tmp_path)


def test_every_whole_number_setting_has_bounds_and_a_default_inside_them():
    names = {option.name for option in WHOLE}
    assert {"HEARTBEAT_SEC", "STALE_MULTIPLIER", "MAX_RUNTIME_SEC", "RETRY_BACKOFF_SEC",
            "LOOP_INTERVAL_SEC", "ATTEMPT_LOG_MAX_MB", "LOG_RETENTION_DAYS",
            "METRICS_MAX_MB"} <= names
    for option in WHOLE:
        assert option.bounds.low <= int(option.default) <= option.bounds.high, option.name


@pytest.mark.parametrize("option", WHOLE, ids=lambda o: o.name)
def test_both_ends_load_and_one_past_either_end_is_refused(tmp_path, option):
    low, high = option.bounds.low, option.bounds.high
    for value in (low, high):
        assert getattr(load(tmp_path, **{option.name: str(value)}), option.attr) == value
    for value in (low - 1, high + 1):
        with pytest.raises(ConfigError) as caught:
            load(tmp_path, **{option.name: str(value)})
        assert f"from {low} to {high}" in str(caught.value)
        assert option.env in str(caught.value)


@pytest.mark.parametrize("text", ["1e20", "100000000000000000000", "1_000", "٣", "0x10",
                                  "inf", "nan", " 5 5", "9" * 5000])
def test_huge_or_odd_numbers_are_refused_with_a_message(tmp_path, text):
    for name in ("MAX_RUNTIME_SEC", "RETRY_BACKOFF_SEC"):
        with pytest.raises(ConfigError) as caught:
            load(tmp_path, **{name: text})
        message = str(caught.value)
        assert f"{PREFIX}{name}=" in message and "accepted: a whole number from" in message
        assert len(message) < 300  # the value is clipped, never pasted whole


@pytest.mark.parametrize(("text", "detail"), [
    ('{"a": 1e999}', "limit for 'a' is inf"),
    ('{"a": 1e20}', "limit for 'a'"),
    ('{"a": 100000000000000000000}', "limit for 'a'"),
    ('{"a": 10001}', "limit for 'a'"),
    ("a=10001", "limit for 'a'"),
    ("a=1e3", "limit for 'a'"),
    ("[" * 30_000 + "]" * 30_000, "nested too deeply"),
    ('{"a": ' + "[" * 30_000 + "]" * 30_000 + "}", "nested too deeply"),
])
def test_agent_limits_out_of_range_or_nested(tmp_path, text, detail):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, AGENT_LIMITS=text)
    assert detail in str(caught.value)
    assert "from 0 to 10000" in str(caught.value)


def test_an_overlong_value_is_refused(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, AGENT_LIMITS=",".join(f"a{i}=1" for i in range(20_000)))
    assert "at most 65536" in str(caught.value)


def test_non_ascii_token_is_refused_without_printing_it(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, MCP_TOKEN="tökén")
    assert "tökén" not in str(caught.value) and "MCP_TOKEN=********" in str(caught.value)
    assert load(tmp_path, MCP_TOKEN="abc-DEF_123.~+/=").mcp_token == "abc-DEF_123.~+/="


@pytest.mark.parametrize("env", [
    {"MAX_RUNTIME_SEC": "1e20"}, {"RETRY_BACKOFF_SEC": "100000000000000000000"},
    {"AGENT_LIMITS": '{"a":1e999}'}, {"AGENT_LIMITS": "[" * 30_000 + "]" * 30_000},
    {"HEARTBEAT_SEC": "2000000"}, {"STALE_MULTIPLIER": "5000"}, {"MCP_TOKEN": "tökén"},
])
def test_the_command_line_exits_2_with_one_line(tmp_path, env):
    environ = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    environ.update({PREFIX + k: v for k, v in env.items()})
    done = subprocess.run([sys.executable, "-c", "import sys; from scheduler.cli.main import main;"
                           " sys.exit(main())", "config", "--show"],
                          cwd=tmp_path, env=environ, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_lease_decoder_accepts_exactly_what_the_settings_accept():
    for name, bounds in (("heartbeat_sec", HEARTBEAT_SEC_BOUNDS),
                         ("stale_multiplier", STALE_MULTIPLIER_BOUNDS)):
        for value in (bounds.low, bounds.high):
            data = make_lease().to_json()
            data[name] = value
            assert getattr(Lease.from_json(data), name) == value
        for value in (bounds.low - 1, bounds.high + 1):
            data = make_lease().to_json()
            data[name] = value
            with pytest.raises(LeaseDecodeError):
                Lease.from_json(data)


def test_the_retry_delay_is_capped_whatever_the_attempt():
    policy = RetryPolicy(max_attempts=1000, backoff_sec=86_400)
    assert policy.delay_after(1) == 86_400
    assert policy.delay_after(10**9) == MAX_RETRY_DELAY_SEC
    assert RetryPolicy(3, 60).delay_after(2) == 120


def test_the_docs_print_every_range():
    text = (ROOT / "docs" / "configuration.md").read_text()
    example = (ROOT / ".env.example").read_text()
    for option in WHOLE:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{option.env}`"))
        assert f"| {option.bounds.low}-{option.bounds.high} |" in row
        assert f"range {option.bounds.low}-{option.bounds.high}" in example.replace("\n#   ", " ")


def test_a_deeply_nested_agent_control_file_is_a_config_error(tmp_path):
    from scheduler.config.registry import parse_control_file

    path = tmp_path / "agent-control.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_control_file(path)


@pytest.mark.parametrize(("env", "says"), [
    ({"MAX_TASK_COST_USD": "ten"}, "MAX_TASK_COST_USD"),
    ({"AGENT_DAILY_COST_MAX_USD": "nan"}, "an amount in US dollars from 0 to 1000000"),
    ({"RATE_LIMIT_EXIT_CODES": "75,,x"}, "'x' is not an exit code"),
    ({"RATE_LIMIT_EXIT_CODES": "256"}, "'256' is not an exit code"),
    ({"RATE_LIMIT_PATTERNS": "[rate"}, "invalid JSON"),
    ({"RATE_LIMIT_PATTERNS": '["ok", "(unclosed"]'}, "'(unclosed' is not a regular expression"),
    ({"DATABASE_URL": "postgresql://u@/db", "DATABASE_URL_FILE": "/etc/url"},
     "DATABASE_URL and TINYSCHEDULER_DATABASE_URL_FILE are both set"),
    ({"WORKSPACE_MODE": "directory", "WORKSPACE_TEMPLATE": "no-such-template"},
     "is not a directory; accepted: an existing directory"),
])
def test_odd_values_of_the_newer_settings_are_refused_naming_what_is_accepted(
        tmp_path, env, says):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, **env)
    message = str(caught.value)
    assert says in message
    assert "\n" not in message


def test_empty_items_of_a_list_of_exit_codes_are_skipped(tmp_path):
    assert load(tmp_path, RATE_LIMIT_EXIT_CODES=" 75, ,124,").rate_limit_exit_codes == (75, 124)


def test_an_env_file_that_cannot_be_decoded_is_a_config_error(tmp_path):
    env_file = tmp_path / "bad.env"
    env_file.write_bytes(b"TINYSCHEDULER_HOSTNAME=\xff\xfe\n")
    with pytest.raises(ConfigError, match=f"env file {env_file} cannot be read"):
        load_settings(env_file=env_file, environ={}, cwd=tmp_path)


def test_a_repo_dir_with_a_detached_head_needs_a_target_branch(tmp_path):
    repo = tmp_path / "repo"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "first"], check=True)
    subprocess.run([*git, "checkout", "-q", "--detach"], check=True)
    with pytest.raises(ConfigError, match="has no branch checked out \\(HEAD is detached\\)"):
        load(tmp_path, WORKSPACE_MODE="worktree", REPO_DIR=str(repo),
             WORKSPACES_DIR=str(tmp_path / "ws"))
    assert load(tmp_path, WORKSPACE_MODE="worktree", REPO_DIR=str(repo),
                WORKSPACES_DIR=str(tmp_path / "ws"), TARGET_BRANCH="main").target_branch == "main"
