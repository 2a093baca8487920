#!/bin/sh
# The bundled example behind `make run`: a small backlog in the embedded task store, run
# by a harmless example agent under the daemon, then `status` and `task list`.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DEMO="$ROOT/demo-state"

rm -rf "$DEMO"
mkdir -p "$DEMO"
cp "$HERE/agent-control.json" "$DEMO/agent-control.json"
cd "$DEMO"  # no env file of the caller's directory is picked up
unset $(env | sed -n 's/^\(TINYSCHEDULER_[A-Z_]*\)=.*/\1/p') 2>/dev/null || true
export TINYSCHEDULER_BASE_PATH="$DEMO"
# {title} sits inside its option's word: a title starting with "-" stays a value.
export TINYSCHEDULER_AGENT_COMMAND="python $HERE/example_agent.py {task_id} --title={title}"
export TINYSCHEDULER_AGENT_LIMITS="builder-a=1,builder-b=1,reviewer=1"
export TINYSCHEDULER_RETRY_BACKOFF_SEC=1
export TINYSCHEDULER_HEARTBEAT_SEC=2
export TINYSCHEDULER_LOOP_INTERVAL_SEC=30

say() { printf '\n== %s\n' "$*"; }

say "validate-config --fix (directories, agent registry)"
tinyscheduler validate-config --fix
say "task import examples/demo/backlog.json"
tinyscheduler task import "$HERE/backlog.json"
tinyscheduler task list
say "run --once --dry-run: what the first pass would do (blocked tasks wait)"
tinyscheduler run --once --dry-run
DASH=""
if python -c "import starlette, uvicorn, jinja2, prometheus_client" 2>/dev/null; then
    say "dashboard (a separate read-only process) for the demo's duration"
    tinyscheduler dashboard --bind "${DEMO_DASHBOARD_BIND:-127.0.0.1:8765}" &
    DASH=$!
    sleep 1
    echo "   (DEMO_HOLD=60 keeps it up 60 s after the run)"
else
    say "dashboard: not installed here; pip install -e '.[dashboard]', then: tinyscheduler --base-path $DEMO dashboard"
fi
say "run --daemon until the backlog is done (wakes up as soon as a task finishes)"
tinyscheduler run --daemon &
DAEMON=$!
trap 'kill $DAEMON $DASH 2>/dev/null || true' EXIT
python "$HERE/watch.py" --timeout 25
kill -TERM $DAEMON
wait $DAEMON || true
if [ -n "$DASH" ]; then
    sleep "${DEMO_HOLD:-0}"
    kill -TERM $DASH 2>/dev/null || true
    wait $DASH || true
fi
trap - EXIT
say "tinyscheduler status"
tinyscheduler status || true
say "tinyscheduler task list"
tinyscheduler task list
say "task 5's history (failed once, then retried)"
tinyscheduler task show 5 | sed -n '/^history/,$p'
