"""Edge branches of small modules, through real processes where they matter: the
wrapper's own command line, the cancel signal's identity check, outbox decoding."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from test_wrapper import AGENT, HOST, PY, RUN_TIMEOUT, Rig, agent_command
from test_wrapper import make_rig as make_rig  # noqa: F401 - the fixture
from test_wrapper import rig as rig  # noqa: F401 - the fixture

from scheduler import clock
from scheduler.config.settings import PREFIX
from scheduler.reconcile.cancel import request_cancel, signal_wrapper
from scheduler.sources.base import COMPLETE, WORKING
from scheduler.state import outbox
from scheduler.state.leases import RUNNING, Lease


def wrapper_env(rig: Rig, **values: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env.update(rig.environ(**values))
    return env


@pytest.mark.processes
def test_the_wrapper_refuses_a_bad_configuration_and_runs_nothing(rig: Rig) -> None:
    task = rig.add()
    token = rig.prepare(task)
    ready = rig.path("ready")
    child = subprocess.run(
        [PY, "-m", "wrapper.main", "--lease", str(rig.lease_path(task.id)), "--token", token],
        env=wrapper_env(rig, HEARTBEAT_SEC="often",
                        AGENT_COMMAND=agent_command("ready", str(ready))),
        cwd=rig.root, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert child.returncode == 2
    assert child.stderr.startswith(f"error: {PREFIX}HEARTBEAT_SEC='often' (from environment) "
                                   "is invalid: accepted: a whole number")
    assert child.stderr.count("\n") == 1  # one line
    assert not ready.exists()
    assert rig.leases.read(task.id).state == "starting"  # not adopted
    assert rig.tasks.get(task.id).status == WORKING


@pytest.mark.processes
def test_the_lease_path_given_to_the_wrapper_wins_over_running_dir(rig: Rig) -> None:
    """The scheduler names the lease file; a wrapper whose settings name another
    RUNNING_DIR still adopts that lease (and the lock beside it)."""
    task = rig.add()
    token = rig.prepare(task)
    child = subprocess.run(
        [PY, "-m", "wrapper.main", "--lease", str(rig.lease_path(task.id)), "--token", token],
        env=wrapper_env(rig, RUNNING_DIR=str(rig.path("elsewhere")),
                        AGENT_COMMAND=agent_command("print", "found it")),
        cwd=rig.root, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert (child.returncode, child.stderr) == (0, "")
    assert rig.tasks.get(task.id).status == COMPLETE
    assert rig.leases.read(task.id) is None
    assert not rig.path("elsewhere").exists()


# --- the cancel signal ---------------------------------------------------------------------


def running_lease(pid: int | None, started: float | None, host: str = HOST) -> Lease:
    now = clock.now()
    return Lease(task_id="5", agent=AGENT, state=RUNNING, spawn_token="tok", started_at=now,
                 heartbeat=now, host=host, pid=pid, pid_started_at=started)


@pytest.mark.processes
def test_the_cancel_signal_goes_only_to_the_recorded_process(spawn_python) -> None:
    child = spawn_python("import sys; print('up', flush=True); sys.stdin.read()")
    assert child.stdout.readline().strip() == "up"
    started = psutil.Process(child.pid).create_time()

    assert signal_wrapper(running_lease(None, None)) is False
    assert signal_wrapper(running_lease(child.pid, None)) is False
    assert signal_wrapper(running_lease(child.pid, started - 100)) is False  # a reused pid
    assert child.poll() is None  # nothing was signalled

    assert signal_wrapper(running_lease(child.pid, started)) is True
    assert child.wait(timeout=10) == -signal.SIGTERM
    assert signal_wrapper(running_lease(child.pid, started)) is False  # gone now


@pytest.mark.processes
def test_task_cancel_never_signals_another_hosts_wrapper(rig: Rig, spawn_python) -> None:
    child = spawn_python("import sys; print('up', flush=True); sys.stdin.read()")
    assert child.stdout.readline().strip() == "up"
    lease = running_lease(child.pid, psutil.Process(child.pid).create_time(), host="otherhost")
    rig.leases.create(replace(lease, task_id="5"))
    assert request_cancel(rig.settings, "5") is False
    assert request_cancel(rig.settings, "6") is False  # no lease at all
    assert child.poll() is None


# --- outbox entries ------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "why"), [
    ("[1, 2]", "not a JSON object"),
    (json.dumps({"task_id": "1", "agent": AGENT, "attempt": 1, "outcome": "succeeded",
                 "token": "t", "colour": "blue"}), "unexpected fields"),
    (json.dumps({"task_id": "1", "agent": "../x", "attempt": 1, "outcome": "succeeded",
                 "token": "t"}), "agent name"),
    ("{", "invalid JSON at line 1 column 2"),
])
def test_an_outbox_entry_that_is_no_result_is_refused_with_the_reason(tmp_path: Path,
                                                                     content: str,
                                                                     why: str) -> None:
    path = tmp_path / "1-t.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=why):
        outbox.load(path)
    assert path.read_text() == content  # loading never changes the entry


@pytest.mark.parametrize(("content", "why"), [
    (b"{\"task_id\": \"\xff\"}", "not a JSON document \\(UnicodeDecodeError\\)"),
    (b"[" * 100_000 + b"]" * 100_000, "not a JSON document \\(RecursionError\\)"),
    (b" " * (outbox.MAX_ENTRY_BYTES + 1), f"larger than {outbox.MAX_ENTRY_BYTES} bytes"),
])
def test_an_outbox_entry_too_big_or_not_text_is_refused_with_the_reason(
        tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "1-t.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=why):
        outbox.load(path)
    assert path.read_bytes() == content


def test_pending_outbox_entries_oldest_first_without_temp_files(tmp_path: Path) -> None:
    assert outbox.pending(tmp_path / "missing") == []
    for name, stamp in (("2-b.json", 2_000), ("1-a.json", 1_000), (".tmp-3.json", 500),
                        ("note.txt", 100)):
        (tmp_path / name).write_text("{}")
        os.utime(tmp_path / name, (stamp, stamp))
    assert [p.name for p in outbox.pending(tmp_path)] == ["1-a.json", "2-b.json"]


def test_the_console_script_runs_the_same_wrapper() -> None:
    script = Path(sys.executable).with_name("tinyscheduler-wrapper")
    child = subprocess.run([str(script), "--lease", "/nowhere/x.json", "--token", "t"],
                           capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert child.returncode == 2
    assert "expected a path ending in task_<id>.json" in child.stderr


@pytest.mark.processes
@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_an_unreadable_task_file_still_runs_the_attempt(rig: Rig, damage: str) -> None:
    """The task file is the agent's copy of the task; without it the title is empty and
    the attempt still runs (the lease, not the file, is the authority)."""
    task = rig.add("Has a title")
    token = rig.prepare(task)
    task_file = rig.settings.task_log_dir / task.id / "task.json"
    if damage == "missing":
        task_file.unlink()
    else:
        task_file.write_text("{not json")
    out = rig.path("argv.json")
    assert rig.run(task.id, token, AGENT_COMMAND=agent_command(
        "argv", str(out), "--", "[{title}]")) == 0
    assert json.loads(out.read_text())[-1] == "[]"
    assert rig.tasks.get(task.id).status == COMPLETE
