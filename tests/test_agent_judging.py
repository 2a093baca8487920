"""Judging an attempt from what the agent left behind (wrapper/judge.py with the result
file, the output adapters and the prompt template of scheduler/agents/): odd result files,
odd adapter output, a stalled agent that looks like it waits for input. Files in a
temporary directory, no processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scheduler.agents import adapters, prompt, result_file
from scheduler.agents.options import defaults
from scheduler.config.settings import load_settings
from scheduler.sources import base
from wrapper.judge import judge


@pytest.fixture
def options(tmp_path: Path):
    return defaults(load_settings(environ={}, cwd=tmp_path))


def run_judge(tmp_path: Path, options, outcome: str, exit_code: int | None, *,
              output: str = "", said: bytes | None = None, adapter: str = "none"):
    log_path, result_path = tmp_path / "attempt-1.log", tmp_path / "attempt-1.result.json"
    log_path.write_text(output)
    if said is not None:
        result_path.write_bytes(said)
    return judge(outcome, exit_code, result_path=result_path, log_path=log_path,
                 options=options, adapter=adapter)


@pytest.mark.parametrize(("said", "why"), [
    (b" " * (result_file.MAX_BYTES + 1), f"accepted: at most {result_file.MAX_BYTES}"),
    (json.dumps({"summary": "half\x00done"}).encode(), "text without NUL characters"),
    (json.dumps({"files_changed": ["a.py", ""]}).encode(), "non-empty strings of at most"),
])
def test_a_bad_result_file_is_noted_and_the_exit_code_decides(tmp_path, options, said, why):
    verdict = run_judge(tmp_path, options, base.SUCCEEDED, 0, said=said)
    assert verdict.outcome == base.SUCCEEDED and verdict.agent_result is None
    assert verdict.problem.startswith("result file ignored: ") and why in verdict.problem


def test_a_result_document_over_the_size_limit_is_refused_before_it_is_parsed():
    with pytest.raises(result_file.BadResultFile, match=f"over {result_file.MAX_BYTES} bytes"):
        result_file.parse(b"{" + b" " * result_file.MAX_BYTES + b"}")


def test_unknown_fields_of_a_result_file_are_named_and_the_rest_is_used(tmp_path, options):
    said = json.dumps({"outcome": "needs_human", "summary": "which database?",
                       "mood": "tired"}).encode()
    verdict = run_judge(tmp_path, options, base.SUCCEEDED, 0, said=said)
    assert verdict.outcome == base.NEEDS_HUMAN
    assert verdict.problem == "result file: unknown field(s) ignored: mood"
    assert verdict.agent_result.summary == "which database?"


def test_a_stalled_agent_whose_last_line_is_a_question_is_said_to_wait_for_input(
        tmp_path, options):
    verdict = run_judge(tmp_path, options, base.STALLED, None,
                        output="working...\nOverwrite existing file? [y/N] ")
    assert verdict.outcome == base.STALLED
    assert verdict.note.startswith("waiting for input?")
    quiet = run_judge(tmp_path, options, base.STALLED, None, output="working...\n")
    assert quiet.note == ""


@pytest.mark.parametrize(("lines", "expected"), [
    ([], None),  # no JSON at all
    (["{not json}", '{"type": "item.completed", "item": {"type": "reasoning"}}'], None),
    (['{"type": "error", "error": "stream ended", "message": "connection reset"}'],
     ("failed", "connection reset")),
    (['{"type": "item.completed", "item": {"type": "agent_message", "text": "done"}}',
      '{"type": "item.completed", "item": {"type": "tool_call"}}',
      '{"type": "turn.completed", "usage": {"input_tokens": 10, "output_tokens": 2}}'],
     ("succeeded", "done")),
])
def test_the_codex_adapter_reads_only_what_its_events_say(lines, expected):
    said = adapters.adapt("codex", "\n".join(["plain text first", *lines]))
    if expected is None:
        assert said is None
    else:
        assert (said.outcome, said.summary) == expected


def test_a_prompt_template_over_the_size_limit_is_refused_naming_it(tmp_path):
    template = tmp_path / "prompt.txt"
    template.write_text("{title}" + "x" * prompt.MAX_TEMPLATE_BYTES)
    with pytest.raises(ValueError, match=f"prompt template {template} is over"):
        prompt.load_template(template)
