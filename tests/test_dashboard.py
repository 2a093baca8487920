"""The dashboard as a real process over HTTP: the bind and token rules, the JSON API
against ``status --json``, escaping and the security headers, the metrics against the
store after a run of 50 tasks, the action buttons with their CSRF check, and what the
dashboard must never do (take the lock, fork, import into the core CLI)."""

from __future__ import annotations

import html
import json
import re
import socket
import subprocess
import sys

import httpx
import psutil
import pytest
from dashboard_helpers import start_dashboard, stop
from prometheus_client.parser import text_string_to_metric_families
from test_reconciler import Scheduler, wait_for
from test_reconciler import make_scheduler as make_scheduler  # noqa: F401 - the fixture

from scheduler import clock
from scheduler.state.leases import RUNNING, Lease, LeaseStore

pytestmark = pytest.mark.processes

TOKEN = "a-test-token-0123456789"
HOSTILE = "<img src=x onerror=alert(1)>"


def get(url: str, **kwargs) -> httpx.Response:
    return httpx.get(url, timeout=10, follow_redirects=False, **kwargs)


def test_a_non_loopback_bind_needs_a_token(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1})
    refused = s.cli("dashboard", "--bind", "0.0.0.0:0")
    assert refused.returncode == 2
    assert "dashboard bind address 0.0.0.0 is not loopback: set " \
           "TINYSCHEDULER_DASHBOARD_TOKEN" in refused.stderr
    actions = s.cli("dashboard", DASHBOARD_ACTIONS="true")
    assert actions.returncode == 2 and "DASHBOARD_ACTIONS=true needs" in actions.stderr
    short = s.cli("dashboard", "--bind", "0.0.0.0:0", DASHBOARD_TOKEN="short")
    assert short.returncode == 2
    assert "TINYSCHEDULER_DASHBOARD_TOKEN=******** (from environment) is invalid: accepted: " \
           "at least 16" in short.stderr and "short" not in short.stderr.replace("shortest", "")
    bad = s.cli("dashboard", "--bind", "nowhere")
    assert bad.returncode == 2 and "TINYSCHEDULER_DASHBOARD_BIND='nowhere' (from flag)" \
        in bad.stderr and "accepted: HOST:PORT" in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = s.cli("dashboard", "--bind", f"127.0.0.1:{port}")
    assert busy.returncode == 2
    assert busy.stderr.strip().endswith(f"dashboard cannot listen on 127.0.0.1:{port}: "
                                        "Address already in use")


def test_with_a_token_every_request_needs_it(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1})
    s.run_once()
    proc, url = start_dashboard(s, "--bind", "0.0.0.0:0", DASHBOARD_TOKEN=TOKEN)

    for path in ("/", "/api/v1/state", "/metrics", "/tasks/1", "/fragments/state",
                 "/api/v1/tasks/1/log?attempt=1&offset=0"):
        response = get(url + path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert get(url + path, headers={"Authorization": "Bearer wrong-token-0123456789"}
                   ).status_code == 401
    assert 'name="token"' in get(url + "/").text  # the login form
    ok = get(url + "/api/v1/state", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["agents"][0]["agent"] == "vaela"
    assert get(url + "/static/dashboard.js").status_code == 200  # static files are open

    wrong = httpx.post(url + "/login", data={"token": "nope"}, timeout=10)
    assert wrong.status_code == 401 and auth_cookie(wrong) is None
    login = httpx.post(url + "/login", data={"token": TOKEN}, timeout=10)
    assert login.status_code == 303
    cookie = auth_cookie(login)
    assert cookie and TOKEN not in cookie
    assert "httponly" in login.headers["set-cookie"].lower()
    assert "samesite=strict" in login.headers["set-cookie"].lower()
    page = get(url + "/", cookies={"tinyscheduler_session": cookie})
    assert page.status_code == 200 and 'id="running"' in page.text
    assert TOKEN not in page.text
    assert stop(proc) == 0


def auth_cookie(response: httpx.Response) -> str | None:
    return response.cookies.get("tinyscheduler_session")


def test_api_has_the_shape_of_status_json_and_task_show(make_scheduler):
    s = make_scheduler({"vaela": "dev", "damien": "ops"}, {"vaela": 1, "damien": 1})
    first = s.add("hold me", "--queue", "dev", "--description", "the details")
    second = s.add("after the first", "--queue", "dev", "--blocked-by", first)
    s.run_once()
    wait_for(lambda: s.started(first), what="the first task to start")
    proc, url = start_dashboard(s)

    first_look = get(url + "/api/v1/state").json()
    assert first_look["waiting"] is None or isinstance(first_look["waiting"], list)
    # the waiting list is planned in the background: there on a later request
    state = wait_for(lambda: (lambda st: st if st["waiting"] is not None else None)(
        get(url + "/api/v1/state").json()), what="the waiting list")
    status = json.loads(s.cli("status", "--json").stdout)
    assert set(status) <= set(state)
    assert state["agents"] == status["agents"]
    assert state["backlog"] == status["backlog"]
    assert [row["task"] for row in state["leases"]] == [first]
    assert {k for k in status["leases"][0]} <= set(state["leases"][0])
    assert state["leases"][0]["title"] == "hold me"
    assert state["waiting"] == [{"task": second, "title": "after the first", "queue": "dev",
                                 "kind": "blocked", "reason": state["waiting"][0]["reason"]}]
    assert f"blocked by {first}" in state["waiting"][0]["reason"]
    assert set(state["chart"]) >= {"completed", "failed", "slot_use"}

    task = get(url + f"/api/v1/tasks/{second}").json()
    shown = json.loads(s.cli("task", "show", second, "--json").stdout)
    assert {k: task[k] for k in shown} == shown
    assert task["lease"] is None and task["attempt_logs"] == []
    running = get(url + f"/api/v1/tasks/{first}").json()
    assert running["lease"]["agent"] == "vaela" and running["running_attempt"] == 1
    assert get(url + "/api/v1/tasks/999").status_code == 404
    assert get(url + "/api/v1/tasks/..%2Fx").status_code == 404
    assert get(url + f"/api/v1/tasks/{first}/log?attempt=x&offset=0").status_code == 400
    chunk = get(url + f"/api/v1/tasks/{first}/log?attempt=1&offset=0").json()
    assert chunk["running"] is True and f"task {first} agent vaela attempt 1" in chunk["text"]
    again = get(url + f"/api/v1/tasks/{first}/log?attempt=1&offset={chunk['offset']}").json()
    assert again["text"] == "" and again["offset"] == chunk["offset"]
    s.release()
    wait_for(lambda: not s.leases(), what="the run to end")
    assert stop(proc) == 0


def test_hostile_text_is_escaped_and_the_policy_forbids_inline_script(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1})
    task_id = s.add(HOSTILE, "--queue", "dev", "--description", "<script>alert(2)</script>")
    s.settings["AGENT_COMMAND"] = f"{sys.executable} -c \"print('<b onmouseover=x>out</b>')\""
    s.run_once()
    wait_for(lambda: s.statuses()[task_id] == "complete", what="the task to finish")
    proc, url = start_dashboard(s)

    for path in ("/", "/fragments/state", f"/tasks/{task_id}", f"/fragments/tasks/{task_id}"):
        response = get(url + path)
        assert response.status_code == 200
        text = response.text
        assert HOSTILE not in text and "<script>alert" not in text and "<b onmouseover" \
            not in text, path
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
    page = get(url + f"/tasks/{task_id}").text
    assert html.escape(HOSTILE, quote=False) in page
    assert "&lt;b onmouseover=x&gt;out&lt;/b&gt;" in page
    assert html.escape("<script>alert(2)</script>", quote=False) in page
    assert re.search(r"<script\b", page).group(0) and page.count("<script") == 1  # ours
    assert 'src="/static/dashboard.js"' in page
    assert stop(proc) == 0


def family(families: dict, name: str) -> dict:
    return {tuple(sorted(sample.labels.items())): sample.value
            for sample in families[name].samples}


def test_metrics_parse_and_match_the_store_after_50_tasks(make_scheduler):
    s = make_scheduler({"vaela": "dev", "damien": "dev"}, {"vaela": 4, "damien": 4},
                       MAX_ATTEMPTS="1", LOOP_INTERVAL_SEC="1")
    ids = [s.add(f"task {i}" + (" fail" if i % 5 == 0 else ""), "--queue", "dev")
           for i in range(50)]
    proc, url = start_dashboard(s)
    daemon = s.popen("run", "--daemon")
    wait_for(lambda: all(st in ("complete", "failed") for st in s.statuses().values()),
             timeout=120, what="50 tasks to end")
    daemon.terminate()
    assert daemon.wait(timeout=30) == 0

    response = get(url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    statuses = list(s.statuses().values())
    complete, parked = statuses.count("complete"), statuses.count("failed")
    assert (complete, parked) == (40, 10) and len(ids) == 50

    outcomes = family(families, "tinyscheduler_outcomes")
    assert families["tinyscheduler_outcomes"].type == "counter"
    by_outcome: dict[str, float] = {}
    for labels, value in outcomes.items():
        by_outcome[dict(labels)["outcome"]] = by_outcome.get(dict(labels)["outcome"], 0) + value
    assert by_outcome == {"succeeded": complete, "failed": parked}
    assert {dict(k)["agent"] for k in outcomes} <= {"vaela", "damien"}
    tasks = family(families, "tinyscheduler_tasks")
    assert tasks[(("queue", "dev"), ("status", "complete"))] == complete
    assert tasks[(("queue", "dev"), ("status", "parked"))] == parked
    assert tasks[(("queue", "dev"), ("status", "ready"))] == 0
    passes = (s.state / "metrics.jsonl").read_text().splitlines()
    samples = {sample.name: sample.value
               for sample in families["tinyscheduler_pass_duration_seconds"].samples
               if sample.name.endswith(("_count", "_sum"))}
    assert samples["tinyscheduler_pass_duration_seconds_count"] == len(passes)
    assert family(families, "tinyscheduler_agent_slots_limit") == {
        (("agent", "vaela"),): 4, (("agent", "damien"),): 4}
    assert family(families, "tinyscheduler_agent_slots_used") == {
        (("agent", "vaela"),): 0, (("agent", "damien"),): 0}
    assert family(families, "tinyscheduler_reclaims") == {}
    assert family(families, "tinyscheduler_source_up") == {(): 1}
    assert family(families, "tinyscheduler_outbox_pending") == {(): 0}
    assert 0 <= family(families, "tinyscheduler_last_pass_age_seconds")[()] < 120
    # the page lists the latest outcomes too
    state = get(url + "/api/v1/state").json()
    assert len(state["outcomes"]) == 20 and sum(state["chart"]["completed"]) == complete
    assert stop(proc) == 0


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]{64})"', page).group(1)


def test_actions_need_the_csrf_token_and_call_the_cli_code(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1})
    task_id = s.add("cancel me", "--queue", "dev")
    proc, url = start_dashboard(s, DASHBOARD_TOKEN=TOKEN, DASHBOARD_ACTIONS="true")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    page = get(url + f"/tasks/{task_id}", headers=auth).text
    assert 'action="/actions/cancel"' in page
    csrf = csrf_of(page)

    def post(verb: str, data: dict, **headers: str) -> httpx.Response:
        return httpx.post(url + f"/actions/{verb}", data=data, headers={**auth, **headers},
                          timeout=10)

    assert post("cancel", {"task": task_id}).status_code == 403
    assert post("cancel", {"task": task_id, "csrf": "0" * 64}).status_code == 403
    assert post("cancel", {"task": task_id, "csrf": csrf},
                Origin="http://evil.example").status_code == 403
    assert s.statuses()[task_id] == "idle"
    done = post("cancel", {"task": task_id, "csrf": csrf, "next": f"/tasks/{task_id}"},
                Origin=url)
    assert done.status_code == 303 and done.headers["location"].startswith(
        f"/tasks/{task_id}?note=")
    assert s.statuses()[task_id] == "cancelled"
    note = get(url + done.headers["location"], headers=auth).text
    assert f"task {task_id} cancelled" in note
    assert post("retry", {"task": task_id, "csrf": csrf, "next": "//evil"}
                ).headers["location"].startswith("/?note=")
    assert s.statuses()[task_id] == "idle"
    post("pause", {"agent": "vaela", "csrf": csrf})
    assert json.loads((s.state / "paused.json").read_text())["agents"] == ["vaela"]
    post("resume", {"agent": "vaela", "csrf": csrf})
    assert json.loads((s.state / "paused.json").read_text())["agents"] == []
    failed = post("retry", {"task": "999", "csrf": csrf})
    assert "retry failed: no task with id 999" in get(url + failed.headers["location"],
                                                      headers=auth).text
    assert stop(proc) == 0

    proc, url = start_dashboard(s, DASHBOARD_TOKEN=TOKEN)  # actions off: no buttons
    page = get(url + f"/tasks/{task_id}", headers=auth).text
    assert "/actions/" not in page
    assert httpx.post(url + "/actions/cancel", data={"task": task_id, "csrf": csrf},
                      headers=auth, timeout=10).status_code == 404
    assert stop(proc) == 0


def test_forms_must_be_small_and_urlencoded_and_logout_ends_the_session(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1})
    proc, url = start_dashboard(s, DASHBOARD_TOKEN=TOKEN, DASHBOARD_ACTIONS="true")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    form = get(url + "/login")
    assert form.status_code == 200 and 'name="token"' in form.text

    def login(**kwargs) -> httpx.Response:
        return httpx.post(url + "/login", timeout=10, **kwargs)

    refused = [login(json={"token": TOKEN}),  # not a urlencoded form
               login(content=b"token=" + TOKEN.encode() + b"&pad=" + b"x" * 5000,
                     headers={"content-type": "application/x-www-form-urlencoded"}),
               login(content=b"token=\xff\xfe", headers={
                   "content-type": "application/x-www-form-urlencoded"})]
    for response in refused:
        assert response.status_code == 401 and auth_cookie(response) is None
        assert "That token is not right." in response.text
    logout = httpx.post(url + "/logout", cookies={"tinyscheduler_session": "x"},
                        headers=auth, timeout=10)
    assert logout.status_code == 303 and logout.headers["location"] == "/login"
    assert 'tinyscheduler_session=""' in logout.headers["set-cookie"]
    assert "max-age=0" in logout.headers["set-cookie"].lower()

    csrf = csrf_of(get(url + "/", headers=auth).text)
    both = httpx.post(url + "/actions/pause", data={"agent": "vaela", "queue": "dev",
                                                     "csrf": csrf}, headers=auth, timeout=10)
    note = get(url + both.headers["location"], headers=auth).text
    assert "pause failed: give an agent or a queue, not both" in note
    assert not (s.state / "paused.json").exists()

    first = both.headers["location"]
    for _ in range(50):  # the notes kept are bounded: the oldest goes
        httpx.post(url + "/actions/resume", data={"agent": "vaela", "csrf": csrf},
                   headers=auth, timeout=10)
    assert "not both" not in get(url + first, headers=auth).text
    assert stop(proc) == 0


def test_over_tinytask_a_task_shows_from_the_server_and_task_actions_are_refused(
        make_scheduler):
    from fake_tinytask import FakeTinyTask

    with FakeTinyTask() as server:
        task_id = str(server.add_task("fix the login", queue="dev", priority=3))
        s = make_scheduler({"vaela": "dev"}, {"vaela": 1}, TASK_SOURCE="tinytask",
                           MCP_ENDPOINT=server.url)
        proc, url = start_dashboard(s, DASHBOARD_TOKEN=TOKEN, DASHBOARD_ACTIONS="true")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        task = get(url + f"/api/v1/tasks/{task_id}", headers=auth).json()
        assert (task["id"], task["title"], task["queue"], task["priority"]) == \
            (task_id, "fix the login", "dev", 3)
        assert task["status"] == "idle" and task["parked"] is False and task["lease"] is None
        assert get(url + "/api/v1/tasks/999", headers=auth).status_code == 404
        now = clock.now()  # a run of a task the server no longer has: shown from its lease
        LeaseStore(s.running).create(Lease("42", "vaela", RUNNING, "tok", now, now, "here",
                                           metadata={"title": "deleted on the server"}))
        gone = get(url + "/api/v1/tasks/42", headers=auth).json()
        assert (gone["id"], gone["title"], gone["running_attempt"]) == \
            ("42", "deleted on the server", 1)
        assert gone["lease"]["agent"] == "vaela" and gone["lease"]["state"] == RUNNING

        csrf = csrf_of(get(url + "/", headers=auth).text)
        done = httpx.post(url + "/actions/cancel", data={"task": task_id, "csrf": csrf},
                          headers=auth, timeout=10)
        note = get(url + done.headers["location"], headers=auth).text
        assert "cancel failed: cancel and retry manage the embedded local store; manage " \
               "TinyTask tasks on the TinyTask server" in html.unescape(note)
        assert server.task(int(task_id))["status"] == "idle"
        assert stop(proc) == 0


def test_the_dashboard_takes_no_lock_forks_nothing_and_changes_nothing(make_scheduler):
    s = make_scheduler({"vaela": "dev"}, {"vaela": 1})
    proc, url = start_dashboard(s)
    assert get(url + "/").status_code == 200
    assert not (s.state / "tasks.db").exists(), "the dashboard never creates the store"
    no_login = get(url + "/login")  # no token: nothing to log in to
    assert no_login.status_code == 303 and no_login.headers["location"] == "/"
    missing = get(url + "/tasks/404")
    assert missing.status_code == 404 and "no task 404" in missing.text
    task_id = s.add("hold", "--queue", "dev")
    (s.running).mkdir(parents=True, exist_ok=True)
    corrupt = s.running / "task_77.json"
    corrupt.write_text("{not json")
    for _ in range(3):
        assert get(url + "/").status_code == 200
        assert get(url + "/metrics").status_code == 200
    assert corrupt.exists(), "a bad lease is left for the scheduler to quarantine"
    corrupt.unlink()
    s.run_once()  # the scheduler lock is free while the dashboard serves
    wait_for(lambda: s.started(task_id), what="the task to start")
    assert get(url + f"/tasks/{task_id}").status_code == 200
    assert psutil.Process(proc.pid).children(recursive=True) == []
    s.release()
    wait_for(lambda: not s.leases(), what="the run to end")
    assert stop(proc) == 0


def test_core_cli_never_imports_the_dashboard_libraries(tmp_path):
    probe = ("import sys\nfrom scheduler.cli import main\nimport contextlib, io\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n    main(['--help'])\n"
             "print(sorted(m for m in ('starlette', 'uvicorn', 'jinja2', 'prometheus_client', "
             "'scheduler.sources',"
             " 'scheduler.dashboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=tmp_path, check=True).stdout
    assert out.strip() == "[]"


def test_without_the_extra_the_command_says_how_to_install_it(tmp_path):
    probe = ("import sys\nsys.modules['starlette'] = None\nfrom scheduler.cli import main\n"
             "sys.exit(main(['--base-path', sys.argv[1], 'dashboard']))")
    proc = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "pip install 'tinyscheduler[dashboard]'" in proc.stderr
    assert "starlette is missing" in proc.stderr


_ = Scheduler  # re-exported helpers used by the browser tests
