"""Starting a real ``tinyscheduler dashboard`` process for the tests, and reading it."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time

import httpx
from test_reconciler import Scheduler

URL_LINE = re.compile(rb"dashboard on (http://\S+)/ ")


def start_dashboard(s: Scheduler, *args: str, **extra: object) -> tuple[subprocess.Popen, str]:
    """Start the dashboard on a free loopback port (or ``--bind`` in ``args``); returns
    the process and its base URL (no trailing slash) once it listens."""
    bind = () if "--bind" in args else ("--bind", "127.0.0.1:0")
    proc = subprocess.Popen(s.argv("dashboard", *bind, *args), env=s.environ(**extra),
                            cwd=s.base, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    s.children.append(proc)
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + 30
    while True:
        match = URL_LINE.search(seen)
        if match:
            url = match.group(1).decode().replace("0.0.0.0", "127.0.0.1")
            wait_until_serving(url)
            return proc, url
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"dashboard did not start: {seen!r} "
                                 f"{proc.stderr.read() if proc.poll() is not None else ''}")
        if select.select([fd], [], [], 0.1)[0]:
            seen += os.read(fd, 4096)


def wait_until_serving(url: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            httpx.get(url + "/static/dashboard.css", timeout=2)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def stop(proc: subprocess.Popen) -> int:
    proc.terminate()
    return proc.wait(timeout=15)
