"""What an attempt's outcome really was, from its exit, its result file and its output.

The exit code gives a first outcome; the agent's result file (or, without one, the
adapter reading its printed JSON) can say more — ``needs_human``, ``rate_limited``, a
failure despite exit 0 — but only when the agent ended on its own: a run the wrapper
stopped (timeout, idle, cancel) keeps the wrapper's outcome. A run that did not succeed
and whose exit code or output says "rate limit" is ``rate_limited``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from scheduler.agents import adapters, ratelimit, result_file
from scheduler.agents.options import AgentOptions
from scheduler.agents.result_file import AgentResult, BadResultFile
from scheduler.fsutil import SAFE_FLAGS
from scheduler.sources import base

#: Outcomes of an agent that ended by itself (exit, or a signal nobody here sent).
_ON_ITS_OWN = (base.SUCCEEDED, base.OUTCOME_FAILED, base.KILLED)
_FROM_RESULT = {
    result_file.SUCCEEDED: base.SUCCEEDED,
    result_file.FAILED: base.OUTCOME_FAILED,
    result_file.RATE_LIMITED: base.RATE_LIMITED,
    result_file.NEEDS_HUMAN: base.NEEDS_HUMAN,
}


@dataclass(frozen=True)
class Verdict:
    outcome: str
    note: str = ""  #: why the outcome differs from the exit, or what was noticed
    agent_result: AgentResult | None = None
    problem: str = ""  #: what was wrong with the result file, if anything


def judge(outcome: str, exit_code: int | None, *, result_path: Path, log_path: Path,
          options: AgentOptions, adapter: str) -> Verdict:
    tail = output_tail(log_path, ratelimit.TAIL_BYTES)
    problem = ""
    try:
        said = result_file.read(result_path)
    except BadResultFile as exc:
        said, problem = None, f"result file ignored: {exc}"
    if said is None and not problem:
        said = adapters.adapt(adapter, tail)
    if said is not None and said.ignored_fields:
        problem = f"result file: unknown field(s) ignored: {', '.join(said.ignored_fields)}"
    if outcome not in _ON_ITS_OWN:
        note = ""
        if outcome == base.STALLED and ratelimit.looks_like_waiting_for_input(tail):
            note = "waiting for input? its last output line reads like a prompt"
        return Verdict(outcome, note, said, problem)
    note = ""
    if said is not None and said.outcome is not None:
        judged = _FROM_RESULT[said.outcome]
        if judged != outcome:
            note = f"the agent's result says {said.outcome}"
        outcome = judged
    if outcome not in (base.SUCCEEDED, base.NEEDS_HUMAN, base.RATE_LIMITED):
        why = ratelimit.is_rate_limited(
            said_rate_limited=False, exit_code=exit_code,
            exit_codes=options.rate_limit_exit_codes, output_tail=tail,
            patterns=options.rate_limit_patterns)
        if why:
            outcome, note = base.RATE_LIMITED, f"rate-limited: {why}"
    return Verdict(outcome, note, said, problem)


def output_tail(path: Path, limit: int) -> str:
    """The last ``limit`` bytes of the agent's output (the wrapper's own lines left out)."""
    try:
        fd = os.open(path, os.O_RDONLY | SAFE_FLAGS)  # never a link, never blocks
    except OSError:
        return ""
    try:
        size = os.fstat(fd).st_size
        os.lseek(fd, max(0, size - limit), os.SEEK_SET)
        data = os.read(fd, limit)
    except OSError:
        return ""
    finally:
        os.close(fd)
    return "\n".join(line for line in data.decode(errors="replace").splitlines()
                     if not line.startswith("[tinyscheduler "))
