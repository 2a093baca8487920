"""The systemd units: KillMode=process in both services, and systemd-analyze verify."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SERVICES = ("tinyscheduler.service", "tinyscheduler-oneshot.service")


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive in systemd
    parser.read(DEPLOY / name)
    return parser


@pytest.mark.parametrize("name", SERVICES)
def test_services_leave_agents_running(name):
    assert unit(name)["Service"]["KillMode"] == "process"


def test_daemon_service_shape():
    service = unit("tinyscheduler.service")["Service"]
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) > 60
    assert service["Restart"] == "on-failure"
    assert "-HUP" in service["ExecReload"]
    assert "--env-file" in service["ExecStart"] and service["ExecStart"].endswith("run --daemon")
    assert service["ExecStart"].index("--env-file") < service["ExecStart"].index(" run ")
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"


def test_timer_and_oneshot_shape():
    timer = unit("tinyscheduler.timer")["Timer"]
    assert timer["Persistent"] == "true" and timer["RandomizedDelaySec"]
    assert timer["Unit"] == "tinyscheduler-oneshot.service"
    oneshot = unit("tinyscheduler-oneshot.service")["Service"]
    assert oneshot["Type"] == "oneshot" and oneshot["ExecStart"].endswith("run --once")


def test_dashboard_service_shape():
    service = unit("tinyscheduler-dashboard.service")["Service"]
    assert service["ExecStart"].endswith(" dashboard")
    assert service["ExecStart"].index("--env-file") < service["ExecStart"].index(" dashboard")
    assert service["Restart"] == "on-failure" and service["NoNewPrivileges"] == "yes"
    assert "/srv/tinyscheduler" in service["ReadOnlyPaths"]


def test_cron_example_puts_env_file_before_the_subcommand():
    line = next(text for text in (DEPLOY / "tinyscheduler-cron.example").read_text().splitlines()
                if text and not text.startswith("#"))
    assert line.index("--env-file") < line.index(" run --once")


def test_units_pass_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:  # never a skip: the check must run
        pytest.fail("systemd-analyze is not installed: install systemd (apt-get install "
                    "systemd; .ci/run does it) to verify the units")
    # verify wants the executables to exist: point the units at stand-ins in tmp_path.
    stand_in = tmp_path / "tinyscheduler"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    units = (*SERVICES, "tinyscheduler.timer", "tinyscheduler-dashboard.service")
    for name in units:
        text = (DEPLOY / name).read_text()
        text = text.replace("/opt/tinyscheduler/.venv/bin/tinyscheduler", str(stand_in))
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no",
         *(str(tmp_path / n) for n in units)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tinyscheduler" not in result.stdout + result.stderr  # no warning about our units
