"""``config --show/--json`` and ``validate-config [--fix]`` through the real CLI."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.cli import main
from scheduler.config.settings import OPTIONS, PREFIX

SECRET = "tok-5e1f-never-shown-9a2b"


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """A clean working directory and no TINYSCHEDULER_* variables in the environment."""
    for key in list(os.environ):
        if key.startswith(PREFIX):
            monkeypatch.delenv(key)
    monkeypatch.setenv(f"{PREFIX}GOOSE_BIN", "true")  # an agent program that exists
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_env(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{PREFIX}{k}={v}\n" for k, v in values.items()))
    return path


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}


def unmeasured_env() -> dict[str, str]:
    """clean_env() without coverage's start-up variables: measuring a process imports
    sqlite3, which the import probes look for."""
    return {k: v for k, v in clean_env().items() if not k.startswith("COVERAGE_PROCESS_")}


def console_script() -> str:
    return str(Path(sys.executable).with_name("tinyscheduler"))


# --- config --show / --json --------------------------------------------------------------


def test_show_prints_every_option_with_origin(cwd, capsys, monkeypatch):
    env_file = write_env(cwd / "a.env", {"HEARTBEAT_SEC": "7"})
    monkeypatch.setenv(f"{PREFIX}LOOP_INTERVAL_SEC", "9")
    code, out, err = run_cli(capsys, "--env-file", str(env_file), "--log-level", "debug",
                             "--base-path", str(cwd), "config", "--show")
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert set(lines) == {option.name for option in OPTIONS}
    assert lines["HEARTBEAT_SEC"].split()[1] == "7"
    assert lines["HEARTBEAT_SEC"].endswith(f"[env file {env_file}]")
    assert lines["LOOP_INTERVAL_SEC"].endswith("[environment]")
    assert lines["LOG_LEVEL"].split()[1] == "DEBUG"
    assert lines["LOG_LEVEL"].endswith("[flag]")
    assert lines["BASE_PATH"].endswith("[flag]")
    assert lines["MAX_RUNTIME_SEC"].endswith("[default]")


def test_config_without_flags_shows_too(cwd, capsys):
    code, out, _ = run_cli(capsys, "config")
    assert code == 0
    assert "HEARTBEAT_SEC" in out


def test_json_is_name_to_value_and_origin(cwd, capsys, monkeypatch):
    monkeypatch.setenv(f"{PREFIX}AGENT_LIMITS", "dispatcher=2,worker=3")
    monkeypatch.setenv(f"{PREFIX}DRY_RUN", "yes")
    code, out, err = run_cli(capsys, "config", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert list(data) == [option.name for option in OPTIONS]
    assert all(set(item) == {"value", "origin"} for item in data.values())
    assert data["AGENT_LIMITS"] == {"value": {"dispatcher": 2, "worker": 3},
                                    "origin": "environment"}
    assert data["DRY_RUN"] == {"value": True, "origin": "environment"}
    assert data["HEARTBEAT_SEC"] == {"value": 15, "origin": "default"}
    assert data["BASE_PATH"] == {"value": str(cwd), "origin": "default"}
    assert data["TASK_SOURCE"]["value"] == "local"


def test_dot_env_in_cwd_is_used(cwd, capsys):
    write_env(cwd / ".env", {"MAX_ATTEMPTS": "9"})
    code, out, _ = run_cli(capsys, "config", "--json")
    assert code == 0
    assert json.loads(out)["MAX_ATTEMPTS"] == {
        "value": 9, "origin": f"env file {cwd / '.env'}"}


@pytest.mark.parametrize("as_json", [False, True])
def test_token_from_env_file_is_masked(cwd, capsys, as_json):
    env_file = write_env(cwd / "secret.env", {"MCP_TOKEN": SECRET,
                                             "MCP_ENDPOINT": "http://tinytask:3000"})
    code, out, err = run_cli(capsys, "--env-file", str(env_file), "config",
                             "--json" if as_json else "--show")
    assert code == 0, err
    assert SECRET not in out and SECRET not in err
    assert "********" in out
    if as_json:
        assert json.loads(out)["MCP_TOKEN"]["origin"] == f"env file {env_file}"


def test_token_masked_even_when_config_is_invalid(cwd, capsys):
    env_file = write_env(cwd / "secret.env", {"MCP_TOKEN": SECRET, "HEARTBEAT_SEC": "x"})
    code, out, err = run_cli(capsys, "--env-file", str(env_file), "config", "--show")
    assert code == 2
    assert SECRET not in out + err


def test_bad_variable_exits_2_naming_it(cwd, capsys, monkeypatch):
    monkeypatch.setenv(f"{PREFIX}HEARTBEAT_SEC", "abc")
    code, out, err = run_cli(capsys, "config", "--show")
    assert code == 2
    assert f"{PREFIX}HEARTBEAT_SEC='abc'" in err
    assert "(from environment)" in err
    assert out == ""


def test_bad_variable_exits_2_in_a_subprocess(tmp_path):
    env = clean_env() | {f"{PREFIX}HEARTBEAT_SEC": "abc"}
    proc = subprocess.run([console_script(), "config", "--show"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"{PREFIX}HEARTBEAT_SEC" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("sub", [["config", "--show"], ["validate-config"]])
@pytest.mark.parametrize("form", ["separate", "equals"])
def test_env_file_after_subcommand_gets_a_hint(cwd, capsys, sub, form):
    env_file = write_env(cwd / "a.env", {})
    extra = (["--env-file", str(env_file)] if form == "separate"
             else [f"--env-file={env_file}"])
    code, out, err = run_cli(capsys, *sub, *extra)
    assert code == 2
    assert "put it before the subcommand" in err
    assert list(cwd.iterdir()) == [env_file]  # validate-config did not run


def test_missing_named_env_file_exits_2(cwd, capsys):
    code, _, err = run_cli(capsys, "--env-file", str(cwd / "nope.env"), "config", "--show")
    assert code == 2
    assert "nope.env" in err and "does not exist" in err


def test_tinytask_without_endpoint_exits_2(cwd, capsys, monkeypatch):
    monkeypatch.setenv(f"{PREFIX}TASK_SOURCE", "tinytask")
    code, _, err = run_cli(capsys, "config", "--show")
    assert code == 2
    assert f"{PREFIX}MCP_ENDPOINT" in err


# --- validate-config ---------------------------------------------------------------------


def tree(root: Path) -> dict[str, int]:
    """Every path under ``root`` with its mtime, to prove nothing changed."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


EXPECTED_DIRS = ("state", "state/running", "state/logs", "state/outbox", "recipes")


def test_fix_on_empty_base_path_creates_everything(cwd, capsys):
    code, out, err = run_cli(capsys, "validate-config", "--fix")
    assert code == 0, out + err
    for rel in EXPECTED_DIRS:
        path = cwd / rel
        assert path.is_dir(), rel
        assert mode(path) == 0o700, rel
        assert any(line.startswith("FIXED    created") and line.endswith(f"{path} (0700)")
                   for line in out.splitlines()), rel
    control = cwd / "agent-control.json"
    assert json.loads(control.read_text()) == [
        {"agentName": "dispatcher", "agentType": "orchestrator"},
        {"agentName": "architect", "agentType": "architect"},
    ]
    assert mode(control) == 0o600
    assert f"created agent control file {control}" in out
    fixed = [line for line in out.splitlines() if line.startswith("FIXED")]
    assert len(fixed) == len(EXPECTED_DIRS) + 1
    assert f"{len(fixed)} change(s)" in out


def test_second_fix_changes_nothing(cwd, capsys):
    assert run_cli(capsys, "validate-config", "--fix")[0] == 0
    before = tree(cwd)
    code, out, _ = run_cli(capsys, "validate-config", "--fix")
    assert code == 0
    assert "0 change(s)" in out
    assert "FIXED" not in out
    assert tree(cwd) == before


def test_fix_never_overwrites_a_control_file(cwd, capsys):
    control = cwd / "agent-control.json"
    body = '[{"agentName": "solo", "agentType": "dev"}]\n'
    control.write_text(body)
    code, out, _ = run_cli(capsys, "validate-config", "--fix")
    assert code == 0
    assert control.read_text() == body
    assert "1 agent(s)" in out


def test_nothing_is_created_without_fix(cwd, capsys):
    code, out, _ = run_cli(capsys, "validate-config")
    assert code == 0
    assert list(cwd.iterdir()) == []
    assert "'validate-config --fix' creates it" in out
    assert "legacy mode" in out
    assert "0 change(s)" in out


def test_missing_base_path_exits_2(cwd, capsys):
    missing = cwd / "nowhere"
    code, out, _ = run_cli(capsys, "--base-path", str(missing), "validate-config", "--fix")
    assert code == 2
    assert f"base path {missing} does not exist" in out
    assert not missing.exists()
    assert list(cwd.iterdir()) == []


def test_agent_table_is_printed(cwd, capsys, monkeypatch):
    (cwd / "agent-control.json").write_text(json.dumps([
        {"agentName": "dispatcher", "agentType": "orchestrator"},
        {"agentName": "worker", "agentType": "dev"},
    ]))
    monkeypatch.setenv(f"{PREFIX}AGENT_LIMITS", "worker=3")
    code, out, _ = run_cli(capsys, "validate-config")
    assert code == 0
    table = out.split("effective agents (registry):", 1)[1].splitlines()
    rows = [line.split() for line in table if line.strip()]
    assert ["AGENT", "QUEUE", "LIMIT"] in rows
    assert ["dispatcher", "orchestrator", "1"] in rows
    assert ["worker", "dev", "3"] in rows


def test_legacy_table_lists_limit_agents(cwd, capsys, monkeypatch):
    monkeypatch.setenv(f"{PREFIX}AGENT_LIMITS", '{"solo": 2}')
    code, out, _ = run_cli(capsys, "validate-config")
    assert code == 0
    assert "effective agents (legacy mode: assigned tasks only):" in out
    assert ["solo", "-", "2"] in [line.split() for line in out.splitlines()]


def test_limit_zero_is_a_warning(cwd, capsys, monkeypatch):
    monkeypatch.setenv(f"{PREFIX}AGENT_LIMITS", "architect=0")
    run_cli(capsys, "validate-config", "--fix")
    code, out, _ = run_cli(capsys, "validate-config")
    assert code == 0
    assert "WARNING  agent architect has limit 0" in out


def test_default_agent_limit_zero_warns_for_each_agent(cwd, capsys, monkeypatch):
    monkeypatch.setenv(f"{PREFIX}DEFAULT_AGENT_LIMIT", "0")
    run_cli(capsys, "validate-config", "--fix")
    code, out, _ = run_cli(capsys, "validate-config")
    assert code == 0
    assert "agent dispatcher has limit 0" in out
    assert "agent architect has limit 0" in out


def test_malformed_control_file_names_line_and_column(cwd, capsys):
    control = cwd / "agent-control.json"
    control.write_text('[\n  {"agentName": "a",\n   "agentType": }\n]\n')
    code, out, _ = run_cli(capsys, "validate-config", "--fix")
    assert code == 2
    assert f"agent control file {control}: invalid JSON at line 3 column 17" in out
    assert control.read_text().startswith('[\n  {"agentName": "a"')  # untouched


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"agentName": "a", "agentType": "q"},
         "the file holds an object with the keys agentName, agentType"),
        ("agents", 'the file holds the string "agents"'),
        (["dispatcher"], 'item 0 is the string "dispatcher"'),
        ([{"agentName": "a", "agentType": "q"}, 5], "item 1 is the number 5"),
        ([{"agentType": "q"}], "item 0 has the keys agentType; accepted: agentName and "
                               "agentType, optionally memoryMaxMb"),
        ([{"agentName": "a"}], "item 0 has the keys agentName;"),
        ([{"name": "a", "type": "q"}], "item 0 has the keys name, type; accepted: "
                                       "agentName and agentType, optionally"),
        ([{"agentName": "a", "agentType": "q", "limit": 2}],
         "item 0 has the keys agentName, agentType, limit"),
        ([{"agentName": "", "agentType": "q"}], "item 0: agentName is an empty string"),
        ([{"agentName": None, "agentType": "q"}], "item 0: agentName is null"),
        ([{"agentName": "a", "agentType": "q"}, {"agentName": "b", "agentType": "  "}],
         'item 1: agentType is the string "  "'),
        ([{"agentName": 7, "agentType": "q"}], "item 0: agentName is the number 7"),
        ([{"agentName": "bad name", "agentType": "q"}], "item 0: agentName 'bad name' is invalid"),
        ([{"agentName": "a", "agentType": "../etc"}], "item 0: agentType '../etc' is invalid"),
        ([{"agentName": "a", "agentType": "q"}, {"agentName": "a", "agentType": "r"}],
         "item 1: duplicate agentName 'a'"),
    ],
)
def test_invalid_control_file_exits_2_naming_the_item(cwd, capsys, body, detail):
    control = cwd / "agent-control.json"
    control.write_text(json.dumps(body))
    code, out, _ = run_cli(capsys, "validate-config")
    assert code == 2
    assert f"ERROR    agent control file {control}" in out
    assert detail in out
    assert "accepted" in out
    assert "effective agents" not in out


def test_unknown_and_obsolete_variables_warn(cwd, capsys, monkeypatch):
    monkeypatch.setenv(f"{PREFIX}HEARTBEATSEC", "5")
    env_file = write_env(cwd / "old.env", {"BIN_DIR": "/opt/bin"})
    code, out, _ = run_cli(capsys, "--env-file", str(env_file), "validate-config")
    assert code == 0
    assert f"unknown variable {PREFIX}HEARTBEATSEC" in out
    assert f"obsolete variable {PREFIX}BIN_DIR is ignored" in out


def test_validate_config_never_prints_the_token(cwd, capsys):
    env_file = write_env(cwd / "t.env", {"MCP_TOKEN": SECRET,
                                         "MCP_ENDPOINT": "http://tinytask:3000"})
    code, out, err = run_cli(capsys, "--env-file", str(env_file), "validate-config")
    assert code == 0
    assert SECRET not in out + err
    assert "task source tinytask at http://tinytask:3000" in out


# --- start-up cost: no heavy imports on the fast paths ------------------------------------

HEAVY = ("httpx", "sqlite3", "psutil")

PROBE = """
import sys
from scheduler.cli import main
code = main({argv!r})
print("HEAVY=" + ",".join(m for m in {heavy!r} if m in sys.modules))
print("CODE=" + str(code))
"""


@pytest.mark.parametrize("argv", [["--help"], ["config", "--show"], ["config", "--json"]])
def test_fast_paths_import_no_heavy_module(tmp_path, argv):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv, heavy=HEAVY)],
        cwd=tmp_path, env=unmeasured_env(), capture_output=True, text=True, timeout=60,
    )
    lines = dict(line.split("=", 1) for line in proc.stdout.splitlines()
                 if line.startswith(("HEAVY=", "CODE=")))
    assert lines.get("CODE") == "0", proc.stdout + proc.stderr
    assert lines["HEAVY"] == "", f"{argv} imported {lines['HEAVY']}"


# --- what validate-config cannot do, and says -------------------------------------------


def test_a_directory_under_a_regular_file_cannot_be_created_and_is_named(cwd, capsys,
                                                                         monkeypatch):
    (cwd / "plain-file").write_text("not a directory\n")
    logs = cwd / "plain-file" / "logs"
    monkeypatch.setenv(f"{PREFIX}LOG_DIR", str(logs))
    code, out, _ = run_cli(capsys, "validate-config")
    assert code == 2
    assert f"ERROR    log directory {logs} is missing and cannot be created (no writable " \
           "parent)" in out
    code, out, _ = run_cli(capsys, "validate-config", "--fix")
    assert code == 2
    assert f"ERROR    cannot create log directory {logs}: [Errno 20] Not a directory" in out
    assert (cwd / "plain-file").read_text() == "not a directory\n"


def test_fix_never_writes_through_a_dangling_link_at_the_control_file(cwd, capsys):
    elsewhere = cwd / "elsewhere.json"
    (cwd / "agent-control.json").symlink_to(elsewhere)
    code, out, _ = run_cli(capsys, "validate-config", "--fix")
    assert code == 2
    assert f"ERROR    cannot create agent control file {cwd / 'agent-control.json'}: " \
           "[Errno 17] File exists" in out
    assert not elsewhere.exists()


def test_a_preset_is_never_written_through_a_linked_env_file(cwd, capsys):
    target = cwd / "real.env"
    target.write_text("")
    link = cwd / "tinyscheduler.env"
    link.symlink_to(target)
    code, out, _ = run_cli(capsys, "--env-file", str(link), "validate-config", "--fix",
                           "--preset", "claude")
    assert code == 2
    assert f"ERROR    cannot write preset claude to {link}: [Errno 40] Too many levels of " \
           "symbolic links" in out
    assert target.read_text() == ""


def test_an_agent_command_starting_with_a_placeholder_cannot_be_checked(cwd, capsys,
                                                                      monkeypatch):
    monkeypatch.setenv(f"{PREFIX}AGENT_COMMAND", "{recipe} --task {task_id}")
    code, out, _ = run_cli(capsys, "validate-config")
    assert code == 0, out
    assert "WARNING  agent command starts with a placeholder ({recipe}); cannot check " \
           "that it exists" in out
