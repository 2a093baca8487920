"""The Makefile: a line per step before every long command, the whole suite in parallel,
and a fast target for the unit tests. Checked with ``make -n`` (nothing runs)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry_run(tmp_path, target: str) -> list[str]:
    """What ``make TARGET`` would run for a fresh virtual environment, line by line."""
    proc = subprocess.run(["make", "-n", target, f"VENV={tmp_path / 'venv'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


@pytest.mark.parametrize("target", ["run", "test"])
def test_every_slow_step_is_announced_first(tmp_path, target):
    lines = dry_run(tmp_path, target)
    slow = [i for i, line in enumerate(lines)
            if " -m venv " in line or " -m pip " in line or " -m pytest" in line]
    assert slow, lines
    for index in slow:
        announce = lines[index - 1] if index > 0 else ""
        assert announce.startswith("printf '== %s\\n'"), lines[index]
        words = shlex.split(announce)  # a step's text is one well-quoted word
        assert len(words) == 3 and words[2].startswith(("creating", "installing", "running"))


def test_make_run_installs_only_the_runtime(tmp_path):
    pips = [line for line in dry_run(tmp_path, "run") if " -m pip " in line]
    assert len(pips) == 1 and "-e ." in pips[0] and "[dev]" not in pips[0]


def test_make_test_runs_the_whole_suite_in_parallel(tmp_path):
    pytest_line = next(line for line in dry_run(tmp_path, "test") if " -m pytest" in line)
    assert " -n " in pytest_line and " -m " not in pytest_line.split(" -m pytest", 1)[1]


def test_make_test_fast_selects_the_unit_tests(tmp_path):
    pytest_line = next(line for line in dry_run(tmp_path, "test-fast") if " -m pytest" in line)
    assert '-m "not processes"' in pytest_line
