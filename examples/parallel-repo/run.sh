#!/bin/sh
# `make demo-parallel`: four agents edit one small git repository at the same time, each
# in its own worktree on its own branch; the merge queue lands each branch on the target
# branch `integration` as it finishes, one at a time. Two tasks edit the same file: the
# second to finish conflicts, is re-run on the new target and merges. The repository's
# own working tree is never touched. Made on the fly in a fresh `demo-parallel-state/`.
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
git -C "$REPO" branch integration  # the merge target: not the branch checked out here
git -C "$REPO" log --oneline

cp "$HERE/agent-control.json" "$DEMO/agent-control.json"
export TINYSCHEDULER_BASE_PATH="$DEMO"
export TINYSCHEDULER_WORKSPACE_MODE=worktree
export TINYSCHEDULER_REPO_DIR="$REPO"
export TINYSCHEDULER_TARGET_BRANCH=integration
export TINYSCHEDULER_MERGE=merge
export TINYSCHEDULER_MERGE_CHECK_COMMAND="python -c 'import pathlib; assert pathlib.Path(\"greeting.txt\").read_text()'"
export TINYSCHEDULER_RETRY_BACKOFF_SEC=0
export TINYSCHEDULER_WORKSPACES_DIR="$DEMO/workspaces"
export TINYSCHEDULER_GIT_AUTHOR_NAME="demo agents"
export TINYSCHEDULER_GIT_AUTHOR_EMAIL="agents@localhost"
export TINYSCHEDULER_MIN_FREE_DISK_MB=50
export TINYSCHEDULER_AGENT_COMMAND="python $HERE/edit_agent.py"
export TINYSCHEDULER_HOOK_AFTER_CREATE="git log -1 '--format=after_create: the workspace starts at %h %s'"
export TINYSCHEDULER_AGENT_LIMITS="ana=2,ben=1,cy=1"
export TINYSCHEDULER_HEARTBEAT_SEC=2
export TINYSCHEDULER_LOOP_INTERVAL_SEC=30

say "validate-config --fix (the repository, the target branch integration)"
tinyscheduler validate-config --fix
say "task import examples/parallel-repo/backlog.json"
tinyscheduler task import "$HERE/backlog.json"
say "run --daemon until the backlog is done: four agents at once, merged as they finish"
tinyscheduler run --daemon &
DAEMON=$!
trap 'kill $DAEMON 2>/dev/null || true' EXIT
python "$ROOT/examples/demo/watch.py" --timeout 60
kill -TERM $DAEMON
wait $DAEMON || true
trap - EXIT
say "the target branch integration holds every task's work, merged in finishing order"
git -C "$REPO" log --graph --format="%h %s" integration
say "greeting.txt on integration: both edits of the same file, the conflict resolved by a re-run"
git -C "$REPO" show integration:greeting.txt | sed 's/^/   /'
say "the conflicting attempt's work is kept on its own branch, never lost"
git -C "$REPO" branch --list 'tinyscheduler/*' | sed 's/^/ /'
say "the task that conflicted: its result and history"
for id in 1 4; do
    if tinyscheduler task show $id | grep -q "merge conflict"; then
        tinyscheduler task show $id | sed -n '/^  result/,/^  used/p;/^history:/,$p'
    fi
done
say "the repository's own working tree is untouched (git status is empty; main did not move)"
git -C "$REPO" status --short
git -C "$REPO" log --oneline -1 main
git -C "$REPO" worktree list
