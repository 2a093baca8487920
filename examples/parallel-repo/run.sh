#!/bin/sh
# `make demo-parallel`: three agents edit three files of one small git repository at the
# same time, each in its own worktree on its own branch; the repository's own working
# tree is never touched. Made on the fly in a fresh `demo-parallel-state/`.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DEMO="$ROOT/demo-parallel-state"
REPO="$DEMO/repo"

rm -rf "$DEMO"
mkdir -p "$DEMO"
unset $(env | sed -n 's/^\(TINYSCHEDULER_[A-Z_]*\)=.*/\1/p') 2>/dev/null || true
unset $(env | sed -n 's/^\(GIT_[A-Z_]*\)=.*/\1/p') 2>/dev/null || true

say() { printf '\n== %s\n' "$*"; }

say "a small git repository in $REPO"
git init -q -b main "$REPO"
printf 'hello\n' > "$REPO/greeting.txt"
printf 'red\n' > "$REPO/colors.txt"
printf 'one\n' > "$REPO/numbers.txt"
git -C "$REPO" add -A
git -C "$REPO" -c user.name=demo -c user.email=demo@localhost commit -q -m "three files"
git -C "$REPO" log --oneline

cp "$HERE/agent-control.json" "$DEMO/agent-control.json"
export TINYSCHEDULER_BASE_PATH="$DEMO"
export TINYSCHEDULER_WORKSPACE_MODE=worktree
export TINYSCHEDULER_REPO_DIR="$REPO"
export TINYSCHEDULER_WORKSPACES_DIR="$DEMO/workspaces"
export TINYSCHEDULER_GIT_AUTHOR_NAME="demo agents"
export TINYSCHEDULER_GIT_AUTHOR_EMAIL="agents@localhost"
export TINYSCHEDULER_MIN_FREE_DISK_MB=50
export TINYSCHEDULER_AGENT_COMMAND="python $HERE/edit_agent.py"
export TINYSCHEDULER_HOOK_AFTER_CREATE="git log -1 '--format=after_create: the workspace starts at %h %s'"
export TINYSCHEDULER_AGENT_LIMITS="ana=1,ben=1,cy=1"
export TINYSCHEDULER_HEARTBEAT_SEC=2
export TINYSCHEDULER_LOOP_INTERVAL_SEC=30

say "validate-config --fix (the repository, the target branch main)"
tinyscheduler validate-config --fix
say "task import examples/parallel-repo/backlog.json"
tinyscheduler task import "$HERE/backlog.json"
say "run --daemon until the backlog is done: three agents at once"
tinyscheduler run --daemon &
DAEMON=$!
trap 'kill $DAEMON 2>/dev/null || true' EXIT
python "$ROOT/examples/demo/watch.py" --timeout 30
kill -TERM $DAEMON
wait $DAEMON || true
trap - EXIT
say "each task's work is a commit on its own branch"
for id in 1 2 3; do
    git -C "$REPO" log --format="   %D: %s (%an)" -1 "tinyscheduler/task-$id"
    git -C "$REPO" diff --stat "main" "tinyscheduler/task-$id" | sed 's/^/   /'
done
say "the repository's own working tree is untouched (git status is empty)"
git -C "$REPO" status --short
git -C "$REPO" worktree list
say "tinyscheduler workspace list (completed tasks: worktree removed, branch kept)"
tinyscheduler workspace list
say "task 1's attempt log"
cat "$DEMO/state/logs/tasks/1/attempt-1.log"
