"""Print tasks as they finish; exit 0 when the demo backlog is done (1 on timeout)."""

import argparse
import json
import subprocess
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--timeout", type=float, default=25.0)
deadline = time.monotonic() + parser.parse_args().timeout
seen: dict[str, str] = {}
while time.monotonic() < deadline:
    out = subprocess.run(["tinyscheduler", "task", "list", "--json"], capture_output=True,
                         text=True, check=True).stdout
    tasks = json.loads(out)
    for task in tasks:
        state = (task["status"], task["attempts"])
        if seen.get(task["id"]) != state:
            seen[task["id"]] = state
            if task["status"] == "complete":
                print(f"   done: task {task['id']} {task['title']!r} by {task['assignee']}",
                      flush=True)
            elif task["status"] == "idle" and task["attempts"]:
                print(f"   retry: task {task['id']} {task['title']!r} failed attempt "
                      f"{task['attempts']}, requeued", flush=True)
    if tasks and all(t["status"] in ("complete", "failed", "cancelled") for t in tasks):
        sys.exit(0)
    time.sleep(0.2)
print("timed out waiting for the backlog", file=sys.stderr)
sys.exit(1)
