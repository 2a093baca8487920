"""The dashboard's task page and API while the task source is down: a task this host
knows nothing of is a 503 naming the source (it may well exist: never "no such task"),
a task with a lease or logs here is shown from them with the source's error, and the
answers are right again once the source is back. In process (the ASGI app called through
httpx) against a real fake TinyTask server and a real, broken local store."""

from __future__ import annotations

import asyncio
import html
import os
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from fake_tinytask import FakeTinyTask

from scheduler import clock
from scheduler.config.settings import load_settings
from scheduler.dashboard.app import create_app
from scheduler.dashboard.snapshot import Snapshot
from scheduler.state.leases import RUNNING, Lease, LeaseStore


class Client:
    """Requests to the dashboard's ASGI app in this process."""

    def __init__(self, app) -> None:
        self.app = app

    def get(self, path: str) -> httpx.Response:
        async def request() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport,
                                         base_url="http://127.0.0.1") as client:
                return await client.get(path)

        return asyncio.run(request())


@contextmanager
def dashboard(settings) -> Iterator[Client]:
    snapshot = Snapshot(settings)
    try:
        yield Client(create_app(settings, snapshot=snapshot))
    finally:
        snapshot.close()


def settings_for(tmp_path, **values: str):
    environ = {"TINYSCHEDULER_" + key: value for key, value in values.items()}
    return load_settings(environ=environ, cwd=tmp_path, flags={"base_path": tmp_path})


def test_over_tinytask_a_source_outage_is_a_503_naming_the_source(tmp_path):
    with FakeTinyTask() as server:
        known = str(server.add_task("fix the login", queue="dev"))
        settings = settings_for(tmp_path, TASK_SOURCE="tinytask", MCP_ENDPOINT=server.url)
        now = clock.now()  # a run of this host: shown from its lease while the source is down
        LeaseStore(settings.running_dir).create(Lease(
            "77", "vaela", RUNNING, "tok", now, now, "here", metadata={"title": "leased"}))
        with dashboard(settings) as client:
            assert client.get(f"/api/v1/tasks/{known}").json()["title"] == "fix the login"
            assert client.get("/api/v1/tasks/999").status_code == 404

            server.fail_next(10**6, status=503)  # the server answers nothing but errors
            down = client.get(f"/api/v1/tasks/{known}")
            assert down.status_code == 503
            error = down.json()["error"]
            assert error.startswith("task source tinytask unavailable: ") and server.url \
                in error, error
            page = client.get(f"/tasks/{known}")
            assert page.status_code == 503 and f"task {known}: cannot be shown" in page.text
            assert html.escape(error) in page.text and "no task" not in page.text

            leased = client.get("/api/v1/tasks/77")
            assert leased.status_code == 200
            body = leased.json()
            assert (body["title"], body["lease"]["agent"], body["running_attempt"]) == \
                ("leased", "vaela", 1)
            assert body["source_error"].startswith("task source tinytask unavailable: ")
            shown = client.get("/tasks/77")
            assert shown.status_code == 200 and html.escape(body["source_error"]) + \
                "; shown from this host's lease and logs" in shown.text

            server.fail_next(0)  # back
            back = client.get(f"/api/v1/tasks/{known}")
            assert back.status_code == 200 and "source_error" not in back.json()
            assert client.get("/api/v1/tasks/999").status_code == 404


def test_a_broken_local_store_is_a_503_naming_it(tmp_path):
    settings = settings_for(tmp_path, TASK_SOURCE="local")
    os.makedirs(settings.tasks_db.parent, mode=0o700, exist_ok=True)
    fd = os.open(settings.tasks_db, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"this is not a database" * 100)
    os.close(fd)
    with dashboard(settings) as client:
        down = client.get("/api/v1/tasks/1")
        assert down.status_code == 503
        error = down.json()["error"]
        assert error.startswith(f"task source local unavailable: local store "
                                f"{settings.tasks_db}"), error
        assert client.get("/tasks/1").status_code == 503
