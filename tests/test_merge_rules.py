"""Pure rules of the merge queue: what a landing means for the attempt."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from scheduler.merge.landing import Landed, link, verdict

SETTINGS = SimpleNamespace(merge_check_command="make test", merge_conflict="retry",
                           merge_link_template="https://git.example/{target}/{commit}?t={task_id}",
                           target_branch="main")


def test_merged_names_the_commit_files_check_and_link() -> None:
    landed = Landed("merged", "main", "a" * 40, "b" * 40, ("x.py", "y.py"), check_sec=2.04)
    said = verdict(landed, SETTINGS, "7", 0.5)
    assert said.outcome == "succeeded" and not said.park
    assert said.text == (f"merged into main as {'a' * 12}; 2 file(s) changed: x.py, y.py; "
                         f"check 2.0 s; https://git.example/main/{'a' * 40}?t=7")
    assert said.detail["before"] == "b" * 40 and said.detail["changed_files"] == ["x.py", "y.py"]


def test_a_merge_found_landed_keeps_no_base() -> None:
    said = verdict(Landed("merged", "main", "a" * 40, "c" * 40, ("x.py",), already=True),
                   SETTINGS, "7", 0.1)
    assert "had landed before the interruption" in said.text and "before" not in said.detail


@pytest.mark.parametrize("policy, parks, words", [
    ("retry", False, "the next attempt starts fresh from main"),
    ("park", True, "parked for a person (MERGE_CONFLICT=park)")])
def test_a_conflict_names_the_files(policy: str, parks: bool, words: str) -> None:
    settings = SimpleNamespace(**{**vars(SETTINGS), "merge_conflict": policy})
    said = verdict(Landed("conflict", "main", target_before="d" * 40, conflicts=("a.py",)),
                   settings, "7", 0.1)
    assert (said.outcome, said.park) == ("conflict", parks)
    assert said.text.startswith(f"merge conflict with main ({'d' * 12}) in a.py; main "
                                "untouched; ") and said.text.endswith(words)


def test_a_failed_check_keeps_the_end_of_its_output() -> None:
    said = verdict(Landed("check_failed", "main", check_sec=1.0,
                          check_tail="x" * 5000 + "\nFAILED test_login"), SETTINGS, "7", 0.1)
    assert said.outcome == "check_failed" and said.text.endswith("FAILED test_login")
    assert len(said.detail["check_tail"]) == 2000


def test_no_changes_and_errors() -> None:
    assert verdict(Landed("no_changes", "main"), SETTINGS, "7", 0).outcome == "succeeded"
    failed = verdict(Landed("error", "main", error="git merge-tree failed"), SETTINGS, "7", 0)
    assert failed.outcome == "failed" and "git merge-tree failed" in failed.text


def test_no_link_without_a_template() -> None:
    assert link(SimpleNamespace(merge_link_template="", target_branch="main"), "a", "1") == ""
