"""The import rules the stores share (scheduler/sources/rules.py), field by field: each bad
item of an import (plain or exported) is refused with its item number, the field and
what is accepted, and nothing of the file is written. Run through the embedded store."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.errors import InputError
from scheduler.sources.local import LocalStore


@pytest.fixture
def store(tmp_path: Path):
    opened = LocalStore(tmp_path / "tasks.db")
    yield opened
    opened.close()


@pytest.mark.parametrize(("item", "says"), [
    ({"title": "t", "description": 5}, "description is 5; accepted: a string"),
    ({"title": "t", "priority": 2**63}, f"priority is {2**63}; accepted: a 64-bit integer"),
    ({"title": "t", "files": "src/*.py"}, "files is 'src/*.py'; accepted: a list of file"),
    ({"title": "t", "blocked_by": "1"}, "blocked_by is '1'; accepted: a list of task ids"),
    ({"title": "t", "blocked_by": [True]}, "blocked_by True is not a task id"),
    ({"title": "t", "attempts": -1}, "attempts is -1; accepted: an integer >= 0"),
    ({"title": "t", "last_error": 7}, "last_error is not a string of at most"),
    ({"title": "t", "result": "x" * 100_000}, "result is not a string of at most"),
    ({"title": "t", "usage": {"cost_usd": -1}}, "usage is {'cost_usd': -1}; accepted: an "
                                                "object with numbers >= 0"),
    ({"title": "t", "usage": {"gold": 1}}, "usage is {'gold': 1}"),
    ({"title": "t", "created_at": "last week"}, "created_at is 'last week'; accepted: an ISO"),
    ({"title": "t", "history": "none"}, "history is str; accepted: a list of objects"),
    ({"title": "t", "history": ["x"]}, "history[0]: accepted: an object with at, from_status"),
    ({"title": "t", "history": [{"at": "2025-01-01T00:00:00Z", "to_status": "idle",
                                 "actor": 5}]}, "actor accepted: a string"),
])
def test_a_bad_field_of_an_import_item_is_named_and_nothing_is_written(store, item, says):
    with pytest.raises(InputError) as caught:
        store.import_tasks([{"title": "fine"}, item])
    lines = str(caught.value).splitlines()
    assert any(line.startswith("item 1: ") and says in line for line in lines), lines
    assert not any(line.startswith("item 0") for line in lines)
    assert store.list_tasks() == []


def test_an_exported_item_with_usage_and_history_is_imported_as_it_was(store):
    [task] = store.import_tasks([{
        "title": "done before", "status": "complete", "attempts": 2, "blocked_by": None,
        "usage": {"runtime_sec": 12.5, "cost_usd": 0.75, "tokens_in": 1000, "tokens_out": 20},
        "history": [{"at": "2025-01-01T00:00:00.000Z", "from_status": None,
                     "to_status": "idle", "actor": "someone", "detail": "created"}],
    }])
    assert (task.status, task.attempts, task.blocked_by) == ("complete", 2, ())
    details = store.details(task.id)
    assert (details["runtime_sec"], details["cost_usd"]) == (12.5, 0.75)
    assert (details["tokens_in"], details["tokens_out"]) == (1000, 20)
    assert store.history(task.id)[0]["actor"] == "someone"


def test_an_edit_of_a_field_that_cannot_be_edited_names_the_ones_that_can(store):
    task = store.add_task("t")
    with pytest.raises(InputError, match="cannot edit attempts, status; accepted: title, "):
        store.edit(task.id, {"status": "complete", "attempts": 0})
    assert store.get(task.id).status == "idle"
