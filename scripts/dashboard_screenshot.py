"""Screenshots of the dashboard with a busy demo, for the docs (docs/dashboard.png and
docs/dashboard-task.png).

Builds a demo in a temporary directory (five agents in two queues, 400 tasks, some
blocked, some failing, an agent that prints progress lines), runs the daemon and the
dashboard for a while, and photographs the page with Debian's chromium through
Playwright. Needs the dashboard and dev extras and /usr/bin/chromium.

    .venv/bin/python scripts/dashboard_screenshot.py [--seconds 150] [--out docs]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
AGENT = r'''
import hashlib, os, sys, time
task, title = sys.argv[1], sys.argv[2]
agent = os.environ.get("TINYSCHEDULER_AGENT", "?")
attempt = int(os.environ.get("TINYSCHEDULER_ATTEMPT", "1"))
seed = int(hashlib.sha256(f"{task}/{attempt}".encode()).hexdigest(), 16)
steps = 6 + seed % 12
words = ["reading the code", "planning the change", "editing files", "running the tests",
         "fixing a failing test", "running the linters", "writing the summary"]
print(f"{agent}: task {task} {title!r}, attempt {attempt}", flush=True)
for step in range(steps):
    time.sleep(0.6 + (seed >> step) % 7 / 10)
    print(f"{agent}: step {step + 1}/{steps}: {words[(seed >> (2 * step)) % len(words)]}",
          flush=True)
if seed % 8 == 0:
    print(f"{agent}: 2 tests failed; giving up on this attempt", flush=True)
    sys.exit(1)
print(f"{agent}: done, opened a pull request", flush=True)
'''
AREAS = ["login form", "session store", "rate limiter", "billing export", "search index",
         "audit log", "email templates", "CSV import", "settings page", "API pagination",
         "webhook retries", "password reset", "dark mode", "cache layer", "metrics endpoint"]
VERBS = ["Fix", "Refactor", "Add tests for", "Document", "Speed up", "Review"]


def backlog() -> list[dict]:
    tasks: list[dict] = []
    for index in range(400):
        area, verb = AREAS[index % len(AREAS)], VERBS[(index // len(AREAS)) % len(VERBS)]
        queue = "review" if verb == "Review" else "build"
        spec = {"title": f"{verb} the {area}", "queue": queue, "priority": index % 4}
        if index >= 15 and index % 6 == 0:
            spec["blocked_by"] = [f"#{index - 15}"]
        tasks.append(spec)
    return tasks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent
                        / "docs")
    args = parser.parse_args()
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="tinyscheduler-shot-") as tmp:
        base = Path(tmp)
        (base / "agent.py").write_text(AGENT)
        (base / "agent-control.json").write_text(json.dumps(
            [{"agentName": name, "agentType": queue} for name, queue in (
                ("builder-ada", "build"), ("builder-bo", "build"), ("builder-cy", "build"),
                ("reviewer-di", "review"), ("reviewer-ed", "review"))]))
        (base / "backlog.json").write_text(json.dumps(backlog()))
        env = {k: v for k, v in os.environ.items() if not k.startswith("TINYSCHEDULER_")}
        env.update({
            "TINYSCHEDULER_BASE_PATH": str(base),
            # python3 from PATH: the attempt log shows the agent's argv
            "TINYSCHEDULER_AGENT_COMMAND": f"python3 -S {shlex.quote(str(base / 'agent.py'))} "
                                           "{task_id} {title}",
            "TINYSCHEDULER_AGENT_LIMITS": "builder-ada=3,builder-bo=3,builder-cy=2,"
                                          "reviewer-di=2,reviewer-ed=1",
            "TINYSCHEDULER_RETRY_BACKOFF_SEC": "20", "TINYSCHEDULER_MAX_ATTEMPTS": "2",
            "TINYSCHEDULER_HEARTBEAT_SEC": "2", "TINYSCHEDULER_LOOP_INTERVAL_SEC": "5",
        })
        cli = str(BIN / "tinyscheduler")
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        subprocess.run([cli, "validate-config", "--fix"], env=env, check=True, **quiet)
        subprocess.run([cli, "task", "import", str(base / "backlog.json")], env=env,
                       check=True, **quiet)
        daemon = subprocess.Popen([cli, "run", "--daemon"], env=env, **quiet)
        dashboard = subprocess.Popen([cli, "dashboard", "--bind", "127.0.0.1:0"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            url = re.search(rb"(http://\S+)/ ", dashboard.stdout.readline()).group(1).decode()
            time.sleep(args.seconds)
            subprocess.run([cli, "pause", "--agent", "reviewer-ed"], env=env, check=True,
                           **quiet)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium",
                    args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                          "--no-first-run", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync"])
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(url + "/")
                page.wait_for_timeout(1500)
                args.out.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out / "dashboard.png"), full_page=True)
                running = page.locator("#running tbody tr[data-task] a").first
                page.goto(url + running.get_attribute("href", timeout=5000))
                page.wait_for_timeout(2500)
                page.screenshot(path=str(args.out / "dashboard-task.png"))
                browser.close()
        finally:
            # Let the running agents finish (no new ones start), then stop both processes.
            subprocess.run([cli, "pause"], env=env, **quiet)
            deadline = time.monotonic() + 90
            while list((base / "state" / "running").glob("task_*.json")) \
                    and time.monotonic() < deadline:
                time.sleep(0.5)
            dashboard.terminate()
            daemon.terminate()
            dashboard.wait(timeout=30)
            daemon.wait(timeout=60)
    print(f"wrote {args.out / 'dashboard.png'} and {args.out / 'dashboard-task.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
