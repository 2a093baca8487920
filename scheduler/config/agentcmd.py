"""Whether the agent command's program exists: checked by ``validate-config``, by ``run``
at start-up (a configuration error, exit 2) and before every pass spawns (a pass error)."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from scheduler.config.settings import expand_home


def agent_program(settings: Any) -> str:
    """The first word of AGENT_COMMAND with ``{goose_bin}`` and ``{base_path}`` filled in."""
    first = shlex.split(settings.agent_command)[0]
    return (first.replace("{goose_bin}", settings.goose_bin)
            .replace("{base_path}", str(settings.base_path)))


def find_agent_program(settings: Any) -> Path | None:
    """The executable the agent command starts, or None when there is none.

    A bare name is looked up on PATH; a relative path resolves against WORK_DIR, the
    agent's working directory."""
    program = agent_program(settings)
    if os.sep in program:
        try:
            candidate = expand_home(program)
        except ValueError:  # ~USER of no such user: no such program either
            return None
        if not candidate.is_absolute():
            candidate = Path(settings.work_dir) / candidate
    else:
        found = shutil.which(program)
        if found is None:
            return None
        candidate = Path(found)
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    return None


def agent_program_problem(settings: Any) -> str | None:
    """One line saying why the agent command cannot start, or None when it can (or when
    its program is a placeholder that only a task fills in)."""
    program = agent_program(settings)
    if "{" in program or find_agent_program(settings) is not None:
        return None
    where = "on PATH" if os.sep not in program else "(not an executable file)"
    return (f"agent command {program!r} is not found {where}; install it, or set "
            "TINYSCHEDULER_AGENT_COMMAND (or TINYSCHEDULER_GOOSE_BIN) to an existing "
            "executable")
