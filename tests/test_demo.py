"""The bundled demo behind ``make run``, in a copy of examples/demo: the backlog finishes,
and the dashboard is started for the demo's duration with its address printed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.processes

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo"


def test_the_demo_runs_the_backlog_and_shows_the_dashboard(tmp_path):
    shutil.copytree(DEMO, tmp_path / "examples" / "demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYSCHEDULER_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["DEMO_DASHBOARD_BIND"] = "127.0.0.1:0"
    proc = subprocess.run(["sh", str(tmp_path / "examples" / "demo" / "run.sh")], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert re.search(r"dashboard on http://127\.0\.0\.1:\d+/ \(read-only", out), out
    assert "dashboard stopped" in out
    assert out.index("dashboard on") < out.index("== tinyscheduler status")
    assert re.search(r"7\s+complete\s+review", out)
