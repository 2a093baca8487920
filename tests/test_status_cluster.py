"""``status`` and ``validate-config`` against PostgreSQL (the CLI in this process, a real
server): the CLUSTER section with hosts and runs, an unreachable database, and the
schema version check; and ``status`` with a broken agent control file or task store."""

from __future__ import annotations

import os

import psycopg
import pytest

from scheduler.cli import main
from scheduler.config.settings import PREFIX
from scheduler.sources.postgres.schema import SCHEMA, SCHEMA_VERSION
from scheduler.sources.postgres.store import PostgresStore


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """``cli(url, *args)`` -> (exit code, stdout, stderr) with TASK_SOURCE=postgres."""
    for name in list(os.environ):
        if name.startswith(PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(f"{PREFIX}TASK_SOURCE", "postgres")
    monkeypatch.setenv(f"{PREFIX}AGENT_COMMAND", "true")
    monkeypatch.setenv(f"{PREFIX}AGENT_LIMITS", "vaela=2")

    def run(url: str, *args: str) -> tuple[int, str, str]:
        monkeypatch.setenv(f"{PREFIX}DATABASE_URL", url)
        code = main(["--base-path", str(tmp_path), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def postgres_line(out: str) -> str:
    return next(line for line in out.splitlines()
                if line.split()[1:2] == ["postgres"] and ("reachable" in line
                                                          or "newer than" in line))


def test_validate_config_reports_the_schema_it_finds(pg_url, cli):
    code, out, _ = cli(pg_url, "validate-config")
    assert code == 0, out
    assert postgres_line(out).startswith("OK       postgres ")
    assert postgres_line(out).endswith(
        f": reachable, empty; migrated to v{SCHEMA_VERSION} at first use")

    assert cli(pg_url, "task", "add", "hello")[0] == 0  # migrates
    code, out, _ = cli(pg_url, "validate-config")
    assert code == 0
    assert postgres_line(out).endswith(f": reachable, schema v{SCHEMA_VERSION} (task source)")

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"UPDATE {SCHEMA}.schema_version SET version = %s",
                     (SCHEMA_VERSION + 1,))
    code, out, _ = cli(pg_url, "validate-config")
    assert code == 2
    line = postgres_line(out)
    assert line.startswith("ERROR    postgres ") and line.endswith(
        f": schema v{SCHEMA_VERSION + 1} is newer than this tinyscheduler supports "
        f"(v{SCHEMA_VERSION}); upgrade")


def test_status_lists_each_host_and_its_runs(pg_url, cli):
    with PostgresStore(pg_url, host="h1") as store:
        task = store.add_task("build the login page")
        store.claim(task.id, "vaela", "tok-1")
        store.coordinator.host_heartbeat()
    with PostgresStore(pg_url, host="h2") as other:
        other.coordinator.host_heartbeat()

    code, out, _ = cli(pg_url, "status")
    lines = out.splitlines()
    start = lines.index("CLUSTER (2 hosts)")
    h1, run, h2 = lines[start + 1:start + 4]
    assert h1.split()[:3] == ["h1", "alive", "heartbeat"] and h1.endswith("1 run(s)")
    assert run.split()[:4] == ["task", task.id, "vaela", "run"]
    assert "attempt 1" in run and run.endswith("s ago")
    assert h2.split()[:2] == ["h2", "alive"] and h2.endswith("0 run(s)")
    assert code == 1 and lines[-1] == "UNHEALTHY: no pass has run yet"


def test_status_with_an_unreachable_database_says_so_in_each_part(tmp_path, cli):
    url = f"postgresql://nobody@/nodb?host={tmp_path / 'no-server'}&port=5"
    code, out, _ = cli(url, "status")
    assert code == 1
    lines = out.splitlines()
    start = lines.index("CLUSTER (0 hosts)")
    assert lines[start + 1].startswith("  unavailable: ")
    assert "SOURCE   postgres: FAILING" in out
    unhealthy = lines[-1]
    assert unhealthy.startswith("UNHEALTHY: ") and "cluster unavailable: " in unhealthy
    assert "task source unhealthy: " in unhealthy


def test_status_names_a_broken_agent_control_file_and_still_reports(tmp_path, monkeypatch,
                                                                    capsys):
    for name in list(os.environ):
        if name.startswith(PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(f"{PREFIX}AGENT_COMMAND", "true")
    control = tmp_path / "agent-control.json"
    control.write_text('[{"agentName": "vaela", "agentType": ')
    code = main(["status"])
    out = capsys.readouterr().out
    assert code == 1
    lines = out.splitlines()
    assert lines[:2] == ["AGENTS", "  (none configured)"]
    assert "SOURCE   local: FAILING - no task store yet at" in out
    assert lines[-1].startswith(f"UNHEALTHY: agent control file {control}")


def test_status_with_a_task_store_that_is_not_a_database_says_so(tmp_path, monkeypatch,
                                                                  capsys):
    for name in list(os.environ):
        if name.startswith(PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(f"{PREFIX}AGENT_COMMAND", "true")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    store = state / "tasks.db"
    store.write_bytes(b"not sqlite at all\n" * 300)
    store.chmod(0o600)
    code = main(["status"])
    out = capsys.readouterr().out
    assert code == 1
    why = f"local store {store}: cannot open: file is not a database"
    assert f"SOURCE   local: FAILING - {why}" in out
    assert out.splitlines()[-1].endswith(f"task source unhealthy: {why}")
    assert store.read_bytes() == b"not sqlite at all\n" * 300  # left as it was
