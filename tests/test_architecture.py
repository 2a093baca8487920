"""The package layering in pyproject.toml holds, and breaking it fails ``make lint``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the packages and the contracts, safe to break."""
    for name in ("scheduler", "wrapper"):
        shutil.copytree(ROOT / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _plant(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_contracts_hold(tree: Path) -> None:
    result = _lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("scheduler/state/leases.py", "from scheduler.cli import main  # noqa", "CLI above the pass"),
    ("scheduler/sources/local.py", "import scheduler.reconcile.planner  # noqa",
     "CLI above the pass"),
    ("wrapper/supervisor.py", "import scheduler.reconcile.reconciler  # noqa",
     "CLI above the pass"),
    ("scheduler/clock.py", "import scheduler.state.leases  # noqa", "foundation modules"),
])
def test_an_upward_import_breaks_a_contract(tree: Path, module: str, line: str,
                                            contract: str) -> None:
    _plant(tree / module, line)
    result = _lint_imports(tree)
    assert result.returncode == 1, result.stdout
    broken = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(contract in row for row in broken), result.stdout


def test_a_cycle_between_siblings_breaks_a_contract(tree: Path) -> None:
    # state.records -> state.outbox is allowed alone; the way back closes a cycle.
    _plant(tree / "scheduler/state/records.py", "import scheduler.state.outbox  # noqa")
    _plant(tree / "scheduler/state/outbox.py", "import scheduler.state.records  # noqa")
    result = _lint_imports(tree)
    assert result.returncode == 1, result.stdout
    assert "No import cycles between sibling modules or packages BROKEN" in result.stdout
