"""The dashboard's pure parts: record aggregates read incrementally, the chart geometry,
the token and bind rules, and cutting log chunks at whole characters."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import pytest

from scheduler.config.settings import split_bind
from scheduler.dashboard import auth, chart
from scheduler.dashboard.history import OutcomeHistory, PassHistory, chart_series
from scheduler.dashboard.snapshot import _whole_utf8
from scheduler.errors import ConfigError

NOW = datetime(2026, 12, 2, 12, 0, 30, tzinfo=timezone.utc)


def line(**fields) -> str:
    return json.dumps(fields) + "\n"


def test_outcomes_are_read_incrementally_and_reset_when_the_file_is_replaced(tmp_path):
    path = tmp_path / "outcomes.jsonl"
    history = OutcomeHistory(path)
    history.refresh()
    assert history.counts == {}
    with open(path, "a") as handle:
        handle.write(line(time="2026-12-02T11:59:10Z", agent="a", outcome="succeeded"))
        handle.write(line(time="2026-12-02T11:59:20Z", agent="a", outcome="failed"))
        handle.write("not json\n")
        handle.write('{"time": "2026-12-02T12:00:01Z", "agent": "b", "outc')  # half written
    history.refresh()
    assert dict(history.counts) == {("a", "succeeded"): 1, ("a", "failed"): 1}
    assert history.follower.bad_lines == 1
    with open(path, "a") as handle:
        handle.write('ome": "killed"}\n')
    history.refresh()
    assert history.counts[("b", "killed")] == 1
    assert [e["outcome"] for e in history.recent] == ["succeeded", "failed", "killed"]
    series = chart_series(history, PassHistory(tmp_path / "none.jsonl"), NOW, minutes=3)
    assert series["completed"] == [0, 1, 0] and series["failed"] == [0, 1, 1]
    assert series["slot_use"] == [None, None, None]

    os.unlink(path)  # rotated away: start over from the new file
    path.write_text(line(time="2026-12-02T12:00:02Z", agent="c", outcome="succeeded"))
    history.refresh()
    assert dict(history.counts) == {("c", "succeeded"): 1}


def test_passes_give_reclaims_a_cumulative_histogram_and_slot_use(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        line(time="2026-12-02T11:59:05Z", duration_sec=0.004, reclaimed={"pid-dead": 2},
             agents={"a": [1, 2], "b": [0, 2]})
        + line(time="2026-12-02T11:59:40Z", duration_sec=0.3, reclaimed={},
               agents={"a": [2, 2], "b": [1, 2]})
        + line(time="2026-12-02T12:00:10Z", duration_sec=20, reclaimed={"pid-dead": 1,
                                                                          "spawn-timeout": 1},
               agents={"a": [0, 2], "b": [0, 2]}))
    passes = PassHistory(path)
    passes.refresh()
    assert dict(passes.reclaims) == {"pid-dead": 3, "spawn-timeout": 1}
    assert passes.passes == 3 and passes.duration_sum == pytest.approx(20.304)
    assert passes.buckets[0] == 1 and passes.buckets[5] == 1 and passes.buckets[6] == 2
    assert passes.buckets[-1] == 2  # 20 s is past the last bound: only in +Inf (count)
    assert passes.buckets == sorted(passes.buckets)  # cumulative
    series = chart_series(OutcomeHistory(tmp_path / "none"), passes, NOW, minutes=2)
    assert series["slot_use"] == [0.75, 0.0]


def test_chart_geometry_stacks_failed_on_completed():
    series = {"start_minute": 0, "minutes": 3, "completed": [2, 0, 1], "failed": [2, 0, 0],
              "slot_use": [0.5, None, 1.0]}
    drawn = chart.geometry(series)
    assert drawn["peak"] == 4 and (drawn["total_ok"], drawn["total_bad"]) == (3, 2)
    ok, bad = drawn["bars"][0], drawn["bars"][1]
    assert ok["kind"] == "ok" and bad["kind"] == "bad" and ok["h"] == bad["h"]
    assert bad["y"] + bad["h"] == pytest.approx(ok["y"], abs=0.2)
    assert len(drawn["points"].split()) == 2


def test_tokens_sessions_and_binds():
    token = "t" * 20
    assert auth.allowed("", None, None)
    assert not auth.allowed(token, None, None)
    assert auth.allowed(token, f"Bearer {token}", None)
    assert auth.allowed(token, f"bearer {token}", None)
    assert not auth.allowed(token, f"Basic {token}", None)
    assert not auth.allowed(token, "Bearer " + "t" * 19, None)
    assert auth.allowed(token, None, auth.session_value(token))
    assert not auth.allowed(token, None, token)  # the cookie is never the token itself
    assert auth.csrf_token(token) != auth.session_value(token)
    for host in ("127.0.0.1", "127.0.0.9", "::1", "localhost"):
        assert auth.is_loopback(host)
        auth.check_bind(host, "", False)
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        assert not auth.is_loopback(host)
        with pytest.raises(ConfigError, match="TINYSCHEDULER_DASHBOARD_TOKEN"):
            auth.check_bind(host, "", False)
        auth.check_bind(host, token, True)
    with pytest.raises(ConfigError, match="DASHBOARD_ACTIONS=true needs"):
        auth.check_bind("127.0.0.1", "", True)
    assert split_bind("127.0.0.1:8765") == ("127.0.0.1", 8765)
    assert split_bind("[::1]:0") == ("::1", 0)
    for bad in ("8765", ":80", "host:", "host:x", "host:70000", "a b:1", "[::1]"):
        with pytest.raises(ValueError, match="accepted: HOST:PORT"):
            split_bind(bad)


def test_log_chunks_end_at_whole_characters():
    text = "añ€😀".encode()
    for cut in range(len(text) + 1):
        whole = _whole_utf8(text[:cut])
        whole.decode("utf-8")  # never raises
        assert text.startswith(whole) and cut - len(whole) < 4
    assert _whole_utf8(text) == text


def test_the_chart_window_zooms_in_on_young_records(tmp_path):
    path = tmp_path / "outcomes.jsonl"
    path.write_text(line(time="2026-12-02T11:50:10Z", agent="a", outcome="succeeded"))
    history = OutcomeHistory(path)
    history.refresh()
    empty = PassHistory(tmp_path / "none.jsonl")
    assert chart_series(history, empty, NOW)["minutes"] == 30  # never less
    path.unlink()  # replaced (rotated): read again from the start
    path.write_text(line(time="2026-12-02T10:00:10Z", agent="a", outcome="succeeded"))
    history.refresh()
    series = chart_series(history, empty, NOW)
    assert series["minutes"] == 121 and series["completed"][0] == 1
    with open(path, "a") as handle:
        handle.write(line(time="2026-12-01T10:00:10Z", agent="a", outcome="succeeded"))
    history.refresh()
    assert chart_series(history, empty, NOW)["minutes"] == 180  # never more
    assert chart.geometry(chart_series(history, empty, NOW))["window"] == "3 h"


@pytest.mark.parametrize("seconds, shown", [(None, "-"), (0, "0 s"), (89.4, "89 s"),
                                            (90, "2 min"), (5399, "90 min"),
                                            (5400, "1.5 h"), ("7200", "2.0 h")])
def test_ages_are_shown_in_seconds_minutes_or_hours(seconds, shown):
    from scheduler.dashboard.app import _ago

    assert _ago(seconds) == shown


@pytest.mark.parametrize("text, shown", [("2026-12-02T12:00:30Z", "12:00:30"),
                                         ("yesterday", "-"), (None, "-")])
def test_a_time_that_does_not_parse_is_a_dash(text, shown):
    from scheduler.dashboard.app import _clock_time

    assert _clock_time(text) == shown


def test_per_minute_series_forget_what_is_older_than_the_window(tmp_path):
    from datetime import timedelta

    from scheduler import clock
    from scheduler.dashboard.history import WINDOW_MINUTES

    path = tmp_path / "outcomes.jsonl"
    minutes = 2 * WINDOW_MINUTES + 1
    with open(path, "w") as handle:
        for n in range(minutes):
            at = clock.to_iso(NOW - timedelta(minutes=minutes - 1 - n))
            handle.write(line(time=at, agent="a", outcome="succeeded"))
        handle.write(line(time="not a time", agent="a", outcome="failed"))
    history = OutcomeHistory(path)
    history.refresh()
    newest = int(NOW.timestamp() // 60)
    assert min(history.per_minute) == newest - WINDOW_MINUTES + 1
    assert max(history.per_minute) == newest and len(history.per_minute) == WINDOW_MINUTES
    assert history.counts[("a", "failed")] == 1  # counted, though it has no minute


def test_a_replaced_metrics_file_starts_the_pass_figures_over(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(line(time="2026-12-02T11:59:05Z", duration_sec=0.2,
                         reclaimed={"pid-dead": 2}))
    passes = PassHistory(path)
    passes.refresh()
    assert passes.passes == 1 and passes.reclaims == {"pid-dead": 2}
    path.unlink()
    path.write_text(line(time="2026-12-02T12:00:05Z", duration_sec=0.1, reclaimed={}))
    passes.refresh()
    assert passes.passes == 1 and passes.reclaims == {} and passes.duration_sum == 0.1
