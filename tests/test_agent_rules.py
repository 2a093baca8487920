"""The real-agent rules as pure functions: result files, rate limits, holds, budgets,
prompts, presets and adapters."""

from __future__ import annotations

import json
import os
import shlex
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from freezegun import freeze_time

from scheduler import clock
from scheduler.agents import adapters, holds, presets, prompt, ratelimit, result_file
from scheduler.agents.holds import Hold
from scheduler.agents.result_file import AgentResult, BadResultFile
from scheduler.config.registry import Agent, Registry
from scheduler.reconcile.planner import plan
from scheduler.sources.base import Result, RetryPolicy, Task, usage_of
from scheduler.state import throttles
from scheduler.state.throttles import AgentRecord
from wrapper.command import build_argv

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=timezone.utc)


# --- the result file ---------------------------------------------------------------------


def test_a_complete_result_is_read_field_by_field():
    said = result_file.parse(json.dumps({
        "outcome": "needs_human", "summary": "the spec contradicts itself",
        "retry_after_sec": 30, "cost_usd": 0.42, "tokens_in": 12034, "tokens_out": 3100,
        "links": ["https://git.example.com/app/pull/7"], "files_changed": ["src/a.py"],
    }).encode())
    assert said == AgentResult("needs_human", "the spec contradicts itself", 30.0, 0.42,
                               12034, 3100, ("https://git.example.com/app/pull/7",),
                               ("src/a.py",))
    assert said.usage() == {"cost_usd": 0.42, "tokens_in": 12034, "tokens_out": 3100}


@pytest.mark.parametrize(("document", "named"), [
    (b"not json", "not UTF-8 JSON"),
    (b"\xff\xfe", "not UTF-8 JSON"),
    (b"[1, 2]", "is a JSON array"),
    (b'{"outcome": "done"}', "field 'outcome' is 'done'; accepted: succeeded | failed"),
    (b'{"summary": 5}', "field 'summary' is 5; accepted: a string"),
    (b'{"cost_usd": -1}', "field 'cost_usd' is -1; accepted: a number from 0"),
    (b'{"cost_usd": true}', "field 'cost_usd' is True"),
    (b'{"cost_usd": 1e999}', "field 'cost_usd' is inf"),
    (b'{"tokens_in": 1.5}', "field 'tokens_in' is 1.5; accepted: a whole number"),
    (b'{"retry_after_sec": 99999999}', "field 'retry_after_sec'"),
    (b'{"links": ["javascript:alert(1)"]}', "field 'links'"),
    (b'{"links": "https://x"}', "field 'links' is 'https://x'; accepted: an array"),
    (b'{"files_changed": ["../etc/passwd"]}', "field 'files_changed'"),
    (b'{"files_changed": ["/etc/passwd"]}', "field 'files_changed'"),
])
def test_a_bad_result_names_the_field_and_what_is_accepted(document, named):
    with pytest.raises(BadResultFile) as caught:
        result_file.parse(document)
    assert named in str(caught.value)


def test_unknown_fields_are_kept_aside_not_fatal():
    said = result_file.parse(b'{"outcome": "succeeded", "mood": "happy"}')
    assert said.outcome == "succeeded"
    assert said.ignored_fields == ("mood",)


def test_no_file_is_no_result(tmp_path):
    assert result_file.read(tmp_path / "attempt-1.result.json") is None


def test_a_symlink_is_never_followed(tmp_path):
    secret = tmp_path / "outside.json"
    secret.write_text('{"outcome": "succeeded"}')
    link = tmp_path / "attempt-1.result.json"
    link.symlink_to(secret)
    with pytest.raises(BadResultFile, match="not a symlink"):
        result_file.read(link)


def test_a_huge_file_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "attempt-1.result.json"
    with open(path, "wb") as handle:
        handle.truncate(10 * 1024 * 1024)
    with pytest.raises(BadResultFile, match="10485760 bytes; accepted: at most 65536"):
        result_file.read(path)


def test_a_fifo_does_not_hang_the_reader(tmp_path):
    path = tmp_path / "attempt-1.result.json"
    os.mkfifo(path)
    with pytest.raises(BadResultFile, match="not a regular file"):
        result_file.read(path)


# --- rate limits ---------------------------------------------------------------------------


PATTERNS = ratelimit.compile_patterns(ratelimit.DEFAULT_PATTERNS)


@pytest.mark.parametrize("output", [
    "Error: Rate limit reached for gpt-x in organization org-1",
    "HTTP 429 Too Many Requests",
    "API Error: 529 Overloaded",
    "You exceeded your current quota, please check your plan",
    "insufficient_quota",
    "Claude usage limit reached. Your limit will reset at 5pm",
])
def test_the_built_in_patterns_catch_common_messages(output):
    why = ratelimit.is_rate_limited(said_rate_limited=False, exit_code=1, exit_codes=(),
                                    output_tail=f"working...\n{output}\n", patterns=PATTERNS)
    assert why is not None and why.startswith("its output says")


def test_ordinary_failures_are_not_rate_limits():
    output = "AssertionError: expected 4291 items\nTests failed: 3 of 40\n"
    assert ratelimit.is_rate_limited(said_rate_limited=False, exit_code=1, exit_codes=(),
                                     output_tail=output, patterns=PATTERNS) is None


def test_exit_codes_and_the_result_count_too():
    none = ratelimit.compile_patterns([])
    assert ratelimit.is_rate_limited(said_rate_limited=False, exit_code=75, exit_codes=(75,),
                                     output_tail="", patterns=none) == \
        "exit code 75 is a rate-limit exit code"
    assert ratelimit.is_rate_limited(said_rate_limited=True, exit_code=0, exit_codes=(),
                                     output_tail="", patterns=none) is not None


def test_a_bad_pattern_is_named():
    with pytest.raises(ValueError, match=r"rate-limit pattern '\(' is not a regular"):
        ratelimit.compile_patterns(["("])


@pytest.mark.parametrize(("streak", "retry_after", "expected"), [
    (1, None, 60), (2, None, 120), (3, None, 240), (7, None, 3600), (60, None, 3600),
    (1, 12.2, 13), (5, 99999, 3600), (1, 0, 1),
])
def test_the_hold_doubles_up_to_its_maximum_or_follows_retry_after(streak, retry_after,
                                                                   expected):
    assert ratelimit.next_delay(streak, base_sec=60, max_sec=3600,
                                retry_after_sec=retry_after) == expected


@pytest.mark.parametrize(("tail", "waiting"), [
    ("Proceed with the changes? ", True), ("Overwrite file (y/n)", True),
    ("Enter your API key:", True), ("done.\n\n", False), ("", False),
    ("step 3 of 5\nrunning tests", False),
])
def test_a_prompt_like_last_line_reads_as_waiting_for_input(tail, waiting):
    assert ratelimit.looks_like_waiting_for_input(tail) is waiting


# --- holds ---------------------------------------------------------------------------------


def test_a_rate_limited_agent_is_held_until_its_time():
    record = AgentRecord("vaela", rate_limited_until="2026-12-02T10:04:00.000Z", streak=3)
    held = holds.holds({"vaela": record}, NOW, {})
    assert held == {"vaela": Hold("rate-limited", "agent vaela rate-limited until "
                                                  "2026-12-02T10:04:00.000Z (3rd in a row)")}
    assert holds.holds({"vaela": record}, NOW + timedelta(minutes=4), {}) == {}


def test_the_daily_budget_holds_until_the_next_utc_day():
    record = AgentRecord("vaela", cost_day="2026-12-02", cost_usd=20.4)
    held = holds.holds({"vaela": record}, NOW, {"vaela": 20.0})
    assert held["vaela"].kind == "budget"
    assert held["vaela"].reason == ("agent vaela spent $20.40 today, its daily budget is "
                                    "$20.00; paused until 2026-12-03T00:00:00.000Z")
    assert holds.holds({"vaela": record}, NOW, {"vaela": 25.0}) == {}
    assert holds.holds({"vaela": record}, NOW, {}) == {}
    next_day = NOW.replace(day=3, hour=0, minute=0, second=1)
    assert holds.holds({"vaela": record}, next_day, {"vaela": 20.0}) == {}


def test_throttle_records_survive_and_reset(tmp_path):
    directory = tmp_path / "agents"
    first = throttles.record_rate_limit(directory, "vaela", NOW, lambda s: 60 * 2 ** (s - 1),
                                        "429")
    second = throttles.record_rate_limit(directory, "vaela", NOW, lambda s: 60 * 2 ** (s - 1),
                                         "429")
    assert (first.streak, first.rate_limited_until) == (1, "2026-12-02T10:01:00.000Z")
    assert (second.streak, second.rate_limited_until) == (2, "2026-12-02T10:02:00.000Z")
    assert throttles.load_all(directory)["vaela"].streak == 2
    assert oct(os.stat(directory / "vaela.json").st_mode & 0o777) == "0o600"
    throttles.record_success(directory, "vaela")
    assert throttles.load_all(directory)["vaela"].held_until() is None
    assert throttles.load_all(directory)["vaela"].streak == 0


def test_cost_adds_up_per_day(tmp_path):
    directory = tmp_path / "agents"
    throttles.add_cost(directory, "vaela", NOW, 1.25)
    throttles.add_cost(directory, "vaela", NOW, 2.5)
    assert throttles.load_all(directory)["vaela"].cost_on("2026-12-02") == 3.75
    throttles.add_cost(directory, "vaela", NOW + timedelta(days=1), 1.0)
    assert throttles.load_all(directory)["vaela"].cost_on("2026-12-03") == 1.0


def test_a_damaged_throttle_file_holds_nothing(tmp_path):
    directory = tmp_path / "agents"
    directory.mkdir()
    (directory / "vaela.json").write_text("{not json")
    (directory / "damien.json").write_text(json.dumps({"streak": "many"}))
    (directory / "x.json").symlink_to(directory / "vaela.json")
    assert throttles.load_all(directory) == {}


def test_a_hostile_agent_name_never_becomes_a_path(tmp_path):
    with pytest.raises(Exception, match="agent"):
        throttles.add_cost(tmp_path, "../../etc", NOW, 1.0)


# --- the planner with holds ----------------------------------------------------------------


def _task(task_id: str, queue: str | None = "dev", assignee: str | None = None) -> Task:
    return Task(task_id, f"task {task_id}", queue=queue, assignee=assignee,
                created_at=NOW - timedelta(minutes=int(task_id)))


def test_a_held_agent_gets_nothing_and_its_queue_mates_take_the_work():
    registry = Registry((Agent("vaela", "dev", 2), Agent("damien", "dev", 2)), legacy=False)
    hold = Hold("rate-limited", "agent vaela rate-limited until 10:04 (1st in a row)")
    the_plan = plan([], [_task("1"), _task("2"), _task("3"), _task("9", None, "vaela")],
                    registry, NOW, holds={"vaela": hold})
    # older first (task 3 is the oldest): damien's two slots take 3 and 2
    assert sorted((s.task.id, s.agent) for s in the_plan.spawns) == [("2", "damien"),
                                                                     ("3", "damien")]
    reasons = {s.task_id: (s.kind, s.reason) for s in the_plan.skips}
    assert reasons["9"] == ("rate-limited", hold.reason)
    assert reasons["1"] == ("no-slot", "queue dev has no free slot (held: vaela)")
    assert {a.name: a.held for a in the_plan.agents}["vaela"] == hold.reason


def test_a_queue_whose_every_agent_is_held_says_why():
    registry = Registry((Agent("vaela", "dev", 2),), legacy=False)
    hold = Hold("budget", "agent vaela spent $20.40 today")
    the_plan = plan([], [_task("1")], registry, NOW, holds={"vaela": hold})
    assert not the_plan.spawns
    assert [(s.kind, s.reason) for s in the_plan.skips] == [("budget", hold.reason)]


# --- budgets -------------------------------------------------------------------------------


def test_a_task_budget_names_its_figures():
    policy = RetryPolicy(3, 60, max_total_runtime_sec=600, max_task_cost_usd=5)
    assert policy.budget_spent(599, 4.99) is None
    assert policy.budget_spent(600, 0) == ("budget spent: 600 s of runtime over all attempts, "
                                           "MAX_TOTAL_RUNTIME_SEC is 600")
    assert policy.budget_spent(10, 5.12) == ("budget spent: $5.12 over all attempts, "
                                             "MAX_TASK_COST_USD is 5")
    assert RetryPolicy(3, 60).budget_spent(10**9, 10**9) is None


def test_usage_of_a_result_ignores_what_is_not_a_number():
    result = Result("1", "a", 1, "failed", "t", "s",
                    detail={"usage": {"cost_usd": 1.5, "tokens_in": 10, "tokens_out": "x"}})
    assert usage_of(result) == (1.5, 10, 0)
    assert usage_of(Result("1", "a", 1, "failed", "t", "s")) == (0.0, 0, 0)


# --- prompts -------------------------------------------------------------------------------


def test_the_prompt_fills_each_field_once_and_runs_nothing():
    template = "Task {id}: {title}\n{description}\n{__import__('os')} {attempt} {unknown}"
    text = prompt.render(template, {"id": "7", "title": "Fix {description}",
                                    "description": "login fails", "attempt": 2})
    assert text == "Task 7: Fix {description}\nlogin fails\n{__import__('os')} 2 {unknown}\n"


def test_the_default_prompt_never_starts_with_a_dash():
    text = prompt.render(prompt.DEFAULT_TEMPLATE, {"id": "3", "title": "--delete-everything",
                                                   "description": ""})
    assert text == "Task 3: --delete-everything\n"


def test_an_unreadable_template_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"prompt template .*missing.txt cannot be read"):
        prompt.load_template(tmp_path / "missing.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        prompt.load_template(tmp_path / "bin.txt")


# --- presets and adapters ------------------------------------------------------------------


VALUES = {"task_id": "42", "agent": "vaela", "queue": "dev", "attempt": "1",
          "recipe": "vaela.yaml", "recipe_path": "/srv/recipes/vaela.yaml",
          "title": "-rf /", "prompt": "Task 42: -rf /\n\nclean up\n", "task_file": "/t.json",
          "base_path": "/srv", "goose_bin": "goose"}


@pytest.mark.parametrize(("name", "argv"), [
    ("goose", ["goose", "run", "--no-session", "--recipe", "/srv/recipes/vaela.yaml",
               "--params", "task_id=42"]),
    ("claude", ["claude", "--print", "--output-format", "json", "--permission-mode",
                "acceptEdits", "--", "Task 42: -rf /\n\nclean up\n"]),
    ("codex", ["codex", "exec", "--json", "--full-auto", "--", "Task 42: -rf /\n\nclean up\n"]),
    ("aider", ["aider", "--yes-always", "--no-auto-commits", "--no-pretty",
               "--message=Task 42: -rf /\n\nclean up\n"]),
    ("exarp-go", ["exarp-go", "-tool", "task_execute", "-args", '{"task_id":"42"}']),
])
def test_each_preset_renders_the_argv_it_documents(name, argv):
    preset = presets.get(name)
    assert build_argv(preset.command, VALUES) == argv
    documented = Path(__file__).resolve().parent.parent / "docs" / "agents.md"
    assert f"| `{name}` | `{preset.command}` |" in documented.read_text()


def test_an_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown preset 'gpt'; accepted: goose, claude, codex"):
        presets.get("gpt")


def test_the_claude_adapter_reads_its_json_result():
    tail = "\n".join(["starting", json.dumps({
        "type": "result", "subtype": "success", "is_error": False, "result": "Fixed it.",
        "total_cost_usd": 0.0734, "usage": {"input_tokens": 1200, "output_tokens": 300}})])
    assert adapters.adapt("claude", tail) == AgentResult(
        "succeeded", "Fixed it.", cost_usd=0.0734, tokens_in=1200, tokens_out=300)
    error = json.dumps({"type": "result", "subtype": "error_during_execution",
                        "is_error": True, "result": "API Error: 429"})
    assert adapters.adapt("claude", error).outcome == "failed"
    assert adapters.adapt("claude", "plain text only") is None


def test_the_codex_adapter_sums_usage_and_reads_failures():
    events = [{"type": "thread.started", "thread_id": "t1"},
              {"type": "item.completed", "item": {"type": "agent_message", "text": "Done."}},
              {"type": "turn.completed", "usage": {"input_tokens": 900, "output_tokens": 80}},
              {"type": "turn.completed", "usage": {"input_tokens": 100, "output_tokens": 20}}]
    tail = "\n".join(json.dumps(e) for e in events)
    assert adapters.adapt("codex", tail) == AgentResult("succeeded", "Done.", tokens_in=1000,
                                                        tokens_out=100)
    failed = json.dumps({"type": "turn.failed", "error": {"message": "stream error: 429"}})
    assert adapters.adapt("codex", failed) == AgentResult("failed", "stream error: 429")
    assert adapters.adapt("none", tail) is None


def test_preset_commands_split_into_words():
    for preset in presets.PRESETS:
        assert shlex.split(preset.command)


def test_the_daily_budget_resumes_at_midnight_utc(tmp_path):
    directory = tmp_path / "agents"
    with freeze_time("2026-12-02 23:59:00") as frozen:
        throttles.add_cost(directory, "vaela", clock.now(), 3.5)
        held = holds.holds(throttles.load_all(directory), clock.now(), {"vaela": 3.0})
        assert held["vaela"].reason.endswith("paused until 2026-12-03T00:00:00.000Z")
        frozen.tick(timedelta(seconds=61))
        assert holds.holds(throttles.load_all(directory), clock.now(), {"vaela": 3.0}) == {}


def test_the_agent_control_file_takes_the_per_agent_rules(tmp_path):
    from scheduler.agents import options
    from scheduler.config.registry import parse_control_file
    from scheduler.config.settings import load_settings

    path = tmp_path / "agent-control.json"
    path.write_text(json.dumps([{"agentName": "vaela", "agentType": "dev",
                                 "rateLimitPatterns": ["RESOURCE_EXHAUSTED"],
                                 "rateLimitExitCodes": [75], "dailyCostMaxUsd": 20}]))
    assert parse_control_file(path) == [("vaela", "dev")]
    settings = load_settings(environ={"TINYSCHEDULER_AGENT_CONTROL_FILE": str(path)},
                             cwd=tmp_path)
    mine = options.for_agent(settings, "vaela")
    assert (mine.rate_limit_exit_codes, mine.daily_cost_max_usd) == ((75,), 20.0)
    assert mine.rate_limit_patterns.search("status: RESOURCE_EXHAUSTED")
    assert not mine.rate_limit_patterns.search("429 Too Many Requests")


@pytest.mark.parametrize("content", [
    json.dumps(["not", "an", "object"]),
    json.dumps({"rate_limited_until": 12}),
    json.dumps({"cost_usd": -5}),
    json.dumps({"cost_usd": True}),
    json.dumps({"reason": "x" * 5000}),  # larger than a record can be
])
def test_a_throttle_file_of_the_wrong_shape_holds_nothing(tmp_path, content):
    directory = tmp_path / "agents"
    directory.mkdir()
    (directory / "vaela.json").write_text(content)
    assert throttles.load_all(directory) == {}
    # the next rate limit starts a fresh record rather than failing on the damaged one
    record = throttles.record_rate_limit(directory, "vaela", NOW, lambda s: 60, "429")
    assert record.streak == 1 and throttles.load_all(directory)["vaela"].streak == 1


def test_a_hold_with_an_unreadable_time_holds_nothing(tmp_path):
    directory = tmp_path / "agents"
    directory.mkdir()
    (directory / "vaela.json").write_text(json.dumps({"rate_limited_until": "soon",
                                                      "streak": 3}))
    record = throttles.load_all(directory)["vaela"]
    assert record.streak == 3 and record.held_until() is None
    assert holds.holds({"vaela": record}, NOW, {}) == {}
