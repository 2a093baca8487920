"""The dashboard in a real browser (Playwright driving Debian's chromium, headless): a
task shows up within 2 s of its agent starting, with its last output line, and moves to
the recent outcomes when it ends; the task page follows its log; hostile text stays text
and opens no dialog; the login form."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
from dashboard_helpers import start_dashboard, stop
from playwright.sync_api import expect
from test_reconciler import Scheduler, wait_for
from test_reconciler import make_scheduler as make_scheduler  # noqa: F401 - the fixture

pytestmark = pytest.mark.processes

FAKE_AGENT = Path(__file__).with_name("fake_agent.py")
HOSTILE = "<img src=x onerror=alert(1)>"
TOKEN = "a-browser-token-0123456789"
# Waits for conditions (never for a fixed time); generous for a loaded machine. The one
# timing promise of the page, "within 2 s of the agent starting", has its own timeout.
expect.set_options(timeout=15_000)


def stepped_agent(s: Scheduler) -> None:
    """Prints a line, marks itself started, waits for go1-<id>, prints a hostile line,
    waits for go2-<id>, succeeds."""
    base = str(s.base)
    steps = ["print", "building step 1 of 2", "ready", f"{base}/started-{{task_id}}",
             "wait", f"{base}/go1-{{task_id}}", "print", "step 2 done <img src=y "
             "onerror=alert(2)>", "wait", f"{base}/go2-{{task_id}}"]
    s.settings["AGENT_COMMAND"] = " ".join(shlex.quote(p) for p in (
        sys.executable, "-S", str(FAKE_AGENT), *steps))


def test_live_page_follows_a_task_from_start_to_outcome(make_scheduler, page):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1})
    stepped_agent(s)
    proc, url = start_dashboard(s)
    daemon = s.popen("run", "--daemon")
    page.goto(url + "/")
    expect(page.locator("#running")).to_contain_text("nothing running")

    task_id = s.add(HOSTILE, "--queue", "dev")  # wakes the daemon
    wait_for(lambda: (s.base / f"started-{task_id}").exists(), what="the agent to start")
    row = page.locator(f'#running tr[data-task="{task_id}"]')
    expect(row).to_be_visible(timeout=2000)  # within 2 s of the agent starting
    expect(row).to_contain_text("building step 1 of 2")
    expect(row.locator("td.title")).to_have_text(HOSTILE)

    follower = page.context.new_page()
    follower.goto(url + f"/tasks/{task_id}")
    log = follower.locator("#log")
    expect(log).to_contain_text("building step 1 of 2")
    expect(follower.locator("#log-state")).to_have_text("following")
    (s.base / f"go1-{task_id}").touch()
    expect(log).to_contain_text("step 2 done <img src=y onerror=alert(2)>")
    expect(row).to_contain_text("step 2 done <img src=y onerror=alert(2)>")

    (s.base / f"go2-{task_id}").touch()
    outcome = page.locator(f'#outcomes tr[data-task="{task_id}"]')
    expect(outcome).to_contain_text("succeeded")
    expect(row).to_have_count(0)
    expect(outcome.locator("td.title")).to_have_text(HOSTILE)
    expect(log).to_contain_text("outcome succeeded, exit code 0")
    expect(follower.locator("#log-state")).to_have_text("ended")

    assert page.locator("#live img").count() == 0
    assert follower.locator("main img").count() == 0
    assert page.dialogs == []  # type: ignore[attr-defined]
    assert page.errors == []  # type: ignore[attr-defined]  # the page keeps its own CSP
    daemon.terminate()
    assert daemon.wait(timeout=30) == 0
    assert stop(proc) == 0


def test_a_hostile_title_renders_as_text_and_opens_no_dialog(make_scheduler, page):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1})
    task_id = s.add(HOSTILE, "--queue", "dev", "--description",
                    "<script>alert(3)</script><svg onload=alert(4)>")
    proc, url = start_dashboard(s)

    page.goto(url + "/")
    cell = page.locator(f'#waiting tr[data-task="{task_id}"] td.title')
    expect(cell).to_have_text(HOSTILE)
    first = page.locator(".generated").inner_text()
    expect(page.locator(".generated")).not_to_have_text(first)  # a live refresh happened
    expect(cell).to_have_text(HOSTILE)
    page.goto(url + f"/tasks/{task_id}")
    expect(page.locator("#task-title")).to_have_text(f"task {task_id}: {HOSTILE}")
    expect(page.locator("pre.text")).to_have_text("<script>alert(3)</script>"
                                                  "<svg onload=alert(4)>")
    assert page.locator("main img, main svg[onload]").count() == 0
    assert page.dialogs == []  # type: ignore[attr-defined]
    assert page.errors == []  # type: ignore[attr-defined]
    assert stop(proc) == 0


def test_the_login_form_lets_a_token_holder_in(make_scheduler, page):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1})
    proc, url = start_dashboard(s, "--bind", "0.0.0.0:0", DASHBOARD_TOKEN=TOKEN)
    page.goto(url + "/")
    page.fill("input[name=token]", "not the token at all")
    page.click("button[type=submit]")
    expect(page.locator(".problem")).to_have_text("That token is not right.")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    expect(page.locator("#agents")).to_contain_text("vaela")
    expect(page.locator("#live-status")).to_have_text("live")
    assert stop(proc) == 0
