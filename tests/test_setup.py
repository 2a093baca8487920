"""The first hour of a new user: the README quick start, ``init``, env-file discovery,
``version``, and the mistakes that used to pass silently at start-up."""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scheduler import faults
from scheduler.cli import main
from scheduler.config.settings import ENV_FILE_VARIABLE, OPTIONS, PREFIX, load_settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """A clean working directory, no TINYSCHEDULER_* variables, an agent that exists."""
    for key in list(os.environ):
        if key.startswith(PREFIX) or key == faults.CRASH_AT_VARIABLE:
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(PREFIX) and k != faults.CRASH_AT_VARIABLE}
    env["PATH"] = f"{BIN}{os.pathsep}/usr/bin:/bin"
    env.update(extra)
    return env


# --- the README quick start ----------------------------------------------------------------


def quick_start_block() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "README's Quick start has no ```sh block"
    return match.group(1)


@pytest.mark.processes
def test_readme_quick_start_works_pasted_line_by_line_in_an_empty_directory(tmp_path):
    block = quick_start_block()
    home = tmp_path / "home"
    home.mkdir()
    env = subprocess_env(HOME=str(home))
    proc = subprocess.run(["sh", "-e", "-c", block], cwd=home, env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    directory = home / "my-agents"
    assert (directory / "tinyscheduler.env").is_file()
    assert "settings from env file" in proc.stderr and "tinyscheduler.env" in proc.stderr

    def task_status() -> str:
        listing = subprocess.run([str(BIN / "tinyscheduler"), "task", "list", "--json"],
                                 cwd=directory, env=env, capture_output=True, text=True,
                                 timeout=30)
        return json.loads(listing.stdout)[0]["status"]

    deadline = time.monotonic() + 30
    while task_status() != "complete":
        assert time.monotonic() < deadline, "the quick start's task never completed"
        time.sleep(0.05)


def test_readme_install_lines_activate_the_venv():
    """After installing, ``tinyscheduler`` must be on PATH: the install block activates."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    install = readme.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    assert ". .venv/bin/activate" in install and "pip install -e ." in install


# --- init ----------------------------------------------------------------------------------


def test_init_writes_a_private_commented_env_file_that_changes_nothing(cwd, capsys):
    code, out, _ = cli(capsys, "init")
    assert code == 0 and "tinyscheduler.env" in out
    path = cwd / "tinyscheduler.env"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert all(not line or line.startswith("#") for line in text.splitlines())
    for option in OPTIONS:
        assert f"#{option.env}=" in text
    settings = load_settings(environ={}, cwd=cwd)
    assert settings.env_file == path and set(settings.origins.values()) == {"default"}


def test_init_sets_the_agent_command_and_never_overwrites(cwd, capsys):
    code, _, _ = cli(capsys, "init", "--agent-command", "my-agent-77 --task {task_id}")
    assert code == 0
    settings = load_settings(environ={}, cwd=cwd)
    assert settings.agent_command == "my-agent-77 --task {task_id}"
    assert settings.origins["AGENT_COMMAND"].startswith("env file")

    code, _, err = cli(capsys, "init")
    assert code == 2 and "exists" in err and "--force" in err
    assert "my-agent-77" in (cwd / "tinyscheduler.env").read_text()
    code, _, _ = cli(capsys, "init", "--force")
    assert code == 0 and "my-agent-77" not in (cwd / "tinyscheduler.env").read_text()


def test_init_rejects_a_bad_agent_command(cwd, capsys):
    code, _, err = cli(capsys, "init", "--agent-command", "oops 'unbalanced")
    assert code == 2 and "--agent-command" in err
    assert not (cwd / "tinyscheduler.env").exists()


def test_env_example_and_init_come_from_one_generator():
    from scheduler.config import envfile

    assert (ROOT / ".env.example").read_text() == envfile.render(generated_note=True)


# --- which env file is loaded ----------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_tinyscheduler_env_in_cwd_is_found(cwd):
    write(cwd / "tinyscheduler.env", f"{PREFIX}HEARTBEAT_SEC=7\n")
    settings = load_settings(environ={}, cwd=cwd)
    assert settings.heartbeat_sec == 7
    assert settings.env_file_how == "found in the current directory"


def test_tinyscheduler_env_wins_over_dot_env(cwd):
    write(cwd / "tinyscheduler.env", f"{PREFIX}HEARTBEAT_SEC=7\n")
    write(cwd / ".env", f"{PREFIX}HEARTBEAT_SEC=8\n")
    assert load_settings(environ={}, cwd=cwd).heartbeat_sec == 7


def test_env_file_variable_names_the_file(cwd):
    other = cwd / "elsewhere"
    other.mkdir()
    write(other / "prod.env", f"{PREFIX}HEARTBEAT_SEC=9\n")
    write(cwd / "tinyscheduler.env", f"{PREFIX}HEARTBEAT_SEC=7\n")
    settings = load_settings(environ={ENV_FILE_VARIABLE: "elsewhere/prod.env"}, cwd=cwd)
    assert settings.heartbeat_sec == 9 and settings.env_file_how == ENV_FILE_VARIABLE
    assert settings.unknown_variables == ()


def test_a_missing_env_file_named_by_the_variable_is_an_error(cwd, capsys, monkeypatch):
    monkeypatch.setenv(ENV_FILE_VARIABLE, str(cwd / "nope.env"))
    code, _, err = cli(capsys, "config", "--show")
    assert code == 2 and "nope.env" in err


def test_run_logs_which_env_file_it_loaded(cwd, capsys):
    write(cwd / "tinyscheduler.env", f"{PREFIX}AGENT_COMMAND=true\n")
    code, _, err = cli(capsys, "run", "--once", "--dry-run")
    assert code == 0
    assert f"settings from env file {cwd / 'tinyscheduler.env'} (found in the current " \
           "directory)" in err


def test_run_says_when_no_env_file_was_loaded(cwd, capsys, monkeypatch):
    monkeypatch.setenv(f"{PREFIX}AGENT_COMMAND", "true")
    code, _, err = cli(capsys, "run", "--once", "--dry-run")
    assert code == 0 and "settings from no env file" in err


# --- version -------------------------------------------------------------------------------


def test_version_command_matches_the_option(cwd, capsys):
    from scheduler import __version__

    code, out, _ = cli(capsys, "version")
    assert code == 0 and out == f"tinyscheduler {__version__}\n"
    code, out2, _ = cli(capsys, "--version")
    assert code == 0 and out2 == out


def test_shell_completion_is_documented_and_works(cwd):
    docs = (ROOT / "docs" / "operations.md").read_text()
    assert "_TINYSCHEDULER_COMPLETE=bash_source tinyscheduler" in docs
    proc = subprocess.run([str(BIN / "tinyscheduler")], env=subprocess_env(
        _TINYSCHEDULER_COMPLETE="bash_source"), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "complete " in proc.stdout


# --- mistakes caught at start-up -------------------------------------------------------------


def test_once_and_daemon_exclude_each_other(cwd, capsys, monkeypatch):
    monkeypatch.setenv(f"{PREFIX}AGENT_COMMAND", "true")
    for extra in ((), ("--dry-run",)):
        code, _, err = cli(capsys, "run", "--once", "--daemon", *extra)
        assert code == 2 and "--once and --daemon" in err
    assert not (cwd / "state").exists()


def test_a_bad_value_hidden_by_a_flag_is_still_an_error(cwd, capsys, monkeypatch):
    monkeypatch.setenv(f"{PREFIX}AGENT_COMMAND", "true")
    monkeypatch.setenv(f"{PREFIX}DRY_RUN", "maybe")
    code, _, err = cli(capsys, "run", "--once", "--dry-run")
    assert code == 2 and f"{PREFIX}DRY_RUN='maybe'" in err


def test_a_bad_value_in_the_env_file_hidden_by_the_environment_is_an_error(cwd):
    write(cwd / "tinyscheduler.env", f"{PREFIX}HEARTBEAT_SEC=often\n")
    with pytest.raises(Exception, match="HEARTBEAT_SEC='often'"):
        load_settings(environ={f"{PREFIX}HEARTBEAT_SEC": "5"}, cwd=cwd)


@pytest.mark.parametrize("command", ["/nonexistent/agent --go", "no-such-agent-3f9c1 --go"])
def test_a_missing_agent_program_is_a_config_error(cwd, capsys, monkeypatch, command):
    monkeypatch.setenv(f"{PREFIX}AGENT_COMMAND", command)
    code, out, _ = cli(capsys, "validate-config")
    assert code == 2
    assert re.search(r"ERROR +agent command '(/nonexistent/agent|no-such-agent-3f9c1)' is "
                     "not found", out)
    for args in (("run", "--once"), ("run", "--once", "--dry-run"), ("run", "--daemon")):
        code, _, err = cli(capsys, *args)
        assert code == 2 and "is not found" in err, args
        assert "no env file was loaded" in err and "--env-file FILE" in err


def test_a_relative_agent_program_resolves_against_the_work_dir(cwd, capsys, monkeypatch):
    agent = cwd / "bin" / "agent.sh"
    agent.parent.mkdir()
    write(agent, "#!/bin/sh\nexit 0\n").chmod(0o755)
    monkeypatch.setenv(f"{PREFIX}AGENT_COMMAND", "bin/agent.sh {task_id}")
    code, out, _ = cli(capsys, "validate-config")
    assert code == 0 and f"OK       agent command {agent}" in out


def test_a_pass_whose_agent_program_vanished_starts_nothing_and_fails(tmp_path):
    from scheduler.config.registry import Agent, Registry
    from scheduler.reconcile.reconciler import Reconciler
    from scheduler.sources.local import LocalStore

    settings = load_settings(environ={f"{PREFIX}AGENT_COMMAND": str(tmp_path / "gone")},
                             cwd=tmp_path)
    source = LocalStore(settings.tasks_db)
    launched: list[str] = []

    class Launcher:
        def launch(self, task_id: str, token: str, lease_path: str) -> int:
            launched.append(task_id)
            return 0

        def reap(self) -> None:
            pass

        def prepare(self, source) -> None:
            source.before_fork()

        def close(self) -> None:
            return None

    reconciler = Reconciler(settings, Registry((Agent("worker", "dev", 2),), legacy=False),
                            source=source, launcher=Launcher())
    task_id = source.add_task("one", queue="dev").id
    summary = reconciler.run_pass().summary
    assert launched == [] and summary.spawned == 0
    assert summary.errors and "is not found" in summary.errors[0]
    assert source.get(task_id).status == "idle" and source.get(task_id).attempts == 0
    source.close()


# --- the crash test hook ---------------------------------------------------------------------


def test_the_old_crash_variable_is_ignored_and_validate_config_says_so(cwd, capsys,
                                                                       monkeypatch):
    monkeypatch.setenv(f"{PREFIX}AGENT_COMMAND", "true")
    monkeypatch.setenv(f"{PREFIX}TEST_CRASH_AT", "after-lease")
    assert faults.armed() is None
    code, out, _ = cli(capsys, "validate-config")
    assert code == 0 and f"unknown variable {PREFIX}TEST_CRASH_AT is ignored" in out


def test_the_crash_hook_is_named_as_a_test_hook_wherever_it_is_set(cwd, capsys, monkeypatch):
    monkeypatch.setenv(f"{PREFIX}AGENT_COMMAND", "true")
    monkeypatch.setenv(faults.CRASH_AT_VARIABLE, "after-spawn")
    code, out, _ = cli(capsys, "validate-config")
    assert code == 0
    assert f"WARNING  test hook {faults.CRASH_AT_VARIABLE}=after-spawn is set: the " \
           "scheduler SIGKILLs itself" in out
    for point in faults.MERGE_POINTS:
        monkeypatch.setenv(faults.CRASH_AT_VARIABLE, point)
        assert "names no crash point" not in str(faults.armed())
    monkeypatch.setenv(faults.CRASH_AT_VARIABLE, "after-spawn")
    code, _, err = cli(capsys, "run", "--once", "--dry-run")
    assert code == 0 and "test hook" in err
    assert not faults.CRASH_AT_VARIABLE.startswith(PREFIX)  # no env file can carry it
    write(cwd / "tinyscheduler.env", f"{faults.CRASH_AT_VARIABLE}=after-spawn\n")
    monkeypatch.delenv(faults.CRASH_AT_VARIABLE)
    load_settings(cwd=cwd)
    assert faults.armed() is None


# --- a second scheduler -----------------------------------------------------------------------


@pytest.mark.processes
@pytest.mark.parametrize(("mode", "says"), [
    ("--once", "this pass does nothing"),
])
def test_a_held_lock_is_explained_as_the_docs_say(cwd, mode, says):
    state = cwd / "state"
    state.mkdir(mode=0o700)
    with open(state / "tinyscheduler.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run([str(BIN / "tinyscheduler"), "run", mode], cwd=cwd,
                              env=subprocess_env(TINYSCHEDULER_AGENT_COMMAND="true"),
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "another scheduler is reconciling" in proc.stderr and says in proc.stderr
    docs = (ROOT / "docs" / "operations.md").read_text()
    assert says in docs


def test_a_preset_goes_into_the_env_file_that_is_loaded(cwd, capsys):
    (cwd / "tinyscheduler.env").write_text(f"{PREFIX}HEARTBEAT_SEC=7\n")
    code, out, _ = cli(capsys, "validate-config", "--fix", "--preset", "goose")
    assert "tinyscheduler.env" in out
    assert "AGENT_COMMAND" in (cwd / "tinyscheduler.env").read_text()
    assert not (cwd / ".env").exists()
