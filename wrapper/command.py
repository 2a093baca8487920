"""Building the agent's argv from the AGENT_COMMAND template, and resolving its recipe.

The template is split like shell words (``shlex.split``) and each placeholder is then
substituted inside its own argument, so a value can never split or join arguments, and
nothing ever reaches a shell.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from scheduler.names import TEXT_RULE, text_problem

#: Every placeholder AGENT_COMMAND may use.
PLACEHOLDERS = ("task_id", "agent", "queue", "attempt", "recipe", "recipe_path", "title",
                "prompt", "task_file", "base_path", "goose_bin", "workspace", "branch")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
RECIPE_SUFFIXES = (".yaml", ".yml", ".json")


class LaunchError(Exception):
    """The attempt cannot start: bad recipe, missing command. Outcome ``launch_failed``."""


def uses_recipe(template: str) -> bool:
    return "{recipe}" in template or "{recipe_path}" in template


def build_argv(template: str, values: Mapping[str, str]) -> list[str]:
    """Split ``template`` into words, then fill placeholders inside each word.

    Unknown ``{...}`` text is left as it is (so JSON arguments survive). A value that no
    argument can carry (a NUL, text that is not UTF-8) is a :class:`LaunchError`."""
    for name in set(_PLACEHOLDER.findall(template)):
        problem = text_problem(str(values.get(name, "")))
        if problem:
            raise LaunchError(f"the value of {{{name}}} {problem}; accepted: {TEXT_RULE}")
    words = shlex.split(template)
    return [_PLACEHOLDER.sub(lambda m: str(values.get(m.group(1), "")), word) for word in words]


def resolve_recipe(recipes_dir: Path, name: str) -> Path:
    """The recipe file for ``name``: inside ``recipes_dir``, a .yaml/.yml/.json, existing."""
    if not name or "\x00" in name:
        raise LaunchError("no recipe named")
    if not name.endswith(RECIPE_SUFFIXES):
        raise LaunchError(f"recipe {name!r} must end in .yaml, .yml or .json")
    root = recipes_dir.resolve()
    candidate = (root / name).resolve()
    if not candidate.is_relative_to(root) or candidate == root:
        raise LaunchError(f"recipe {name!r} resolves outside the recipes directory {root}")
    if not candidate.is_file():
        raise LaunchError(f"recipe {name!r} not found in {root}")
    return candidate
