"""Bad input gets one line naming it (exit 2), or is rejected at the door: never a
traceback. Non-UTF-8 arguments and settings, lone surrogates and NULs in task text,
pause files of the wrong shape, malformed pass records."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.errors import ConfigError, InputError
from scheduler.sources.local import LocalStore
from scheduler.state import pauses, records
from wrapper.command import LaunchError, build_argv

CONSOLE_SCRIPT = Path(sys.executable).parent / "tinyscheduler"


def run(tmp_path: Path, *args: str | bytes, env: dict | None = None):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TINYSCHEDULER_")}
    environ.update(env or {})
    environ["TINYSCHEDULER_TASK_SOURCE"] = "local"
    environ.setdefault("TINYSCHEDULER_AGENT_COMMAND", "true")
    return subprocess.run([os.fsencode(CONSOLE_SCRIPT), b"--base-path", os.fsencode(tmp_path),
                           *[a if isinstance(a, bytes) else a.encode() for a in args]],
                          env={os.fsencode(k): os.fsencode(v) for k, v in environ.items()},
                          cwd=tmp_path, capture_output=True, timeout=60)


def one_error_line(proc) -> str:
    err = proc.stderr.decode()
    assert "Traceback" not in err, err
    # the scheduler's own log lines (a time stamp first, one line each) may come before
    lines = [line for line in err.strip().splitlines() if not LOG_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) ")


# --- arguments and settings ------------------------------------------------------------------


@pytest.mark.parametrize("arg", [b"\xff", b"caf\xe9", b"ok \xc3"])
def test_a_non_utf8_argument_is_refused_naming_it(tmp_path, arg):
    proc = run(tmp_path, "task", "add", arg)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert f"argument 5 ({arg!r}) is not valid UTF-8" in line  # after --base-path DIR
    assert not (tmp_path / "state" / "tasks.db").exists()


def test_a_non_utf8_setting_is_a_config_error(tmp_path):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TINYSCHEDULER_")}
    env = {os.fsencode(k): os.fsencode(v) for k, v in environ.items()}
    env[b"TINYSCHEDULER_GOOSE_BIN"] = b"go\xffose"
    proc = subprocess.run([os.fsencode(CONSOLE_SCRIPT), b"config", b"--show"], env=env,
                          cwd=tmp_path, capture_output=True, timeout=60)
    assert proc.returncode == 2
    assert "TINYSCHEDULER_GOOSE_BIN=" in one_error_line(proc)
    assert "not valid UTF-8" in proc.stderr.decode()


# --- task text at the door --------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "detail"), [
    ({"title": "fix \ud800 this"}, "title is not valid UTF-8 (an unpaired surrogate \\ud800"),
    ({"title": "fix\x00this"}, "title contains a NUL character at position 3"),
    ({"title": "ok", "description": "lone \udcff"}, "description is not valid UTF-8"),
])
def test_import_rejects_bad_text_and_imports_nothing(tmp_path, spec, detail):
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([{"title": "fine"}, spec]))  # ensure_ascii: escapes survive
    proc = run(tmp_path, "task", "import", str(path))
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "Traceback" not in err and f"{path}: nothing imported" in err
    assert f"item 1: {detail}" in err
    assert run(tmp_path, "task", "list", "--json").stdout.strip() == b"[]"


def test_the_store_refuses_a_nul_title_from_any_caller(tmp_path):
    store = LocalStore(tmp_path / "tasks.db")
    try:
        with pytest.raises(InputError, match="title contains a NUL character"):
            store.add_task("a\x00b")
        assert store.list_tasks() == []
    finally:
        store.close()


def test_a_nul_reaching_the_argv_is_a_clear_launch_error():
    with pytest.raises(LaunchError, match=r"the value of \{title\} contains a NUL"):
        build_argv("agent --title {title}", {"title": "x\x00y"})
    assert build_argv("agent {task_id}", {"task_id": "1", "title": "x\x00y"}) == ["agent", "1"]


# --- pause file and pass records ---------------------------------------------------------------


@pytest.mark.parametrize(("content", "detail"), [
    ('{"everything": "yes"}', "'everything' is 'yes'"),
    ('{"agents": 3}', "'agents' is 3"),
    ('{"queues": [1, 2]}', "'queues' is [1, 2]"),
    ('{"agents": ["../x"]}', "'agents' is ['../x']"),
    ("[1]", "is not a JSON object"),
    ("{" * 100_000, "unreadable"),
    ('{"agents": ["\\ud800"]}', "'agents'"),
])
def test_a_pause_file_of_the_wrong_shape_is_one_clear_error(tmp_path, content, detail):
    path = tmp_path / "paused.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        pauses.load(path)
    assert str(path) in str(caught.value) and detail in str(caught.value)
    if content not in CLI_CASES:
        return  # the commands' handling is the same for every shape: two are enough
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "paused.json").write_text(content)
    for command in (("pause",), ("run", "--once")):
        proc = run(tmp_path, *command)
        assert proc.returncode == 2 and detail in one_error_line(proc), command
    status = run(tmp_path, "status")
    assert status.returncode == 1 and b"Traceback" not in status.stderr
    assert b"UNHEALTHY" in status.stdout and detail.encode() in status.stdout


CLI_CASES = ('{"everything": "yes"}', '{"agents": 3}', '{"time": 5}', "{" * 100_000)


class _Settings:
    def __init__(self, path: Path) -> None:
        self.last_pass_file = path


@pytest.mark.parametrize("content", [
    '{"time": 5}', '{"errors": "x"}', "[]", "not json", "{" * 100_000, "\xff\xfe",
    json.dumps({"time": "yesterday", "mode": "once", "spawned": 1, "reclaimed": {},
                "blocked_skipped": 0, "errors": [], "duration_sec": 0.1}),
    json.dumps({"time": "2026-01-01T00:00:00.000Z", "mode": "once", "spawned": 1,
                "reclaimed": {"pid-dead": "many"}, "blocked_skipped": 0, "errors": [],
                "duration_sec": 0.1}),
])
def test_a_malformed_last_pass_record_is_a_status_problem_not_a_crash(tmp_path, content):
    path = tmp_path / "state" / "last-pass.json"
    path.parent.mkdir(mode=0o700)
    path.write_text(content, errors="surrogateescape")
    with pytest.raises(ValueError, match=str(path)):
        records.read_last_pass(_Settings(path))
    if content not in CLI_CASES:
        return
    for args in (("status",), ("status", "--json")):
        proc = run(tmp_path, *args)
        assert proc.returncode == 1, proc.stderr
        assert b"Traceback" not in proc.stderr
        assert b"last pass record unreadable" in proc.stdout
