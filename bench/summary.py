"""Run the issue-17 benches one after the other and print one summary table.

Each bench runs as its own process (its output is shown as it comes) and prints
``RESULT {json}`` lines (bench/_common.py ``result``); this collects them into one table:
the figure, its value, its target, the ratio to task-spooler where there is one, and
ok / MISSED. Bytecode caching is on for every process (PYTHONDONTWRITEBYTECODE is
dropped), as users have it. task-spooler is optional: without it the ratio column says
how to install it.

    .venv/bin/python bench/summary.py [--quick]      # what `make bench` runs

Exit code 0 when every bench ran (missed targets are shown, not failed on), 1 when a
bench crashed or printed no result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULT_PREFIX, table

HERE = Path(__file__).resolve().parent
#: (script, its arguments, extra arguments with --quick)
BENCHES = (
    ("backlog.py", [], ["--quick"]),
    ("postgres.py", ["--passes", "--runs", "5"], ["--quick", "--runs", "3"]),
    ("throughput.py", [], ["--quick"]),
    ("startup.py", [], ["--runs", "5"]),
    ("wrapper.py", ["--quick", "--runs", "10"], ["--runs", "3"]),
    ("daemon_memory.py", [], ["--quick"]),
)
TSP_HINT = "tsp not installed (apt-get install -y task-spooler)"


def run_bench(script: str, args: list[str]) -> tuple[int, list[dict], float]:
    """Run one bench, echoing its output; returns (exit code, its results, seconds)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    argv = [sys.executable, str(HERE / script), *args]
    print(f"== bench/{script} {' '.join(args)}".rstrip(), flush=True)
    started = time.monotonic()
    results = []
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(RESULT_PREFIX):
                results.append(json.loads(line[len(RESULT_PREFIX):]))
            else:
                print(line, end="", flush=True)
    return proc.returncode, results, time.monotonic() - started


def shown(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def row(script: str, res: dict) -> tuple[str, ...]:
    unit = res.get("unit", "")
    unit = unit if unit in ("", "x", "/s") else f" {unit}"
    value = f"{shown(res['value'])}{unit}"
    target = f"{res['target']}{unit}" if res.get("target") else "-"
    if res.get("tsp") is not None:
        versus = f"{res['tsp']:.2f}x (target {res['tsp_target']}x)"
    elif res.get("tsp_target"):
        versus = TSP_HINT
    else:
        versus = ""
    return (script, res["name"], value, target, versus, res["verdict"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="each bench's smoke variant (smaller sizes, fewer runs)")
    args = parser.parse_args()
    started = time.monotonic()
    load_before = os.getloadavg()
    rows, crashed, times = [], [], []
    for script, arguments, quick in BENCHES:
        code, results, seconds = run_bench(script, arguments + (quick if args.quick else []))
        print(f"   ({script}: {seconds:.0f} s, exit {code})\n", flush=True)
        times.append(f"{script} {seconds:.0f} s")
        rows += [row(script, res) for res in results]
        # A bench may exit 1 for a missed target (startup.py); otherwise it crashed.
        if not results or (code != 0 and all(r["verdict"] != "MISSED" for r in results)):
            crashed.append(f"{script} (exit {code})")
    elapsed = time.monotonic() - started
    load_after = os.getloadavg()
    print(f"== summary ({'quick' if args.quick else 'full'} run, {elapsed / 60:.1f} min; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, "
          f"{os.cpu_count()} CPUs)")
    print(table(("bench", "figure", "value", "target", "vs task-spooler", "verdict"),
                rows))
    missed = sum(1 for r in rows if r[-1] == "MISSED")
    print(f"{missed} of {sum(1 for r in rows if r[-1] != '-')} targets missed"
          + (f"; CRASHED: {', '.join(crashed)}" if crashed else "")
          + f" ({', '.join(times)})")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
