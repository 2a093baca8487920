"""Ready command templates for the common agent CLIs.

``tinyscheduler agents presets`` lists them; ``validate-config --fix --preset NAME`` writes
one into the env file. Every template is an argv template like ``AGENT_COMMAND``: no
shell, the prompt always one argument, given after the options or as ``--opt=value`` so a
title that starts with ``-`` is never read as an option.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    command: str
    description: str
    adapter: str = "none"  #: how its output becomes a result (see scheduler.agents.adapters)
    checked: str = "with a fake executable that prints what the real CLI documents"

    def settings(self) -> dict[str, str]:
        """The env-file lines (without the prefix) that select this preset."""
        return {"AGENT_COMMAND": self.command, "AGENT_RESULT_ADAPTER": self.adapter}


PRESETS: tuple[Preset, ...] = (
    Preset("goose",
           "{goose_bin} run --no-session --recipe {recipe_path} --params task_id={task_id}",
           "goose headless on the agent's recipe (RECIPES_DIR/<agent>.yaml), the task id as "
           "a recipe parameter; the default"),
    Preset("claude",
           "claude --print --output-format json --permission-mode acceptEdits -- {prompt}",
           "Claude Code in non-interactive print mode; its JSON result gives the outcome, "
           "cost and tokens", adapter="claude"),
    Preset("codex",
           "codex exec --json --full-auto -- {prompt}",
           "Codex CLI exec mode with JSON events; token usage and failures from the events",
           adapter="codex"),
    Preset("aider",
           "aider --yes-always --no-auto-commits --no-pretty --message={prompt}",
           "aider in message mode, its own commits off (the workspace commits what it "
           "leaves)"),
    Preset("exarp-go",
           "exarp-go -tool task_execute -args '{\"task_id\":\"{task_id}\"}'",
           "exarp-go's task_execute tool with the task id"),
)

PRESETS_BY_NAME = {preset.name: preset for preset in PRESETS}


def get(name: str) -> Preset:
    """The preset called ``name``; raises ValueError listing the known ones."""
    try:
        return PRESETS_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; accepted: "
                         f"{', '.join(PRESETS_BY_NAME)}") from None
