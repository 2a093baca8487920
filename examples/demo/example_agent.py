"""A harmless example agent: says what it would do, pretends to work, and exits.

tinyscheduler runs it as ``example_agent.py {task_id} --title={title}`` (the title inside
its option's word, so a title starting with "-" is never taken for an option) with the
task's fields in the JSON file named by TINYSCHEDULER_TASK_FILE. A task whose title contains "flaky"
fails on its first attempt, to show a retry.
"""

import json
import os
import sys
import time

task_id, title = sys.argv[1], sys.argv[2].removeprefix("--title=")
attempt = int(os.environ.get("TINYSCHEDULER_ATTEMPT", "1"))
agent = os.environ.get("TINYSCHEDULER_AGENT", "?")
with open(os.environ["TINYSCHEDULER_TASK_FILE"], encoding="utf-8") as handle:
    task = json.load(handle)

print(f"{agent}: starting task {task_id} {title!r} (attempt {attempt}, queue {task['queue']})")
time.sleep(float(os.environ.get("EXAMPLE_AGENT_SECONDS", "1.0")))
if "flaky" in title.lower() and attempt == 1:
    print(f"{agent}: the test failed this time; the scheduler will retry it")
    sys.exit(1)
print(f"{agent}: finished task {task_id}")
