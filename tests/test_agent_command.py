"""The agent argv template and recipe resolution (pure: no process is started)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from wrapper.command import (
    PLACEHOLDERS,
    LaunchError,
    build_argv,
    resolve_recipe,
    uses_recipe,
)

HOSTILE_TITLE = (
    "Fix it; rm -rf / && echo $(id) `uname` $HOME *.py | tee x > y < z\n"
    "second line\twith a tab, \"double\" and 'single' quotes, a \\ backslash,\n"
    "   spaced   out   {task_id} {unknown} %s \x1b[31mred"
)


def values(**overrides: str) -> dict[str, str]:
    base = {name: f"<{name}>" for name in PLACEHOLDERS}
    base.update(task_id="42", agent="worker", attempt="1")
    base.update(overrides)
    return base


# --- substitution -------------------------------------------------------------------------


def test_a_hostile_title_is_one_argument_verbatim() -> None:
    argv = build_argv("agent --title {title} --id {task_id}", values(title=HOSTILE_TITLE))
    assert argv == ["agent", "--title", HOSTILE_TITLE, "--id", "42"]


def test_a_value_is_never_substituted_twice() -> None:
    """A title that contains placeholder text stays as it is (one substitution pass)."""
    argv = build_argv("a {title}", values(title="{task_id} {agent}"))
    assert argv == ["a", "{task_id} {agent}"]


def test_a_value_cannot_split_or_join_words() -> None:
    argv = build_argv("a {title}{queue} b", values(title="x y", queue=" z"))
    assert argv == ["a", "x y z", "b"]


def test_json_arguments_keep_their_braces() -> None:
    template = """goose run -args '{"task_id":"{task_id}","attempt":{attempt}}' --x={agent}"""
    argv = build_argv(template, values())
    assert argv == ["goose", "run", "-args", '{"task_id":"42","attempt":1}', "--x=worker"]


@pytest.mark.parametrize("text", ["{unknown}", "{TASK_ID}", "{ task_id }", "{task_id",
                                  "task_id}", "{}", "{{task_id}}"])
def test_unknown_placeholders_are_left_as_they_are(text: str) -> None:
    expected = text.replace("{{task_id}}", "{42}")  # the inner one is a placeholder
    assert build_argv(f"a {shlex.quote(text)}", values()) == ["a", expected]


def test_every_placeholder_is_substituted_inside_its_word() -> None:
    template = " ".join(f"--{name}={{{name}}}" for name in PLACEHOLDERS)
    argv = build_argv(template, values())
    expected = values()
    assert argv == [f"--{name}={expected[name]}" for name in PLACEHOLDERS]


def test_a_missing_value_becomes_an_empty_string() -> None:
    assert build_argv("a --queue={queue} {queue}", {"task_id": "1"}) == ["a", "--queue=", ""]


def test_quoting_in_the_template_follows_shell_words() -> None:
    argv = build_argv("""a 'b c' "d {task_id}" e\\ f""", values())
    assert argv == ["a", "b c", "d 42", "e f"]


def test_an_unbalanced_template_raises_value_error() -> None:
    with pytest.raises(ValueError):
        build_argv("agent 'unclosed {task_id}", values())


def test_uses_recipe() -> None:
    assert uses_recipe("goose --recipe {recipe_path}")
    assert uses_recipe("goose --recipe {recipe}")
    assert not uses_recipe("agent {task_id} {recipes}")


# --- recipe resolution --------------------------------------------------------------------


@pytest.fixture
def recipes(tmp_path: Path) -> Path:
    directory = tmp_path / "recipes"
    (directory / "sub").mkdir(parents=True)
    for name in ("dev.yaml", "ops.yml", "plan.json", "sub/deep.yaml", "script.sh"):
        (directory / name).write_text("x: 1\n")
    (tmp_path / "outside.yaml").write_text("x: 1\n")
    (directory / "dir.yaml").mkdir()
    os.symlink(tmp_path / "outside.yaml", directory / "escape.yaml")
    os.symlink(directory / "dev.yaml", directory / "alias.yaml")
    return directory


@pytest.mark.parametrize("name", ["dev.yaml", "ops.yml", "plan.json", "sub/deep.yaml",
                                  "alias.yaml", "sub/../dev.yaml"])
def test_recipes_inside_the_directory_resolve(recipes: Path, name: str) -> None:
    resolved = resolve_recipe(recipes, name)
    assert resolved.is_file()
    assert resolved.is_relative_to(recipes.resolve())
    assert resolved == (recipes / name).resolve()


@pytest.mark.parametrize(("name", "why"), [
    ("", "no recipe named"),
    ("dev\x00.yaml", "no recipe named"),
    ("script.sh", "must end in .yaml, .yml or .json"),
    ("dev", "must end in .yaml, .yml or .json"),
    ("dev.yaml.bak", "must end in .yaml, .yml or .json"),
    ("../outside.yaml", "resolves outside the recipes directory"),
    ("sub/../../outside.yaml", "resolves outside the recipes directory"),
    ("escape.yaml", "resolves outside the recipes directory"),
    ("missing.yaml", "not found"),
    ("dir.yaml", "not found"),
])
def test_bad_recipes_are_refused_with_the_reason(recipes: Path, name: str, why: str) -> None:
    with pytest.raises(LaunchError, match=why.replace(".", r"\.")):
        resolve_recipe(recipes, name)


def test_an_absolute_recipe_path_is_refused(recipes: Path) -> None:
    outside = recipes.parent / "outside.yaml"
    with pytest.raises(LaunchError, match="outside the recipes directory"):
        resolve_recipe(recipes, str(outside))
    # even when it points inside the directory, it is judged by where it resolves
    assert resolve_recipe(recipes, str(recipes / "dev.yaml")) == (recipes / "dev.yaml").resolve()


def test_a_missing_recipes_directory_finds_nothing(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="not found"):
        resolve_recipe(tmp_path / "nope", "dev.yaml")
