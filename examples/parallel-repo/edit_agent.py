"""An example agent for worktree mode: edits the one file its task names, in its own
workspace, and leaves the change uncommitted (the wrapper commits it on the task branch).

The task's description says which file (``file: NAME``). The agent's working directory
is its workspace; TINYSCHEDULER_WORKSPACE and TINYSCHEDULER_BRANCH say the same.
"""

import json
import os
import sys
import time

with open(os.environ["TINYSCHEDULER_TASK_FILE"], encoding="utf-8") as handle:
    task = json.load(handle)
name = task["description"].split("file:", 1)[1].strip()
agent = os.environ.get("TINYSCHEDULER_AGENT", "?")
print(f"{agent}: task {task['id']} in {os.getcwd()} on {os.environ['TINYSCHEDULER_BRANCH']}")
print(f"{agent}: the workspace has {sorted(os.listdir('.'))}")
time.sleep(float(os.environ.get("EXAMPLE_AGENT_SECONDS", "1.0")))  # three at once
with open(name, "a", encoding="utf-8") as handle:
    handle.write(f"{task['title'].lower()} (by {agent})\n")
print(f"{agent}: edited {name}")
