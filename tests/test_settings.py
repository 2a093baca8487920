"""Layered settings: precedence, origins, validation errors, path resolution, env files."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from scheduler.config import settings as settings_mod
from scheduler.config.settings import (
    DEFAULT_AGENT_COMMAND,
    OPTIONS,
    OPTIONS_BY_NAME,
    PREFIX,
    Option,
    load_settings,
    parse_agent_limits,
)
from scheduler.errors import ConfigError
from scheduler.state.leases import Lease, encode


def write_env(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{PREFIX}{k}={v}\n" for k, v in values.items()))
    return path


def load(tmp_path: Path, *, file=None, env=None, flags=None, env_file=None, cwd=None):
    """Load with every layer explicit; ``file`` writes an env file first."""
    if file is not None:
        env_file = write_env(tmp_path / "layer.env", file)
    return load_settings(
        env_file=env_file,
        environ={f"{PREFIX}{k}": v for k, v in (env or {}).items()},
        flags=flags,
        cwd=cwd or tmp_path,
    )


def error_of(tmp_path: Path, **layers) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, **layers)
    return str(info.value)


# --- precedence matrix -------------------------------------------------------------------

LAYERS = ("file", "env", "flag")
COMBINATIONS = [
    combo for n in range(len(LAYERS) + 1) for combo in itertools.combinations(LAYERS, n)
]


def _origin(layer: str | None, env_file: Path) -> str:
    return {
        None: "default",
        "file": f"env file {env_file}",
        "env": "environment",
        "flag": "flag",
    }[layer]


# name -> (text per layer, expected value per layer or None for the default)
MATRIX = {
    "HEARTBEAT_SEC": ({"file": "11", "env": "12", "flag": "13"},
                      {None: 15, "file": 11, "env": 12, "flag": 13}),
    "LOG_LEVEL": ({"file": "debug", "env": "Warning", "flag": "ERROR"},
                  {None: "INFO", "file": "DEBUG", "env": "WARNING", "flag": "ERROR"}),
    "DRY_RUN": ({"file": "yes", "env": "0", "flag": True},
                {None: False, "file": True, "env": False, "flag": True}),
}


@pytest.mark.parametrize("combo", COMBINATIONS, ids=lambda c: "+".join(c) or "default")
@pytest.mark.parametrize("name", sorted(MATRIX))
def test_precedence_value_and_origin(tmp_path, name, combo):
    texts, expected = MATRIX[name]
    env_file = tmp_path / "layer.env"
    settings = load(
        tmp_path,
        file={name: texts["file"]} if "file" in combo else {},
        env={name: texts["env"]} if "env" in combo else {},
        flags={name: texts["flag"]} if "flag" in combo else {},
    )
    winner = combo[-1] if combo else None
    assert getattr(settings, name.lower()) == expected[winner]
    assert settings.origins[name] == _origin(winner, env_file)
    assert settings.resolved()[name].origin == _origin(winner, env_file)


@pytest.mark.parametrize("combo", COMBINATIONS, ids=lambda c: "+".join(c) or "default")
def test_precedence_base_path(tmp_path, combo):
    dirs = {layer: tmp_path / f"base-{layer}" for layer in LAYERS}
    env_file = tmp_path / "layer.env"
    settings = load(
        tmp_path,
        file={"BASE_PATH": str(dirs["file"])} if "file" in combo else {},
        env={"BASE_PATH": str(dirs["env"])} if "env" in combo else {},
        flags={"BASE_PATH": dirs["flag"]} if "flag" in combo else {},
    )
    winner = combo[-1] if combo else None
    expected = dirs[winner] if winner else tmp_path
    assert settings.base_path == expected
    assert settings.origins["BASE_PATH"] == _origin(winner, env_file)
    # every derived path follows the winning base path
    assert settings.state_dir == expected / "state"
    assert settings.work_dir == expected


@pytest.mark.parametrize("combo", COMBINATIONS, ids=lambda c: "+".join(c) or "default")
def test_precedence_agent_limits_flags_merge_per_agent(tmp_path, combo):
    env_file = tmp_path / "layer.env"
    settings = load(
        tmp_path,
        file={"AGENT_LIMITS": "a=1,b=1"} if "file" in combo else {},
        env={"AGENT_LIMITS": '{"b": 2, "c": 2}'} if "env" in combo else {},
        flags={"AGENT_LIMITS": {"c": 3, "d": 3}} if "flag" in combo else {},
    )
    expected: dict[str, int] = {}
    # file and environment are whole values: the higher one replaces the lower
    if "env" in combo:
        expected = {"b": 2, "c": 2}
    elif "file" in combo:
        expected = {"a": 1, "b": 1}
    if "flag" in combo:
        expected.update({"c": 3, "d": 3})
    assert dict(settings.agent_limits) == expected
    winner = combo[-1] if combo else None
    assert settings.origins["AGENT_LIMITS"] == _origin(winner, env_file)


def test_empty_value_in_a_higher_layer_counts_as_unset(tmp_path):
    settings = load(tmp_path, file={"HEARTBEAT_SEC": "7"}, env={"HEARTBEAT_SEC": "  "})
    assert settings.heartbeat_sec == 7
    assert settings.origins["HEARTBEAT_SEC"].startswith("env file ")


def test_every_option_has_a_default_and_default_origin(tmp_path):
    settings = load(tmp_path)
    resolved = settings.resolved()
    assert list(resolved) == [option.name for option in OPTIONS]
    assert all(item.origin == "default" for item in resolved.values())
    assert settings.agent_command == DEFAULT_AGENT_COMMAND
    assert settings.task_source == "local"
    assert settings.unknown_variables == ()
    assert settings.env_file is None


def test_every_default_parses(tmp_path):
    loaded = load(tmp_path)
    for option in OPTIONS:
        if option.default:
            expected = option.parse(option.default)
            if option.is_path:
                expected = tmp_path / expected
            assert getattr(loaded, option.attr) == expected, option.name
        else:
            assert option.default_note or option.name in {
                "AGENT_LIMITS", "MCP_ENDPOINT", "MCP_TOKEN", "DASHBOARD_TOKEN"}, option.name


def test_every_example_parses(tmp_path):
    for option in OPTIONS:
        assert option.example, option.name
        if option.name.endswith("_FILE") and not Path(option.example).exists():
            assert option.parse(option.example) == Path(option.example)  # read when used
            continue
        # a remote source or coordinator needs its address
        environ = {PREFIX + "MCP_ENDPOINT": "http://tinytask:3000",
                   PREFIX + "DATABASE_URL": "postgresql://db/tasks", option.env: option.example}
        parsed = option.parse(option.example)
        try:
            loaded = load_settings(environ=environ, cwd=tmp_path)
        except ConfigError as exc:  # the example needs another setting: the value itself is fine
            assert not str(exc).startswith(f"{option.env}={option.example!r}"), str(exc)
            assert parsed is not None, option.name
            continue
        value = getattr(loaded, option.attr)
        assert loaded.origins[option.name] == "environment", option.name
        if option.is_path and not parsed.is_absolute():
            parsed = loaded.base_path / parsed
        assert value == parsed, option.name


# --- validation errors -------------------------------------------------------------------


def assert_names(message: str, name: str, origin: str, accepted: str) -> None:
    assert f"{PREFIX}{name}" in message
    assert f"(from {origin})" in message
    assert "accepted" in message
    assert accepted in message


@pytest.mark.parametrize(
    ("name", "text", "minimum"),
    [
        ("HEARTBEAT_SEC", "abc", 1),
        ("HEARTBEAT_SEC", "1.5", 1),
        ("HEARTBEAT_SEC", "0", 1),
        ("LOOP_INTERVAL_SEC", "-5", 1),
        ("STALE_MULTIPLIER", "1", 2),
        ("IDLE_TIMEOUT_SEC", "-1", 0),
        ("MAX_ATTEMPTS", "0", 1),
        ("DEFAULT_AGENT_LIMIT", "one", 0),
        ("KILL_GRACE_SEC", "ten", 0),
    ],
)
def test_int_errors(tmp_path, name, text, minimum):
    message = error_of(tmp_path, env={name: text})
    assert_names(message, name, "environment", f"a whole number from {minimum} to")
    assert repr(text) in message


@pytest.mark.parametrize(("name", "text", "maximum"),
                         [("HEARTBEAT_SEC", "3601", 3600),
                          ("STALE_MULTIPLIER", "101", 100)])
def test_heartbeat_bounds_are_the_lease_decoder_s(tmp_path, name, text, maximum):
    """Above its bound the value is refused at load (the lease decoder would refuse every
    lease written with it); at the bound it loads, and a lease written with it decodes."""
    message = error_of(tmp_path, env={name: text})
    assert_names(message, name, "environment", f"from {2 if 'STALE' in name else 1} "
                                               f"to {maximum}")
    settings = load(tmp_path, env={name: str(maximum)})
    now = datetime.now(timezone.utc).replace(microsecond=0)
    lease = Lease(task_id="1", agent="a", state="running", spawn_token="t", started_at=now,
                  heartbeat=now, host="h", heartbeat_sec=settings.heartbeat_sec,
                  stale_multiplier=settings.stale_multiplier)
    assert Lease.from_json(json.loads(encode(lease))) == lease


def test_int_error_names_env_file_and_flag_origin(tmp_path):
    env_file = tmp_path / "layer.env"
    message = error_of(tmp_path, file={"MAX_RUNTIME_SEC": "soon"})
    assert_names(message, "MAX_RUNTIME_SEC", f"env file {env_file}", "from 1 to")
    message = error_of(tmp_path, flags={"HEARTBEAT_SEC": "0"})
    assert_names(message, "HEARTBEAT_SEC", "flag", "from 1 to")


def test_int_accepts_surrounding_spaces_and_minimum(tmp_path):
    settings = load(tmp_path, env={"HEARTBEAT_SEC": " 1 ", "IDLE_TIMEOUT_SEC": "0"})
    assert settings.heartbeat_sec == 1
    assert settings.idle_timeout_sec == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("true", True), ("TRUE", True), ("True", True), ("yes", True),
     ("YES", True), ("yEs", True), (" true ", True),
     ("0", False), ("false", False), ("FALSE", False), ("no", False), ("No", False)],
)
@pytest.mark.parametrize("name", ["DRY_RUN", "DISABLE_BLOCKING"])
def test_bool_accepts(tmp_path, name, text, expected):
    assert getattr(load(tmp_path, env={name: text}), name.lower()) is expected


@pytest.mark.parametrize("text", ["on", "off", "y", "n", "2", "-1", "enabled", "truee"])
@pytest.mark.parametrize("name", ["DRY_RUN", "DISABLE_BLOCKING"])
def test_bool_rejects(tmp_path, name, text):
    message = error_of(tmp_path, env={name: text})
    assert_names(message, name, "environment", "1/true/yes or 0/false/no")


@pytest.mark.parametrize(
    ("name", "text", "accepted"),
    [
        ("TASK_SOURCE", "sqlite", "local | tinytask"),
        ("TASK_SOURCE", "rest", "local | tinytask"),
        ("LOG_FORMAT", "xml", "text | json"),
        ("LOG_FORMAT", "jsonl", "text | json"),
        ("LOG_LEVEL", "verbose", "debug | info | warning | error"),
        ("LOG_LEVEL", "critical", "debug | info | warning | error"),
    ],
)
def test_choice_errors(tmp_path, name, text, accepted):
    assert_names(error_of(tmp_path, env={name: text}), name, "environment", accepted)


def test_choices_are_case_insensitive(tmp_path):
    settings = load(tmp_path, env={"TASK_SOURCE": "LOCAL", "LOG_FORMAT": "Json",
                                   "LOG_LEVEL": "warning"})
    assert (settings.task_source, settings.log_format, settings.log_level) == (
        "local", "json", "WARNING")


@pytest.mark.parametrize("text", ["tinytask:3000", "ftp://tinytask", "localhost", "//x"])
def test_endpoint_must_be_http(tmp_path, text):
    message = error_of(tmp_path, env={"MCP_ENDPOINT": text})
    assert_names(message, "MCP_ENDPOINT", "environment", "http:// or https:// URL")


def test_endpoint_trailing_slash_is_dropped(tmp_path):
    settings = load(tmp_path, env={"MCP_ENDPOINT": "https://tasks.example:3000/"})
    assert settings.mcp_endpoint == "https://tasks.example:3000"


@pytest.mark.parametrize("text", ["bad host", "a/b", "..", ".", "x" * 65, "host:1", "é"])
def test_hostname_rule(tmp_path, text):
    message = error_of(tmp_path, env={"HOSTNAME": text})
    assert_names(message, "HOSTNAME", "environment", "1-64 characters")


def test_hostname_valid_and_derived(tmp_path):
    assert load(tmp_path, env={"HOSTNAME": "worker-01"}).hostname == "worker-01"
    derived = load(tmp_path).hostname
    assert derived and "." not in derived


@pytest.mark.parametrize("text", ['my-agent "unbalanced', "goose run --x 'oops", '""'])
def test_agent_command_errors(tmp_path, text):
    message = error_of(tmp_path, env={"AGENT_COMMAND": text})
    assert_names(message, "AGENT_COMMAND", "environment", "argv template")


def test_agent_command_unbalanced_quote_says_why(tmp_path):
    message = error_of(tmp_path, env={"AGENT_COMMAND": 'a "b'})
    assert message == (f"""{PREFIX}AGENT_COMMAND='a "b' (from environment) is invalid: """
                       "accepted: an argv template split like shell words "
                       "(No closing quotation)")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"dispatcher": 1, "worker": 3}', {"dispatcher": 1, "worker": 3}),
        ("dispatcher=1,worker=3", {"dispatcher": 1, "worker": 3}),
        (" dispatcher = 1 , worker=3 ", {"dispatcher": 1, "worker": 3}),
        ("a=0", {"a": 0}),
        ("{}", {}),
        ("", {}),
        ('{"a.b_c-1": 2}', {"a.b_c-1": 2}),
    ],
)
def test_agent_limits_formats(tmp_path, text, expected):
    assert parse_agent_limits(text) == expected
    if text.strip():
        assert dict(load(tmp_path, env={"AGENT_LIMITS": text}).agent_limits) == expected


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("dispatcher", "has no '='"),
        ("a=1,b", "'b' has no '='"),
        ("a=1,", "has no '='"),
        ("a=-1", "limit for 'a'"),
        ("a=x", "limit for 'a'"),
        ("a=1.5", "limit for 'a'"),
        ("bad name=1", "agent name 'bad name' is invalid"),
        ("../x=1", "agent name '../x' is invalid"),
        ("=1", "agent name '' is invalid"),
        ('["dispatcher", 1]', "JSON list is not an object"),
        ('{"a": 1', "invalid JSON at column"),
        ("{a: 1}", "invalid JSON at column"),
        ('{"a": -1}', "limit for 'a'"),
        ('{"a": true}', "limit for 'a'"),
        ('{"a": 1.5}', "limit for 'a'"),
        ('{"a": null}', "limit for 'a'"),
        ('{"a/b": 1}', "agent name 'a/b' is invalid"),
    ],
)
def test_agent_limits_malformed(tmp_path, text, detail):
    message = error_of(tmp_path, env={"AGENT_LIMITS": text})
    assert_names(message, "AGENT_LIMITS", "environment",
                 'a JSON object {"agent": N} or agent=N,agent=N with N from 0 to 10000')
    assert detail in message


def test_agent_limits_error_from_env_file(tmp_path):
    message = error_of(tmp_path, file={"AGENT_LIMITS": "a=-2"})
    assert message.startswith(f"{PREFIX}AGENT_LIMITS='a=-2' (from env file "
                              f"{tmp_path / 'layer.env'}) is invalid: limit for 'a' is '-2'; "
                              'accepted: a JSON object {"agent": N} or agent=N,agent=N with N ')
    assert "\n" not in message


def test_tinytask_needs_endpoint(tmp_path):
    message = error_of(tmp_path, env={"TASK_SOURCE": "tinytask"})
    assert f"{PREFIX}TASK_SOURCE=tinytask" in message
    assert f"{PREFIX}MCP_ENDPOINT" in message
    assert "(from environment)" in message
    assert "accepted" in message


def test_task_source_follows_endpoint(tmp_path):
    settings = load(tmp_path, env={"MCP_ENDPOINT": "http://tinytask:3000"})
    assert settings.task_source == "tinytask"
    assert settings.origins["TASK_SOURCE"] == "default"
    settings = load(tmp_path, env={"MCP_ENDPOINT": "http://tinytask:3000",
                                   "TASK_SOURCE": "local"})
    assert settings.task_source == "local"
    assert load(tmp_path).task_source == "local"


def test_secret_never_in_error_message():
    secret = "hunter2-very-secret"

    def refuse(text: str) -> str:
        raise ValueError("accepted: something else")

    option = Option("FAKE_TOKEN", "", refuse, "A secret.", secret=True)
    with pytest.raises(ConfigError) as info:
        settings_mod._parse(option, secret, "environment")
    assert secret not in str(info.value)
    assert f"{PREFIX}FAKE_TOKEN" in str(info.value)


def test_secret_not_in_other_errors_or_repr(tmp_path):
    secret = "tok-3c7f1e9a"
    message = error_of(tmp_path, file={"MCP_TOKEN": secret}, env={"HEARTBEAT_SEC": "x"})
    assert secret not in message
    settings = load(tmp_path, file={"MCP_TOKEN": secret})
    assert settings.mcp_token == secret
    assert secret not in repr(settings)
    assert settings.resolved()["MCP_TOKEN"].value == "********"
    assert OPTIONS_BY_NAME["MCP_TOKEN"].secret


def test_error_message_names_the_bad_value(tmp_path):
    message = error_of(tmp_path, env={"LOG_FORMAT": "yaml"})
    assert message == (f"{PREFIX}LOG_FORMAT='yaml' (from environment) is invalid: "
                       "accepted: text | json")


# --- paths -------------------------------------------------------------------------------


def test_base_path_defaults_to_cwd(tmp_path):
    settings = load(tmp_path)
    assert settings.base_path == tmp_path
    assert settings.work_dir == tmp_path
    assert settings.running_dir == tmp_path / "state" / "running"
    assert settings.agent_control_file == tmp_path / "agent-control.json"
    assert settings.tasks_db == tmp_path / "state" / "tasks.db"
    assert settings.lock_file == tmp_path / "state" / "tinyscheduler.lock"
    assert settings.outbox_dir == tmp_path / "state" / "outbox"


def test_relative_paths_resolve_against_base_path(tmp_path):
    base = tmp_path / "srv"
    settings = load(tmp_path, env={
        "BASE_PATH": str(base),
        "STATE_DIR": "var/state",
        "RUNNING_DIR": "leases",
        "LOG_DIR": "/abs/logs",
        "WORK_DIR": "checkout",
        "AGENT_CONTROL_FILE": "conf/agents.json",
    })
    assert settings.state_dir == base / "var" / "state"
    assert settings.running_dir == base / "leases"
    assert settings.log_dir == Path("/abs/logs")
    assert settings.work_dir == base / "checkout"
    assert settings.agent_control_file == base / "conf" / "agents.json"
    assert settings.recipes_dir == base / "recipes"


def test_relative_base_path_resolves_against_cwd(tmp_path):
    settings = load(tmp_path, env={"BASE_PATH": "sub/dir"})
    assert settings.base_path == tmp_path / "sub" / "dir"
    assert settings.state_dir == tmp_path / "sub" / "dir" / "state"


def test_loading_creates_nothing(tmp_path):
    load(tmp_path, env={"BASE_PATH": str(tmp_path / "nowhere")})
    assert list(tmp_path.iterdir()) == []


# --- env files ---------------------------------------------------------------------------


def test_dot_env_is_loaded_when_present(tmp_path):
    write_env(tmp_path / ".env", {"HEARTBEAT_SEC": "9"})
    settings = load(tmp_path)
    assert settings.heartbeat_sec == 9
    assert settings.env_file == tmp_path / ".env"
    assert settings.origins["HEARTBEAT_SEC"] == f"env file {tmp_path / '.env'}"


def test_named_env_file_replaces_dot_env(tmp_path):
    write_env(tmp_path / ".env", {"HEARTBEAT_SEC": "9", "LOOP_INTERVAL_SEC": "5"})
    named = write_env(tmp_path / "named.env", {"HEARTBEAT_SEC": "8"})
    settings = load(tmp_path, env_file=named)
    assert settings.heartbeat_sec == 8
    assert settings.loop_interval_sec == 60  # ./.env is not read at all


def test_missing_named_env_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, env_file=tmp_path / "missing.env")
    assert "missing.env" in str(info.value)
    assert "does not exist" in str(info.value)


def test_env_file_syntax(tmp_path):
    path = tmp_path / "x.env"
    path.write_text(
        "# a comment\n"
        f"export {PREFIX}HEARTBEAT_SEC=5\n"
        f'{PREFIX}AGENT_COMMAND="my-agent --task {{task_id}}"\n'
        f"{PREFIX}LOG_LEVEL='debug'  # trailing comment\n"
        "\n"
    )
    settings = load(tmp_path, env_file=path)
    assert settings.heartbeat_sec == 5
    assert settings.agent_command == "my-agent --task {task_id}"
    assert settings.log_level == "DEBUG"


def test_unknown_variables_are_reported(tmp_path):
    settings = load(
        tmp_path,
        file={"HEARTBEATSEC": "5", "BIN_DIR": "/opt/bin"},
        env={"LOG_LEVL": "debug"},
    )
    assert settings.unknown_variables == (
        f"{PREFIX}BIN_DIR", f"{PREFIX}HEARTBEATSEC", f"{PREFIX}LOG_LEVL")


def test_unprefixed_variables_are_ignored(tmp_path):
    settings = load_settings(environ={"HEARTBEAT_SEC": "abc", "PATH": "/bin"}, cwd=tmp_path)
    assert settings.heartbeat_sec == 15
    assert settings.unknown_variables == ()


def test_settings_are_immutable(tmp_path):
    settings = load(tmp_path)
    with pytest.raises(AttributeError):
        settings.heartbeat_sec = 1  # type: ignore[misc]


@pytest.mark.parametrize("name", ["STATE_DIR", "DATABASE_URL_FILE", "SANDBOX_WRITABLE"])
def test_a_path_with_a_control_character_is_refused_in_one_line(tmp_path, name):
    message = error_of(tmp_path, env={name: "state\nrm -rf"})
    assert_names(message, name, "environment", "a file system path without control characters")
    assert "\n" not in message


@pytest.mark.parametrize("name", ["BASE_PATH", "LOG_DIR", "REPO_DIR"])
def test_a_path_under_the_home_of_an_unknown_user_is_a_clean_error(tmp_path: Path,
                                                                    name: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={f"TINYSCHEDULER_{name}": "~0/state"}, cwd=tmp_path)
    assert str(raised.value) == (
        f"TINYSCHEDULER_{name}='~0/state' (from environment) is invalid: the home "
        "directory of user '0' is unknown (accepted: a path, ~/PATH or ~USER/PATH for a "
        "user that exists)")
    home = load_settings(environ={f"TINYSCHEDULER_{name}": "~/state"}, cwd=tmp_path)
    assert getattr(home, name.lower()) == Path.home() / "state"


def test_an_env_file_under_the_home_of_an_unknown_user_is_a_clean_error(
        tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"TINYSCHEDULER_ENV_FILE": "~nosuchuser/x.env"}, cwd=tmp_path)
    assert str(raised.value) == (
        "TINYSCHEDULER_ENV_FILE='~nosuchuser/x.env': the home directory of user "
        "'nosuchuser' is unknown (accepted: a path, ~/PATH or ~USER/PATH for a user that "
        "exists)")


def test_an_agent_program_under_the_home_of_an_unknown_user_is_not_found(
        tmp_path: Path) -> None:
    from scheduler.config.agentcmd import agent_program_problem

    settings = load_settings(environ={"TINYSCHEDULER_AGENT_COMMAND":
                                      "~nosuchuser/bin/agent {title}"}, cwd=tmp_path)
    assert agent_program_problem(settings) == (
        "agent command '~nosuchuser/bin/agent' is not found (not an executable file); "
        "install it, or set TINYSCHEDULER_AGENT_COMMAND (or TINYSCHEDULER_GOOSE_BIN) to an "
        "existing executable")
