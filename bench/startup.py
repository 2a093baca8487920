"""Start-up cost of the fast commands, and which heavy modules they import.

Median wall time over RUNS runs, each a fresh process started from an empty temporary
directory (no ./.env) with no TINYSCHEDULER_* variables, of:

- ``python -c pass`` with this venv's interpreter (the floor),
- ``tinyscheduler --help`` and ``tinyscheduler config --show`` through the venv's console
  script, as users run them,
- ``tinyscheduler run --once`` on an empty local backlog (state made first by
  ``validate-config --fix``: lock, lease scan, ready query, records),

with the ratio of each to the floor. Then, per command, which of the heavy modules end up
in ``sys.modules``; httpx, sqlite3, psutil and the dashboard's libraries must not.

    .venv/bin/python bench/startup.py [--runs N]

Exit code 1 when a goal is missed or a forbidden module is imported.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import clean_env, result

RUNS = 20
#: command label -> goal in milliseconds
GOALS = {"tinyscheduler --help": 100.0, "tinyscheduler config --show": 150.0,
         "tinyscheduler run --once (empty)": 120.0}  # issue 17: empty pass <= 0.12 s
HEAVY = ("httpx", "sqlite3", "psutil", "filelock", "tenacity", "dotenv", "click",
         "starlette", "uvicorn", "jinja2", "prometheus_client")
#: Never on the fast commands' path; the last four are the dashboard extra's libraries.
FORBIDDEN = ("httpx", "sqlite3", "psutil", "starlette", "uvicorn", "jinja2", "prometheus_client")

PROBE = """
import sys
from scheduler.cli import main
import contextlib, io
with contextlib.redirect_stdout(io.StringIO()):
    code = main({argv!r})
print(code, ",".join(m for m in {heavy!r} if m in sys.modules))
"""


def median_ms(argv: list[str], cwd: Path, env: dict[str, str], runs: int) -> float:
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run(argv, cwd=cwd, env=env, check=True, **quiet)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, env=env, check=True, **quiet)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def heavy_imports(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv, heavy=HEAVY)],
        cwd=cwd, env=env, capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise SystemExit(f"probe of {argv} failed:\n{proc.stderr}")
    code, _, modules = proc.stdout.strip().splitlines()[-1].partition(" ")
    return int(code), [m for m in modules.split(",") if m]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="start-up cost of the fast commands")
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args(argv)

    script = str(Path(sys.executable).with_name("tinyscheduler"))
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "tinyscheduler --help": [script, "--help"],
        "tinyscheduler config --show": [script, "config", "--show"],
        "tinyscheduler run --once (empty)": [script, "run", "--once"],
    }
    # An agent command that exists, so that run --once makes a real empty pass rather
    # than stopping at the missing goose.
    env = clean_env(AGENT_COMMAND="true")
    ok = True
    with tempfile.TemporaryDirectory(prefix="tinyscheduler-bench-") as tmp:
        cwd = Path(tmp)
        subprocess.run([script, "validate-config", "--fix"], cwd=cwd, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        results = {label: median_ms(cmd, cwd, env, args.runs) for label, cmd in commands.items()}
        floor = results["python -c pass"]
        measured: list[tuple[str, float, float | None]] = []
        print(f"median wall time of {args.runs} runs (from an empty directory, no .env)")
        print(f"{'command':<34} {'median':>9} {'x floor':>8}  goal")
        for label, ms in results.items():
            goal = GOALS.get(label)
            verdict = ""
            if goal is not None:
                met = ms < goal
                ok &= met
                verdict = f"< {goal:.0f} ms  {'ok' if met else 'MISSED'}"
            print(f"{label:<34} {ms:7.1f}ms {ms / floor:7.2f}x  {verdict}")
            measured.append((label, ms, goal))

        print()
        print(f"heavy modules imported (of {', '.join(HEAVY)}); "
              f"forbidden: {', '.join(FORBIDDEN)}")
        for label, cli_args in (("--help", ["--help"]), ("config --show", ["config", "--show"])):
            code, modules = heavy_imports(cli_args, cwd, env)
            bad = [m for m in modules if m in FORBIDDEN]
            ok &= not bad and code == 0
            status = f"FORBIDDEN: {', '.join(bad)}" if bad else "ok"
            print(f"  {label:<16} exit {code}  {', '.join(modules) or '(none)':<28} {status}")
            if bad:
                result(f"{label}: imports {', '.join(bad)}", 1, "", "<= 0")
    for label, ms, goal in measured:
        result(label.removeprefix("tinyscheduler "), ms, "ms",
               None if goal is None else f"< {goal:g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
