"""Rendering an env file from :data:`scheduler.config.settings.OPTIONS`.

One generator for ``.env.example`` (``scripts/gen_config_docs.py``) and for the file
``tinyscheduler init`` writes, so neither can drift from the loader.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping

from scheduler.config.settings import ENV_FILE_VARIABLE, OPTIONS, PREFIX, Option

HEADER = f"""\
# tinyscheduler settings: every variable, its default and its meaning.
#
# How this file is loaded: named tinyscheduler.env (or .env) in the directory you run
# tinyscheduler from, it is read automatically (tinyscheduler.env first); or point
# {ENV_FILE_VARIABLE} at it; or name it with the global option, which goes BEFORE the
# subcommand:
#     tinyscheduler --env-file /etc/tinyscheduler/tinyscheduler.env run --once
# Precedence, lowest first: built-in defaults < env file < process environment
# < command-line flags. An empty value counts as unset. Relative paths resolve against
# {PREFIX}BASE_PATH. Every value is checked at start-up; a bad one stops the command
# with exit code 2 and a message naming the variable.
#
# Every commented line shows the default: uncomment and edit what you need.
# `tinyscheduler config --show` prints each resolved value and where it came from.
"""

GENERATED_NOTE = """\
#
# Generated from scheduler/config/settings.py by scripts/gen_config_docs.py; do not edit
# by hand.
"""


def default_text(option: Option) -> str:
    return option.default or option.default_note or "empty"


def range_text(option: Option) -> str:
    """The accepted range as the docs print it, e.g. ``1-3600``."""
    bounds = option.bounds
    if bounds is None:
        return option.range_note
    text = f"{bounds.low}-{bounds.high}"
    return f"{text} each" if option.name == "AGENT_LIMITS" else text


def env_value(text: str) -> str:
    """A value as python-dotenv (and systemd) read it back unchanged."""
    if re.search(r"[\s#'\"\\$]", text):
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text


def render(values: Mapping[str, str] | None = None, *, generated_note: bool = False) -> str:
    """Every option as a commented block showing its default; an option named in
    ``values`` (name without prefix -> text) is written uncommented with that value."""
    values = values or {}
    blocks = [HEADER + (GENERATED_NOTE if generated_note else "")]
    for option in OPTIONS:
        note = f"default: {default_text(option)}"
        if range_text(option):
            note += f"; range {range_text(option)}"
        if option.example and not option.secret:
            note += f"; e.g. {option.example}"
        comment = textwrap.fill(f"{option.help} ({note})", width=88,
                                initial_indent="# ", subsequent_indent="#   ",
                                break_long_words=False, break_on_hyphens=False)
        if option.name in values:
            line = f"{option.env}={env_value(values[option.name])}"
        else:
            line = f"#{option.env}={env_value(option.default)}"
        blocks.append(f"{comment}\n{line}\n")
    return "\n".join(blocks)
