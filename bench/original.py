"""``run --once --dry-run`` of tinyscheduler and of the original TinyScheduler against one
real TinyTask server holding TASKS tasks, interleaved run by run.

Neither TinyTask nor the original scheduler is part of this project: pass where they are.

    .venv/bin/python bench/original.py --tinytask-dir DIR --original-dir DIR \\
        --original-python PYTHON [--runs 20] [--tasks 200] [--tinyscheduler SCRIPT ...]

``--tinytask-dir``: a TinyTask checkout, built (``npm ci && npm run build``: it has
``build/index.js``); the bench starts it on a free loopback port with a fresh database, in
HTTP mode with the SSE transport enabled (``TINYTASK_ENABLE_SSE=true``), since the
original talks MCP over SSE (against the default Streamable HTTP transport it waits
forever) while tinyscheduler uses the REST API of the same server. The original also asks
for an MCP tool current TinyTask lacks (``get_unassigned_in_queue``): that call fails fast
and the summary line says so; its other calls work.
``--original-dir``: a checkout of the original TinyScheduler (it has
``src/scheduler/cli.py``). ``--original-python``: an interpreter with its dependencies
(``mcp``, ``python-dotenv``). The same three can be given as BENCH_TINYTASK_DIR,
BENCH_ORIGINAL_DIR and BENCH_ORIGINAL_PYTHON; without any, the bench says it is skipped
and exits 0 (so ``make bench`` passes on machines without them).

The tasks: half in queues ``dev``/``qa`` unassigned, half assigned to the four agents (two
slots each); one in ten blocked by the task before it. Both schedulers read the same env
file (the variables are the same; each has its own base path), with equal agents, limits
and recipes.
Bytecode caching is on, as users have it (``PYTHONDONTWRITEBYTECODE`` removed), and a
warm-up run of each fills ``__pycache__`` and checks that both exit 0.

``--tinyscheduler``: the console script measured, by default this venv's; give it more
than once to measure several installs in the same rounds (e.g. a venv of ``main`` and one
of a branch: before and after). An editable dev install measures more than users pay
(an editable finder on every import), so measure a plain ``pip install .`` venv too.

Also timed in the same rounds, the floor: the first install's Python starting, importing
the fixed dependencies this command needs (click for the command line, python-dotenv for
the env file, tenacity for retries, httpx for TinyTask's REST API) and building one httpx
client, with no call made and no tinyscheduler code run. No tinyscheduler built on those
dependencies can be faster than that, so original / floor is the highest ratio this bench
can show.

Prints the median (and 10th/90th percentile) wall time of each, its median CPU time (user
+ system: steadier than wall time on a shared machine; the server's time is not in it),
and the ratios original / tinyscheduler for each install, and original / floor.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CONSOLE_SCRIPT, clean_env, median  # noqa: E402

AGENTS = {"vaela": "dev", "remy": "dev", "oscar": "qa", "ivy": "qa"}
LIMITS = {"vaela": 2, "remy": 2, "oscar": 2, "ivy": 2}
SKIPPED = ("skipped: pass --tinytask-dir DIR --original-dir DIR --original-python PYTHON "
           "(or BENCH_TINYTASK_DIR, BENCH_ORIGINAL_DIR, BENCH_ORIGINAL_PYTHON) to compare "
           "with the original TinyScheduler")
SERVER_START_SEC = 30.0
#: The floor: what any run --once --dry-run on these dependencies pays before its own code.
FLOOR_CODE = ("import click, dotenv, tenacity, httpx; "
              "httpx.Client(base_url='http://127.0.0.1', verify=False).close()")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, body: dict | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read(16 * 2**20))


def start_server(tinytask_dir: Path, node: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "TINYTASK_MODE": "http", "TINYTASK_ENABLE_SSE": "true",
           "TINYTASK_HOST": "127.0.0.1", "TINYTASK_PORT": str(port),
           "TINYTASK_DB_PATH": str(tmp / "tinytask.db"), "TINYTASK_LOG_LEVEL": "warn"}
    log = open(tmp / "tinytask.log", "wb")  # noqa: SIM115 (closed with the process)
    server = subprocess.Popen([node, str(tinytask_dir / "build" / "index.js")],
                              cwd=tinytask_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_SEC
    while time.monotonic() < deadline:
        if server.poll() is not None:
            break
        try:
            get_json(url + "/health")
            return server, url
        except OSError:
            time.sleep(0.1)
    stop_server(server)
    tail = (tmp / "tinytask.log").read_text(errors="replace")[-600:]
    raise SystemExit(f"TinyTask in {tinytask_dir} did not answer /health within "
                     f"{SERVER_START_SEC:.0f} s:\n{tail}")


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def seed(url: str, count: int) -> None:
    """Half unassigned in a queue, half assigned; one in ten blocked by its predecessor."""
    agents = list(AGENTS)
    for i in range(count):
        body: dict = {"title": f"bench task {i + 1}", "created_by": "bench",
                      "priority": (i // 3) % 4, "description": "a task of the original bench"}
        if i % 2:
            agent = agents[(i // 2) % len(agents)]
            body.update(assigned_to=agent, queue_name=AGENTS[agent])
        else:
            body["queue_name"] = ("dev", "qa")[(i // 2) % 2]
        if i % 10 == 9:
            body["blocked_by_task_id"] = i  # the task created just before (ids start at 1)
        get_json(url + "/api/v1/tasks", body)
    listed = get_json(url + "/api/v1/tasks?limit=1000")
    if not isinstance(listed, list) or len(listed) != count:
        raise SystemExit(f"seeding TinyTask: expected {count} tasks, the server lists "
                         f"{len(listed) if isinstance(listed, list) else listed!r}")


def make_base(base: Path, url: str) -> Path:
    """A base path with agents and recipes, and the env file both schedulers read."""
    (base / "recipes").mkdir(parents=True)
    for agent in AGENTS:
        (base / "recipes" / f"{agent}.yaml").write_text(f"title: {agent}\n")
    (base / "agent-control.json").write_text(json.dumps(
        [{"agentName": name, "agentType": queue} for name, queue in AGENTS.items()]))
    env_file = base / "scheduler.env"
    env_file.write_text("\n".join([
        f"TINYSCHEDULER_BASE_PATH={base}",
        f"TINYSCHEDULER_MCP_ENDPOINT={url}",
        "TINYSCHEDULER_AGENT_CONTROL_FILE=agent-control.json",
        f"TINYSCHEDULER_AGENT_LIMITS={json.dumps(LIMITS)}",
        f"TINYSCHEDULER_GOOSE_BIN={shutil.which('true') or '/bin/true'}",
        "TINYSCHEDULER_LOG_LEVEL=INFO",
    ]) + "\n")
    return env_file


def planned(which: str, output: str) -> str:
    """What the run said it would do, in a few words, so both can be seen to have worked."""
    if which == "floor":
        return "imports and a client only"
    if which.startswith("tinyscheduler"):
        found = re.search(r"dry run: (would spawn \d+).*?(\d+ blocked)", output)
        return ", ".join(found.groups()) if found else "?"
    matched = re.search(r"Unassigned tasks matched: (\d+)", output)
    spawned = re.search(r"Already-assigned tasks spawned: (\d+)", output)
    blocked = re.search(r"Blocked tasks skipped: (\d+)", output)
    failed = len(re.findall(r"Warning: Failed", output))
    text = (f"would spawn {int(matched[1]) + int(spawned[1])}, {blocked[1]} blocked"
            if matched and spawned and blocked else "?")
    return text + (f" ({failed} listing calls failed)" if failed else "")


def timed(argv: list[str], env: dict[str, str],
          cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall and CPU (user + system) seconds of one run, and the run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def settings_from(args: argparse.Namespace,
                  parser: argparse.ArgumentParser) -> tuple[Path, Path, Path] | None:
    given = {"--tinytask-dir": args.tinytask_dir or os.environ.get("BENCH_TINYTASK_DIR"),
             "--original-dir": args.original_dir or os.environ.get("BENCH_ORIGINAL_DIR"),
             "--original-python": (args.original_python
                                   or os.environ.get("BENCH_ORIGINAL_PYTHON"))}
    if not any(given.values()):
        return None
    missing = [flag for flag, value in given.items() if not value]
    if missing:
        parser.error(f"missing {', '.join(missing)} (all of --tinytask-dir, --original-dir "
                     "and --original-python are needed)")
    # Absolute but not resolved: a venv's python is a symlink to an interpreter that,
    # started by its resolved name, does not see the venv's packages.
    tinytask, original, python = (Path(os.path.abspath(os.path.expanduser(str(value))))
                                  for value in given.values())
    if not (tinytask / "build" / "index.js").is_file():
        parser.error(f"--tinytask-dir {tinytask}: no build/index.js; expected a built "
                     "TinyTask checkout (run `npm ci && npm run build` in it)")
    if not (original / "src" / "scheduler" / "cli.py").is_file():
        parser.error(f"--original-dir {original}: no src/scheduler/cli.py; expected a "
                     "checkout of the original TinyScheduler")
    if not (python.is_file() and os.access(python, os.X_OK)):
        parser.error(f"--original-python {python}: not an executable file; expected a "
                     "Python with the original's dependencies (mcp, python-dotenv)")
    return tinytask, original, python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tinytask-dir", help="a built TinyTask checkout")
    parser.add_argument("--original-dir", help="a checkout of the original TinyScheduler")
    parser.add_argument("--original-python", help="a Python with the original's dependencies")
    parser.add_argument("--node", default="node", help="the Node.js to run TinyTask with")
    parser.add_argument("--tinyscheduler", action="append",
                        help="a tinyscheduler console script to measure (repeatable; "
                             "default: this venv's; a plain `pip install .` venv is what "
                             "users run)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.tasks < 1:
        parser.error("--runs and --tasks must be >= 1")
    paths = settings_from(args, parser)
    if paths is None:
        print(SKIPPED)
        return 0
    tinytask_dir, original_dir, original_python = paths
    node = shutil.which(args.node)
    if node is None:
        parser.error(f"--node {args.node!r}: not found on PATH; pass the node executable")
        return 2  # not reached: parser.error exits

    with tempfile.TemporaryDirectory(prefix="tinyscheduler-bench-original-") as tmp_name:
        tmp = Path(tmp_name)
        server, url = start_server(tinytask_dir, node, tmp)
        try:
            seed(url, args.tasks)
            env = clean_env()
            env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode caching on, as users have it
            scripts = [os.path.abspath(path) for path in
                       (args.tinyscheduler or [str(CONSOLE_SCRIPT)])]
            labels = (["tinyscheduler"] if len(scripts) == 1
                      else [f"tinyscheduler {n}" for n in range(1, len(scripts) + 1)])
            commands: dict[str, tuple[list[str], dict[str, str], Path]] = {}
            env_file = make_base(tmp / "original", url)
            commands["original"] = (
                [str(original_python), "-m", "src.scheduler.cli", "--env-file", str(env_file),
                 "run", "--once", "--dry-run"],
                {**env, "PYTHONPATH": str(original_dir)}, tmp / "original")
            for number, (label, script) in enumerate(zip(labels, scripts, strict=True)):
                base = tmp / f"tinyscheduler-{number}"
                env_file = make_base(base, url)
                commands[label] = ([script, "--env-file", str(env_file), "run", "--once",
                                    "--dry-run"], env, base)
            # The console script's own interpreter: its shebang names the venv's python.
            floor_python = Path(scripts[0]).parent / "python"
            commands["floor"] = ([str(floor_python), "-c", FLOOR_CODE], env, tmp)
            summary = {}
            for which, (argv_, run_env, cwd) in commands.items():  # warm-up, and a check
                _, _, proc = timed(argv_, run_env, cwd)
                if proc.returncode != 0:
                    raise SystemExit(f"{which} run --once --dry-run exited {proc.returncode}:"
                                     f"\n{(proc.stdout + proc.stderr)[-800:]}")
                summary[which] = planned(which, proc.stdout + proc.stderr)
            times: dict[str, list[float]] = {which: [] for which in commands}
            cpu: dict[str, list[float]] = {which: [] for which in commands}
            order = list(commands)
            for run in range(args.runs):  # each round in another order
                shift = run % len(order)
                for which in order[shift:] + order[:shift]:
                    argv_, run_env, cwd = commands[which]
                    elapsed, used, proc = timed(argv_, run_env, cwd)
                    if proc.returncode != 0:
                        raise SystemExit(f"{which} exited {proc.returncode} in run {run + 1}:"
                                         f"\n{(proc.stdout + proc.stderr)[-800:]}")
                    times[which].append(elapsed * 1000)
                    cpu[which].append(used * 1000)
        finally:
            stop_server(server)

    print(f"run --once --dry-run against TinyTask ({tinytask_dir}) with {args.tasks} tasks, "
          f"{args.runs} interleaved runs each, bytecode caching on")
    print(f"  original: {original_python} -m src.scheduler.cli (in {original_dir})")
    for label, script in zip(labels, scripts, strict=True):
        print(f"  {label}: {script}")
    for which, values in times.items():
        print(f"  {which:<16} median {median(values):7.1f} ms  p10 {percentile(values, 0.1):7.1f}"
              f"  p90 {percentile(values, 0.9):7.1f}  cpu {median(cpu[which]):7.1f} ms  "
              f"({summary[which]})")
    for label in labels:
        ratio = median(times["original"]) / median(times[label])
        rounds = [o / t for o, t in zip(times["original"], times[label], strict=True)]
        print(f"  ratio original / {label}: {ratio:.2f}x (median of the per-round ratios "
              f"{statistics.median(rounds):.2f}x; of CPU time "
              f"{median(cpu['original']) / median(cpu[label]):.2f}x)")
    print(f"  ratio original / floor: {median(times['original']) / median(times['floor']):.2f}x"
          " (the most any tinyscheduler on click, python-dotenv, tenacity and httpx can reach)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
