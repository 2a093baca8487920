""".env.example and docs/configuration.md follow OPTIONS exactly, so they cannot drift."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

from scheduler.config.settings import (
    ENV_FILE_VARIABLE,
    OBSOLETE,
    OPTIONS,
    PREFIX,
    load_settings,
)

ROOT = Path(__file__).resolve().parent.parent
ENV_EXAMPLE = ROOT / ".env.example"
CONFIG_DOC = ROOT / "docs" / "configuration.md"
OPTION_VARS = {option.env for option in OPTIONS}
#: Variables the docs may mention that are not settings: handed to the agent, not read.
AGENT_VARS = {f"{PREFIX}TASK_FILE"}
VARIABLE = re.compile(rf"\b{PREFIX}[A-Z0-9_]+\b")
ASSIGNMENT = re.compile(rf"^#?({PREFIX}[A-Z0-9_]+)=(.*)$")


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location(
        "gen_config_docs", ROOT / "scripts" / "gen_config_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def env_example_assignments() -> list[tuple[str, str]]:
    return [match.groups() for line in ENV_EXAMPLE.read_text().splitlines()
            if (match := ASSIGNMENT.match(line))]


def test_env_example_lists_every_option_once_in_order():
    names = [name for name, _ in env_example_assignments()]
    assert names == [option.env for option in OPTIONS]


def test_env_example_mentions_only_known_variables():
    mentioned = set(VARIABLE.findall(ENV_EXAMPLE.read_text()))
    assert mentioned <= OPTION_VARS | {ENV_FILE_VARIABLE}, mentioned - OPTION_VARS


def test_env_example_is_all_commented_out(tmp_path):
    """Copying the file as ./.env changes nothing."""
    lines = ENV_EXAMPLE.read_text().splitlines()
    assert all(not line.strip() or line.startswith("#") for line in lines)
    (tmp_path / ".env").write_text(ENV_EXAMPLE.read_text())
    settings = load_settings(environ={}, cwd=tmp_path)
    assert settings.env_file == tmp_path / ".env"
    assert set(settings.origins.values()) == {"default"}
    assert settings.unknown_variables == ()


def test_env_example_uncommented_gives_the_defaults(tmp_path):
    """Every line shows the default: uncommenting all of them changes no value."""
    text = "\n".join(line[1:] if ASSIGNMENT.match(line) else line
                     for line in ENV_EXAMPLE.read_text().splitlines())
    env_file = tmp_path / "all.env"
    env_file.write_text(text + "\n")
    defaults = load_settings(environ={}, cwd=tmp_path)
    uncommented = load_settings(env_file=env_file, environ={}, cwd=tmp_path)
    assert dataclasses.replace(uncommented, env_file=None, env_file_how="") == defaults
    set_values = {name for name, value in uncommented.origins.items()
                  if value == f"env file {env_file}"}
    assert set_values == {option.name for option in OPTIONS if option.default}


def test_env_example_states_each_default():
    text = ENV_EXAMPLE.read_text()
    for option in OPTIONS:
        shown = option.default or option.default_note or "empty"
        # comments are wrapped: compare with whitespace collapsed
        flat = re.sub(r"\s*\n#\s+", " ", text)
        assert f"(default: {shown}" in flat, option.name


def test_env_example_explains_loading():
    header = ENV_EXAMPLE.read_text().split(f"#{PREFIX}", 1)[0]
    assert "--env-file" in header and "BEFORE the" in header
    assert "tinyscheduler.env (or .env)" in header and ENV_FILE_VARIABLE in header
    assert "defaults < env file < process environment" in header


def test_docs_mention_only_known_variables():
    mentioned = set(VARIABLE.findall(CONFIG_DOC.read_text()))
    allowed = OPTION_VARS | {PREFIX + name for name in OBSOLETE} | AGENT_VARS \
        | {ENV_FILE_VARIABLE}
    assert mentioned <= allowed, mentioned - allowed


def test_docs_table_has_every_option(gen):
    table = gen.generated_block(CONFIG_DOC.read_text(), "options")
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [re.match(r"\| `([A-Z0-9_]+)`", row).group(1) for row in rows] == [
        option.env for option in OPTIONS]


def test_docs_list_obsolete_variables(gen):
    block = gen.generated_block(CONFIG_DOC.read_text(), "obsolete")
    for name in OBSOLETE:
        assert f"`{PREFIX}{name}`" in block


@pytest.mark.parametrize("block", ["options", "obsolete"])
def test_docs_generated_blocks_are_current(gen, block):
    current = gen.generated_block(CONFIG_DOC.read_text(), block)
    assert current == gen.BLOCKS[block](), "run: python scripts/gen_config_docs.py"


def test_env_example_is_current(gen):
    assert ENV_EXAMPLE.read_text() == gen.render_env_example(), (
        "run: python scripts/gen_config_docs.py")


def test_update_doc_is_idempotent(gen):
    text = CONFIG_DOC.read_text()
    assert gen.update_doc(text) == text
    emptied = text.replace(gen.generated_block(text, "options"), "")
    assert gen.update_doc(emptied) == text


def test_missing_markers_are_an_error(gen):
    with pytest.raises(ValueError, match="markers"):
        gen.update_doc("# no markers here\n")


def test_docs_cover_agent_command_placeholders():
    text = CONFIG_DOC.read_text()
    help_text = next(o.help for o in OPTIONS if o.name == "AGENT_COMMAND")
    placeholders = re.findall(r"\{[a-z_]+\}", help_text)
    assert placeholders
    for placeholder in placeholders:
        assert f"`{placeholder}`" in text, placeholder


def test_docs_cover_agent_limit_formats_and_layers():
    text = CONFIG_DOC.read_text()
    assert '{"dispatcher": 1, "worker": 3}' in text
    assert "dispatcher=1,worker=3" in text
    assert "before" in text and "--env-file" in text
    assert "config --show" in text
    assert "exit code 2" in text
