"""The ``{prompt}`` an agent gets: a small template filled from the task, no code run.

The template (``PROMPT_TEMPLATE_FILE``) is plain text with ``{name}`` placeholders for the
fields in :data:`FIELDS`; anything else in braces is left as written. Without a template
the prompt is the task's id, title and description.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

FIELDS = ("id", "title", "description", "queue", "agent", "attempt", "previous_summary",
          "previous_error", "workspace")
DEFAULT_TEMPLATE = "Task {id}: {title}\n\n{description}\n"
MAX_TEMPLATE_BYTES = 64 * 1024
_PLACEHOLDER = re.compile(r"\{(" + "|".join(FIELDS) + r")\}")


def load_template(path: Path | None) -> str:
    """The template text; raises ValueError naming the file when it cannot be used."""
    if path is None or str(path) in ("", "."):
        return DEFAULT_TEMPLATE
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"prompt template {path} cannot be read ({exc.strerror})") from None
    if len(data) > MAX_TEMPLATE_BYTES:
        raise ValueError(f"prompt template {path} is over {MAX_TEMPLATE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"prompt template {path} is not UTF-8 text") from None


def render(template: str, values: Mapping[str, object]) -> str:
    """Fill each known placeholder once, verbatim; the result is one argument, never
    re-read, so a value containing ``{title}`` stays as it is."""
    text = _PLACEHOLDER.sub(lambda m: str(values.get(m.group(1), "") or ""), template)
    return text.strip() + "\n" if text.strip() else ""
