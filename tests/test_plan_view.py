"""How a dry run shows its skips: a line per task, but one line for a reason many tasks
share, so a large backlog waiting for busy slots reads as a few lines."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

from scheduler.cli import main
from scheduler.config.settings import PREFIX
from scheduler.reconcile.plan_view import (
    GROUP_FROM,
    MAX_IDS_PER_LINE,
    MAX_SKIP_LINES,
    render_plan,
    skip_lines,
)
from scheduler.reconcile.planner import Plan, Skip


def no_slot(task_id: int, queue: str = "dev") -> Skip:
    return Skip(str(task_id), f"queue {queue} has no free slot", "no-slot")


def test_a_reason_of_one_task_names_the_task():
    skips = (Skip("10", "blocked by 9", "blocked"), Skip("20", "blocked by 19", "blocked"))
    assert skip_lines(skips) == ["  task 10: blocked by 9", "  task 20: blocked by 19"]


def test_a_reason_many_tasks_share_is_one_line_with_the_count_and_the_first_ids():
    skips = (Skip("5", "blocked by 4", "blocked"), *(no_slot(n) for n in range(100, 125)),
             no_slot(7, "qa"), no_slot(8, "qa"))
    first_ids = ", ".join(str(n) for n in range(100, 100 + MAX_IDS_PER_LINE))
    assert skip_lines(skips) == [
        "  task 5: blocked by 4",
        f"  queue dev has no free slot: 25 tasks ({first_ids} and {25 - MAX_IDS_PER_LINE} more)",
        "  task 7: queue qa has no free slot",
        "  task 8: queue qa has no free slot",
    ]


def test_a_reason_fewer_tasks_share_stays_a_line_per_task_in_plan_order():
    assert GROUP_FROM == 4  # docs/operations.md says "four or more"
    waiting = [Skip(str(n), "blocked by 1", "blocked") for n in (2, 3, 4)]
    skips = (waiting[0], Skip("9", "blocked by 8", "blocked"), waiting[1],
             *(no_slot(n) for n in (20, 21, 22, 23)), waiting[2])
    assert skip_lines(skips) == [
        "  task 2: blocked by 1",
        "  task 9: blocked by 8",
        "  task 3: blocked by 1",
        "  queue dev has no free slot: 4 tasks (20, 21, 22, 23)",
        "  task 4: blocked by 1",
    ]


def test_lines_stop_at_the_limit_and_count_the_tasks_not_shown():
    distinct = [Skip(str(n), f"blocked by {n - 1}", "blocked")
                for n in range(2, MAX_SKIP_LINES + 12)]  # 10 more reasons than lines
    skips = (*distinct, *(no_slot(n) for n in range(1000, 1050)))
    lines = skip_lines(skips)
    assert len(lines) == MAX_SKIP_LINES + 1
    assert lines[:MAX_SKIP_LINES] == [f"  task {s.task_id}: {s.reason}"
                                      for s in distinct[:MAX_SKIP_LINES]]
    assert lines[-1] == "  ... 60 more skipped tasks (--json lists every one)"


def test_the_plan_keeps_its_count_of_every_skip():
    plan = Plan(skips=tuple(no_slot(n) for n in range(1, 501)))
    text = render_plan(plan, SimpleNamespace(errors=[]))
    assert "would skip 500\n  queue dev has no free slot: 500 tasks (1, 2, 3," in text
    assert text.count("\n") < 10


def test_a_dry_run_over_a_busy_queue_shows_one_line_for_its_waiting_tasks(
        tmp_path, monkeypatch, capsys):
    for key in list(os.environ):
        if key.startswith(PREFIX):
            monkeypatch.delenv(key)
    monkeypatch.setenv(f"{PREFIX}AGENT_COMMAND", "true")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "agent-control.json").write_text(
        json.dumps([{"agentName": "vaela", "agentType": "dev"}]))
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([{"title": f"t{n}", "queue": "dev"} for n in range(1, 31)]))
    assert main(["task", "import", str(tasks)]) == 0
    capsys.readouterr()

    assert main(["run", "--once", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would spawn 1\n  task 1 -> vaela:" in out
    assert ("would skip 29\n  queue dev has no free slot: 29 tasks "
            "(2, 3, 4, 5, 6, 7, 8, 9, 10, 11 and 19 more)") in out
    assert out.rstrip().endswith("and 19 more)")
