"""Regenerate ``.env.example`` and the generated blocks of ``docs/configuration.md``.

Both follow :data:`scheduler.config.settings.OPTIONS`, so the documentation cannot drift from
the loader. ``docs/configuration.md`` is hand-written except between marker comments::

    <!-- BEGIN GENERATED: options -->  ...  <!-- END GENERATED: options -->

Usage::

    python scripts/gen_config_docs.py           # rewrite both files
    python scripts/gen_config_docs.py --check   # exit 1 if either file is out of date
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scheduler.config import envfile  # noqa: E402
from scheduler.config.settings import OBSOLETE, OPTIONS, PREFIX  # noqa: E402

ENV_EXAMPLE = ROOT / ".env.example"
CONFIG_DOC = ROOT / "docs" / "configuration.md"

def render_env_example() -> str:
    return envfile.render(generated_note=True)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{_cell(text)}`" if text else ""


def render_options_table() -> str:
    rows = [
        "| Variable | Default | Range | Meaning | Example |",
        "|---|---|---|---|---|",
    ]
    for option in OPTIONS:
        if option.default:
            default = _code(option.default)
        elif option.default_note:
            default = f"*{_cell(option.default_note)}*"
        else:
            default = "*empty*"
        rows.append(
            f"| `{option.env}` | {default} | {envfile.range_text(option)} | {_cell(option.help)} "
            f"| {_code(option.example)} |"
        )
    return "\n".join(rows)


def render_obsolete() -> str:
    return "\n".join(
        f"- `{PREFIX}{name}` — ignored: {reason}." for name, reason in sorted(OBSOLETE.items())
    )


BLOCKS: dict[str, Callable[[], str]] = {
    "options": render_options_table,
    "obsolete": render_obsolete,
}


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- BEGIN GENERATED: {name} -->", f"<!-- END GENERATED: {name} -->"


def generated_block(text: str, name: str) -> str:
    """The current content between the markers of block ``name`` in ``text``."""
    begin, end = _markers(name)
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"{CONFIG_DOC.name}: markers for block {name!r} are missing")
    return text[start + len(begin):stop].strip("\n")


def update_doc(text: str) -> str:
    """``text`` with every generated block replaced by what OPTIONS says now."""
    for name, render in BLOCKS.items():
        begin, end = _markers(name)
        old = generated_block(text, name)
        start = text.find(begin) + len(begin)
        stop = text.find(end)
        if old != render():
            text = text[:start] + "\n" + render() + "\n" + text[stop:]
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    wanted = {
        ENV_EXAMPLE: render_env_example(),
        CONFIG_DOC: update_doc(CONFIG_DOC.read_text(encoding="utf-8")),
    }
    stale = [path for path, text in wanted.items()
             if not path.exists() or path.read_text(encoding="utf-8") != text]
    for path in stale:
        rel = path.relative_to(ROOT)
        if args.check:
            print(f"{rel} is out of date: run python scripts/gen_config_docs.py")
        else:
            path.write_text(wanted[path], encoding="utf-8")
            print(f"wrote {rel}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
