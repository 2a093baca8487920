"""Real agents end to end (real scheduler, wrapper and agent processes, the local store):
the result protocol, rate-limit holds, budgets, prompts and presets."""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from test_reconciler import Scheduler, wait_for
from test_reconciler import make_scheduler as make_scheduler  # noqa: F401 - the fixture

from scheduler import clock

pytestmark = pytest.mark.processes

#: The agent: what it does depends on words in its task's title. It logs
#: "<task> <attempt> <agent> <outcome>" lines to runs.log.
AGENT = r'''
import json, os, sys
base, task, title = sys.argv[1], sys.argv[2], " ".join(sys.argv[3:])
attempt, agent = os.environ["TINYSCHEDULER_ATTEMPT"], os.environ["TINYSCHEDULER_AGENT"]
result_path = os.environ["TINYSCHEDULER_RESULT_FILE"]
count_file = os.path.join(base, "count-" + task)
runs = int(open(count_file).read()) + 1 if os.path.exists(count_file) else 1
open(count_file, "w").write(str(runs))

def log(outcome):
    with open(os.path.join(base, "runs.log"), "a") as f:
        f.write("%s %s %s %s\n" % (task, attempt, agent, outcome))

def result(**fields):
    with open(result_path, "w") as f:
        json.dump(fields, f)

if "ratelimited" in title and runs <= 3:
    log("rate-limited")
    print("Error: 429 Too Many Requests - rate limit reached", flush=True)
    sys.exit(1)
if "human" in title:
    log("needs-human")
    result(outcome="needs_human", summary="which database should it use?")
    sys.exit(0)
if "costly" in title:
    log("failed")
    result(outcome="failed", summary="tests still red", cost_usd=3.0, tokens_in=100,
           tokens_out=10)
    sys.exit(1)
if "spend" in title:
    log("succeeded")
    result(outcome="succeeded", summary="done", cost_usd=2.0)
    sys.exit(0)
if "badresult" in title:
    log("bad-result")
    open(result_path, "w").write("not json at all")
    sys.exit(3)
if "linkresult" in title:
    log("link-result")
    os.symlink("/etc/hostname", result_path)
    sys.exit(0)
if "asks" in title:
    log("asks")
    print("Apply these changes to 3 files? (y/n)", flush=True)
    import time
    time.sleep(60)
if "prompt" in title:
    with open(os.path.join(base, "prompt-" + task), "w") as f:
        f.write(sys.argv[-1])
log("succeeded")
'''


def _scheduler(make_scheduler, tmp_path: Path, agents: dict[str, str],
               command_tail: str = "{task_id} {title}", **settings: object) -> Scheduler:
    script = tmp_path / "real_agent.py"
    script.write_text(AGENT)
    command = (f"{shlex.quote(sys.executable)} -S {shlex.quote(str(script))} "
               f"{shlex.quote(str(tmp_path))} {command_tail}")
    return make_scheduler(agents, {name: 1 for name in agents}, AGENT_COMMAND=command,
                          **settings)


def _runs(tmp_path: Path) -> list[tuple[str, str, str, str]]:
    try:
        lines = (tmp_path / "runs.log").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [tuple(line.split()) for line in lines]  # type: ignore[misc]


def _throttle(s: Scheduler, agent: str) -> dict:
    return json.loads((s.state / "agents" / f"{agent}.json").read_text())


def _backdate_hold(s: Scheduler, agent: str) -> None:
    """Let the agent's hold run out without waiting for it (its streak is kept)."""
    path = s.state / "agents" / f"{agent}.json"
    record = json.loads(path.read_text())
    record["rate_limited_until"] = clock.to_iso(clock.now() - timedelta(seconds=1))
    path.write_text(json.dumps(record))


def _settle(s: Scheduler) -> None:
    wait_for(lambda: not s.leases(), what="the running attempts to finish")


def test_rate_limits_hold_the_agent_not_the_task(make_scheduler, tmp_path):
    s = _scheduler(make_scheduler, tmp_path, {"vaela": "dev", "damien": "dev"},
                   RATE_LIMIT_BACKOFF_SEC="100", RATE_LIMIT_BACKOFF_MAX_SEC="1000")
    limited = s.add("ratelimited task", "--agent", "vaela")
    others = [s.add(f"other {i}", "--queue", "dev") for i in range(3)]
    holds = []
    for round_ in range(3):
        s.run_once()
        _settle(s)
        assert s.statuses()[limited] == "idle", s.history(limited)
        record = _throttle(s, "vaela")
        requeued = [h for h in s.history(limited) if h["to_status"] == "idle"][-1]
        holds.append((clock.from_iso(record["rate_limited_until"])
                      - clock.from_iso(requeued["at"])).total_seconds())
        assert record["streak"] == round_ + 1
        # while vaela is held, the pass says why and damien takes the queue's work
        s.run_once()
        last = json.loads((s.state / "last-pass.json").read_text())
        held = {a["agent"]: a.get("held", "") for a in last["agents"]}
        assert f"({['1st', '2nd', '3rd'][round_]} in a row)" in held["vaela"]
        assert held["damien"] == ""
        _settle(s)
        _backdate_hold(s, "vaela")
    s.pass_until(lambda: s.statuses()[limited] == "complete", what="the limited task to finish")
    _settle(s)
    # the delays grew 100 -> 200 -> 400 s (a second of slack for the clock between steps)
    assert [round(h) for h in holds] == pytest.approx([100, 200, 400], abs=2)
    runs = _runs(tmp_path)
    mine = [r for r in runs if r[0] == limited]
    assert [r[3] for r in mine] == ["rate-limited"] * 3 + ["succeeded"]
    assert {r[1] for r in mine} == {"1"}, "a rate limit never counts as an attempt"
    assert {r[2] for r in mine} == {"vaela"}
    assert all(r[2] == "damien" for r in runs if r[0] in others)
    assert s.tasks()[limited].attempts == 0
    assert _throttle(s, "vaela")["streak"] == 0, "the first success ends the run of limits"
    assert "rate-limited: its output says" in " ".join(h["detail"] for h in s.history(limited))


def test_needs_human_parks_with_the_agents_summary(make_scheduler, tmp_path):
    s = _scheduler(make_scheduler, tmp_path, {"vaela": "dev"})
    task = s.add("human please", "--queue", "dev")
    s.run_once()
    _settle(s)
    found = s.tasks()[task]
    assert found.status == "failed" and found.parked
    assert found.last_error == "needs a person: which database should it use?"
    assert len(_runs(tmp_path)) == 1
    s.run_once()
    assert len(_runs(tmp_path)) == 1, "a task that needs a person is not retried"


def test_the_cost_budget_parks_after_the_attempt_that_crossed_it(make_scheduler, tmp_path):
    s = _scheduler(make_scheduler, tmp_path, {"vaela": "dev"}, MAX_TASK_COST_USD="5",
                   MAX_ATTEMPTS="10")
    task = s.add("costly work", "--queue", "dev")
    s.pass_until(lambda: s.tasks()[task].status == "failed", what="the task to be parked")
    _settle(s)
    assert [r[1] for r in _runs(tmp_path)] == ["1", "2"]
    found = s.tasks()[task]
    assert found.last_error == "budget spent: $6.00 over all attempts, MAX_TASK_COST_USD is 5"
    show = json.loads(s.cli("task", "show", task, "--json").stdout)
    assert (show["cost_usd"], show["tokens_in"], show["tokens_out"]) == (6.0, 200, 20)
    assert "used" in s.cli("task", "show", task).stdout
    assert "$6.00, 200 tokens in, 20 out" in s.cli("task", "show", task).stdout


def test_the_daily_agent_budget_pauses_until_the_next_day(make_scheduler, tmp_path):
    s = _scheduler(make_scheduler, tmp_path, {"vaela": "dev"}, AGENT_DAILY_COST_MAX_USD="3")
    first, second, third = (s.add(f"spend {i}", "--queue", "dev") for i in range(3))
    s.run_once()
    _settle(s)
    s.run_once()
    _settle(s)
    assert [s.statuses()[t] for t in (first, second, third)] == ["complete", "complete", "idle"]
    assert _throttle(s, "vaela")["cost_usd"] == 4.0
    s.run_once()
    last = json.loads((s.state / "last-pass.json").read_text())
    assert last["skipped"] == {"budget": 1}
    assert last["cost_today_usd"] == {"vaela": 4.0}
    assert "succeeded: exit code 0" in s.history(first)[-1]["detail"]
    assert ", $2.00, attempt 1" in s.history(first)[-1]["detail"]
    assert "its daily budget is $3.00; paused until" in last["agents"][0]["held"]
    # the next UTC day the spending starts from zero
    path = s.state / "agents" / "vaela.json"
    record = json.loads(path.read_text())
    record["cost_day"] = (clock.now() - timedelta(days=1)).date().isoformat()
    path.write_text(json.dumps(record))
    s.run_once()
    _settle(s)
    assert s.statuses()[third] == "complete"


def test_a_bad_result_file_is_noted_and_the_exit_code_decides(make_scheduler, tmp_path):
    s = _scheduler(make_scheduler, tmp_path, {"vaela": "dev"}, MAX_ATTEMPTS="1")
    bad = s.add("badresult", "--queue", "dev")
    link = s.add("linkresult", "--queue", "dev")
    s.pass_until(lambda: all(s.statuses()[t] != "idle" and s.statuses()[t] != "working"
                             for t in (bad, link)), what="both tasks to end")
    _settle(s)
    tasks = s.tasks()
    assert tasks[bad].status == "failed" and "exit code 3" in tasks[bad].last_error
    assert tasks[link].status == "complete"
    logs = s.state / "logs" / "tasks"
    assert "result file ignored: result is not UTF-8 JSON" in \
        (logs / bad / "attempt-1.log").read_text()
    assert "result file ignored: cannot open attempt-1.result.json" in \
        (logs / link / "attempt-1.log").read_text()


def test_the_prompt_is_one_argument_from_the_template(make_scheduler, tmp_path):
    template = tmp_path / "prompt.txt"
    template.write_text("Do task {id} ({queue}), attempt {attempt}: {title}\n{description}")
    s = _scheduler(make_scheduler, tmp_path, {"vaela": "dev"}, "{task_id} {title} {prompt}",
                   PROMPT_TEMPLATE_FILE=str(template))
    task = s.add("prompt -rf {title}", "--queue", "dev", "--description", "line 1\nline 2")
    s.run_once()
    _settle(s)
    assert (tmp_path / f"prompt-{task}").read_text() == \
        f"Do task {task} (dev), attempt 1: prompt -rf {{title}}\nline 1\nline 2\n"


def test_an_unreadable_template_fails_the_launch_naming_it(make_scheduler, tmp_path):
    s = _scheduler(make_scheduler, tmp_path, {"vaela": "dev"}, "{task_id} {prompt}",
                   PROMPT_TEMPLATE_FILE=str(tmp_path / "missing.txt"), MAX_ATTEMPTS="1")
    task = s.add("never runs", "--queue", "dev")
    s.run_once()
    _settle(s)
    assert "launch_failed" in s.tasks()[task].last_error
    assert "missing.txt cannot be read" in s.tasks()[task].last_error
    assert _runs(tmp_path) == []


# --- presets, each end to end with a fake CLI -----------------------------------------------

FAKE_CLAUDE = r'''#!/usr/bin/env python3
import json, sys
args = sys.argv[1:]
assert args[:6] == ["--print", "--output-format", "json", "--permission-mode", "acceptEdits",
                    "--"], args
open(sys.argv[0] + ".prompt", "w").write(args[6])
print(json.dumps({"type": "result", "subtype": "success", "is_error": False,
                  "result": "Fixed the bug.", "total_cost_usd": 0.25,
                  "usage": {"input_tokens": 1000, "output_tokens": 200}}))
'''

FAKE_CODEX = r'''#!/usr/bin/env python3
import json, sys
args = sys.argv[1:]
assert args[:4] == ["exec", "--json", "--full-auto", "--"], args
open(sys.argv[0] + ".prompt", "w").write(args[4])
for event in ({"type": "thread.started", "thread_id": "t"},
              {"type": "turn.completed", "usage": {"input_tokens": 500, "output_tokens": 50}},
              {"type": "turn.failed", "error": {"message": "stream disconnected"}}):
    print(json.dumps(event))
sys.exit(1)
'''

FAKE_AIDER = r'''#!/usr/bin/env python3
import sys
args = sys.argv[1:]
assert args[:3] == ["--yes-always", "--no-auto-commits", "--no-pretty"], args
assert args[3].startswith("--message=Task "), args
open(sys.argv[0] + ".prompt", "w").write(args[3])
print("Applied edit to app.py")
'''

FAKE_EXARP = r'''#!/usr/bin/env python3
import json, sys
args = sys.argv[1:]
assert args[:3] == ["-tool", "task_execute", "-args"], args
open(sys.argv[0] + ".prompt", "w").write(json.loads(args[3])["task_id"])
print('{"success": true}')
'''

FAKE_GOOSE = r'''#!/usr/bin/env python3
import sys
args = sys.argv[1:]
assert args[:3] == ["run", "--no-session", "--recipe"], args
assert args[4:5] == ["--params"] and args[5].startswith("task_id="), args
open(sys.argv[0] + ".prompt", "w").write(args[5])
'''


@pytest.mark.parametrize(("preset", "program", "fake", "status", "expected"), [
    ("claude", "claude", FAKE_CLAUDE, "complete", "Task {id}: -x preset\n"),
    ("codex", "codex", FAKE_CODEX, "failed", "Task {id}: -x preset\n"),
    ("aider", "aider", FAKE_AIDER, "complete", "--message=Task {id}: -x preset\n"),
    ("exarp-go", "exarp-go", FAKE_EXARP, "complete", "{id}"),
    ("goose", "goose", FAKE_GOOSE, "complete", "task_id={id}"),
])
def test_each_preset_runs_its_cli_end_to_end(make_scheduler, tmp_path, monkeypatch, preset,
                                             program, fake, status, expected):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / program
    exe.write_text(fake.replace("/usr/bin/env python3", sys.executable, 1))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "vaela.yaml").write_text("title: vaela\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1}, MAX_ATTEMPTS="1")
    del s.settings["AGENT_COMMAND"]
    env_file = tmp_path / "preset.env"
    proc = s.cli("--env-file", str(env_file), "validate-config", "--fix", "--preset", preset)
    assert proc.returncode in (0, 2), proc.stderr
    assert f"wrote preset {preset} to {env_file}" in proc.stdout
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    proc = s.cli("task", "add", "--queue", "dev", "--json", "--", "-x preset")
    task = json.loads(proc.stdout)["id"]
    proc = s.cli("--env-file", str(env_file), "run", "--once")
    assert proc.returncode == 0, proc.stderr
    _settle(s)
    assert s.statuses()[task] == status, s.history(task)
    assert Path(f"{exe}.prompt").read_text() == expected.format(id=task)
    if preset == "claude":
        show = json.loads(s.cli("task", "show", task, "--json").stdout)
        assert (show["cost_usd"], show["tokens_in"], show["tokens_out"]) == (0.25, 1000, 200)
        assert "agent: Fixed the bug." in show["result_summary"]
    if preset == "codex":
        assert "stream disconnected" in s.tasks()[task].last_error


def test_a_preset_never_overwrites_a_command_already_set(make_scheduler, tmp_path):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1})
    env_file = tmp_path / "mine.env"
    env_file.write_text("TINYSCHEDULER_AGENT_COMMAND=my-agent {task_id}\n")
    proc = s.cli("--env-file", str(env_file), "validate-config", "--fix", "--preset", "codex")
    assert "TINYSCHEDULER_AGENT_COMMAND is already set; left as it is" in proc.stdout
    assert env_file.read_text().startswith("TINYSCHEDULER_AGENT_COMMAND=my-agent {task_id}\n")
    assert "TINYSCHEDULER_AGENT_RESULT_ADAPTER=codex\n" in env_file.read_text()
    bad = s.cli("--env-file", str(env_file), "validate-config", "--fix", "--preset", "gpt")
    assert bad.returncode == 2 and "unknown preset 'gpt'; accepted: goose" in bad.stderr
    no_fix = s.cli("--env-file", str(env_file), "validate-config", "--preset", "codex")
    assert no_fix.returncode == 2 and "use it with --fix" in no_fix.stderr


def test_agents_presets_lists_every_preset(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1})
    out = s.cli("agents", "presets").stdout
    for name in ("goose", "claude", "codex", "aider", "exarp-go"):
        assert f"\n{name} " in f"\n{out}"
    assert "AGENT_RESULT_ADAPTER=claude" in out


def test_status_shows_a_held_agent_and_its_spending(make_scheduler, tmp_path):
    s = _scheduler(make_scheduler, tmp_path, {"vaela": "dev"}, AGENT_DAILY_COST_MAX_USD="1.5")
    task = s.add("spend it", "--queue", "dev")
    s.run_once()
    _settle(s)
    assert s.statuses()[task] == "complete"
    s.run_once()
    report = json.loads(s.cli("status", "--json").stdout)
    vaela = report["agents"][0]
    assert vaela["cost_today_usd"] == 2.0
    assert "its daily budget is $1.50" in vaela["held"]
    text = s.cli("status").stdout
    assert "$2.00 today" in text and "its daily budget is $1.50; paused until" in text


def test_an_agent_waiting_for_input_is_stopped_and_said_so(make_scheduler, tmp_path):
    s = _scheduler(make_scheduler, tmp_path, {"vaela": "dev"}, IDLE_TIMEOUT_SEC="1",
                   MAX_ATTEMPTS="1")
    task = s.add("asks a question", "--queue", "dev")
    s.run_once()
    wait_for(lambda: s.statuses()[task] == "failed", what="the idle agent to be stopped")
    error = s.tasks()[task].last_error
    assert "stalled" in error and "waiting for input?" in error
