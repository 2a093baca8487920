"""Shared helpers for the benches: a base directory, a clean environment, the CLI."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
CONSOLE_SCRIPT = VENV_BIN / "tinyscheduler"


def clean_env(**settings: object) -> dict[str, str]:
    """The caller's environment without TINYSCHEDULER_*/NOTIFY_SOCKET, plus ``settings``
    (names without the prefix)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TINYSCHEDULER_") and k != "NOTIFY_SOCKET"}
    env.update({f"TINYSCHEDULER_{k}": str(v) for k, v in settings.items()})
    return env


def write_agents(base: Path, agents: dict[str, str]) -> None:
    (base / "agent-control.json").write_text(json.dumps(
        [{"agentName": name, "agentType": queue} for name, queue in agents.items()]))


def cli(base: Path, env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(CONSOLE_SCRIPT), "--base-path", str(base), *args], env=env,
                          cwd=base, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise RuntimeError(f"tinyscheduler {' '.join(args)} exited {proc.returncode}:\n"
                           f"{proc.stderr}")
    return proc


def timed(argv: list[str], env: dict, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    return time.perf_counter() - start, proc


def median(values: list[float]) -> float:
    return statistics.median(values)


def wait_until(condition, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def table(header: tuple[str, ...], rows: list[tuple]) -> str:
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
