"""What the attempt-log cap costs: an agent writing a lot of output, with and without it.

Each run is one real attempt through ``tinyscheduler run --once`` on a local store in a
temporary directory: the agent writes SIZE_MB of output in 64 KiB blocks (``head -c``
from /dev/zero, so the agent itself costs next to nothing) and the wrapper's own footer
says how long the attempt took. Uncapped (ATTEMPT_LOG_MAX_MB=0) the agent writes into the
log file directly; capped, its output goes through a pipe and the wrapper keeps head +
rolling tail. Printed: the median attempt time over RUNS attempts, the throughput, the
wrapper's CPU (user + system, from the wrapper process accounting of the whole pass) and
the final log size. Then, in this process, the CPU the wrapper's copy costs (time.process_time
of the loop that pumps the agent's pipe into the log, the agent being ``head -c``): wall
times on a loaded machine swing widely, CPU seconds much less. Uncapped, the wrapper
spends no CPU on the output at all.

    .venv/bin/python bench/attempt_log.py [--size-mb 100] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import clean_env, cli, table, wait_until, write_agents  # noqa: E402

from wrapper.attemptlog import AttemptLog  # noqa: E402

FOOTER = re.compile(rb"outcome succeeded, exit code 0, ([0-9.]+) s")


def one_attempt(size_mb: int, cap_mb: int) -> tuple[float, int]:
    base = Path(tempfile.mkdtemp(prefix="ts-bench-log-"))
    try:
        write_agents(base, {"a": "q"})
        env = clean_env(TASK_SOURCE="local", ATTEMPT_LOG_MAX_MB=cap_mb,
                        AGENT_COMMAND=f"head -c {size_mb}M /dev/zero")
        cli(base, env, "task", "add", "write a lot", "--queue", "q")
        cli(base, env, "run", "--once")
        log = base / "state" / "logs" / "tasks" / "1" / "attempt-1.log"

        def finished() -> bool:
            return log.exists() and FOOTER.search(log.read_bytes()[-4096:]) is not None

        if not wait_until(finished, timeout=300):
            raise RuntimeError(f"the attempt did not finish: {log}")
        match = FOOTER.search(log.read_bytes()[-4096:])
        assert match is not None
        return float(match.group(1)), log.stat().st_size
    finally:
        shutil.rmtree(base, ignore_errors=True)


def pump_cpu(size_mb: int, cap_mb: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of copying ``size_mb`` of agent output into a log."""
    with tempfile.TemporaryDirectory(prefix="ts-bench-pump-") as directory:
        log = AttemptLog(Path(directory) / "attempt-1.log", cap_mb << 20)
        output = log.agent_output()
        agent = subprocess.Popen(["head", "-c", f"{size_mb}M", "/dev/zero"], stdout=output)
        os.close(output)
        cpu, wall = time.process_time(), time.perf_counter()
        while log.fileno() is not None:
            select.select([log.fileno()], [], [], 1.0)
            log.pump()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        agent.wait()
        log.close()
    return cpu, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for cap in (0, 10, 100, 1000):
        times, size = [], 0
        for _ in range(args.runs):
            seconds, size = one_attempt(args.size_mb, cap)
            times.append(seconds)
        median = statistics.median(times)
        rows.append((f"{cap} MB" if cap else "off (direct)", f"{median:.3f} s",
                     f"{args.size_mb / median:.0f} MB/s", f"{size / 2**20:.1f} MiB"))
    print(f"agent writing {args.size_mb} MiB, median of {args.runs} attempts")
    print(table(("ATTEMPT_LOG_MAX_MB", "attempt", "throughput", "log size"), rows))
    rows = []
    for cap in (10, 100, 1000):
        runs = [pump_cpu(args.size_mb, cap) for _ in range(args.runs)]
        cpu = statistics.median(r[0] for r in runs)
        wall = statistics.median(r[1] for r in runs)
        rows.append((f"{cap} MB", f"{cpu:.3f} s", f"{cpu / args.size_mb * 100 * 1000:.0f} ms",
                     f"{wall:.3f} s"))
    print()
    print(f"the wrapper's copy of {args.size_mb} MiB (median of {args.runs}; uncapped: 0 CPU)")
    print(table(("ATTEMPT_LOG_MAX_MB", "wrapper CPU", "CPU per 100 MiB", "wall"), rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
