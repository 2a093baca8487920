"""Shared fixtures, kept generic."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture
def spawn_python() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start ``python -c CODE`` (this venv's interpreter) as a real child process.

    Extra keyword arguments go to :class:`subprocess.Popen` (text mode, stdin/stdout piped
    by default). Children still running at teardown are killed and reaped.
    """
    children: list[subprocess.Popen] = []

    def spawn(code: str, *args: str, **kwargs: object) -> subprocess.Popen:
        kwargs.setdefault("stdin", subprocess.PIPE)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("text", True)
        child = subprocess.Popen([sys.executable, "-c", code, *args], **kwargs)  # type: ignore[call-overload]
        children.append(child)
        return child

    yield spawn
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()
        for stream in (child.stdin, child.stdout, child.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(autouse=True)
def _restore_project_logger() -> Iterator[None]:
    """A command run in-process configures the project logger (handlers, no propagation);
    put it back, so that a later test's caplog sees its records whatever ran before."""
    import logging

    from scheduler.logs import LOGGER_NAME

    logger = logging.getLogger(LOGGER_NAME)
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    for handler in list(logger.handlers):
        if handler not in saved[0]:
            logger.removeHandler(handler)
            handler.close()
    logger.handlers[:] = saved[0]
    logger.propagate, logger.level = saved[1], saved[2]


@pytest.fixture(scope="session")
def pg_server():
    """One throwaway PostgreSQL per test process (see tests/pgserver.py)."""
    from pgserver import PgServer

    server = PgServer()
    yield server
    server.cleanup()


@pytest.fixture
def pg_url(pg_server) -> Iterator[str]:
    """The URL of a fresh, empty database on the test server (dropped afterwards)."""
    url = pg_server.new_database()
    yield url
    if pg_server.running():
        pg_server.drop_database(url)


#: Debian's chromium, driven headless by Playwright (which never downloads a browser here).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser():
    """One headless chromium for the whole test session (per xdist worker)."""
    import os

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium "
                    "(apt-get install chromium; .ci/run does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser):
    """A fresh browser context and page; every dialog its pages open is recorded in
    ``page.dialogs`` (and dismissed), every console error (a Content-Security-Policy
    violation included) in ``page.errors``."""
    context = browser.new_context()
    opened = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    errors: list[str] = []

    def watch(p) -> None:
        p.on("dialog", on_dialog)
        p.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        p.on("pageerror", lambda e: errors.append(str(e)))

    context.on("page", watch)
    watch(opened)
    opened.dialogs = dialogs  # type: ignore[attr-defined]
    opened.errors = errors  # type: ignore[attr-defined]  # console errors, CSP reports
    yield opened
    context.close()
