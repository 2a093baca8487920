"""Start-up of two installs side by side: ``--help``, ``config --show`` and an empty
``run --once``, interleaved run by run so machine load hits both alike.

    .venv/bin/python bench/startup_compare.py OLD/.venv/bin/tinyscheduler \\
        .venv/bin/tinyscheduler [--runs 30]

Prints the median of each command for each install and the ratio (second / first).
Bytecode caching is left on, as users have it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {"--help": ["--help"], "config --show": ["config", "--show"],
            "run --once (empty)": ["run", "--once"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", help="the tinyscheduler console script to compare against")
    parser.add_argument("second", help="the tinyscheduler console script being measured")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TINYSCHEDULER_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["TINYSCHEDULER_AGENT_COMMAND"] = "true"  # an agent that exists: a real empty pass
    scripts = {"first": os.path.abspath(args.first), "second": os.path.abspath(args.second)}
    times: dict[tuple[str, str], list[float]] = {(s, c): [] for s in scripts for c in COMMANDS}
    with tempfile.TemporaryDirectory(prefix="tinyscheduler-bench-") as tmp:
        dirs = {which: os.path.join(tmp, which) for which in scripts}  # one state each
        for which, script in scripts.items():
            os.mkdir(dirs[which])
            subprocess.run([script, "validate-config", "--fix"], cwd=dirs[which], env=env,
                           capture_output=True, check=False)
        for _ in range(args.runs):
            for label, words in COMMANDS.items():
                for which, script in scripts.items():
                    start = time.perf_counter()
                    done = subprocess.run([script, *words], cwd=dirs[which], env=env,
                                          capture_output=True, check=False)
                    times[(which, label)].append((time.perf_counter() - start) * 1000)
                    if done.returncode != 0:
                        raise SystemExit(f"{script} {' '.join(words)} exited "
                                         f"{done.returncode}: {done.stderr.decode()[-300:]}")
    print(f"median of {args.runs} interleaved runs (first: {args.first}; "
          f"second: {args.second})")
    for label in COMMANDS:
        first = statistics.median(times[("first", label)])
        second = statistics.median(times[("second", label)])
        print(f"{label:<20} first {first:6.1f} ms  second {second:6.1f} ms  "
              f"ratio {second / first:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
