"""Serving the dashboard: check the bind rule, bind the socket, run uvicorn in this one
process (one event loop, no workers, no reloader: nothing is forked)."""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
from collections.abc import Iterator

from scheduler.config.settings import split_bind
from scheduler.dashboard import auth
from scheduler.dashboard.app import create_app
from scheduler.errors import ConfigError
from scheduler.logs import get_logger, setup_logging
from scheduler.state.paths import check_state_paths

log = get_logger("dashboard")


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"dashboard cannot listen on {host}:{port}: "
                          f"{exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but SIGTERM/SIGINT end it with exit 0 after the graceful
        shutdown (uvicorn re-raises the signal, so the process would die of it)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {sig: signal.signal(sig, self.handle_exit)
                        for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server


def serve(settings) -> int:
    """Run the dashboard until SIGTERM/SIGINT; returns the exit code."""
    host, port = split_bind(settings.dashboard_bind)
    auth.check_bind(host, settings.dashboard_token, settings.dashboard_actions)
    check_state_paths(settings)  # a link or a writable directory: refused, exit 2
    import uvicorn

    setup_logging(settings.log_level, settings.log_format, None)
    sock = bind_socket(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{sock.getsockname()[1]}/"
    mode = "actions on" if settings.dashboard_actions else "read-only"
    access = "token required" if settings.dashboard_token else "no token (loopback only)"
    print(f"dashboard on {url} ({mode}, {access})", flush=True)
    config = uvicorn.Config(
        create_app(settings), log_config=None, log_level="warning", access_log=False,
        loop="asyncio", http="h11", ws="none", lifespan="on", server_header=False,
        proxy_headers=False, timeout_graceful_shutdown=2, timeout_keep_alive=10,
        limit_concurrency=64)
    server = _server_class()(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    print("dashboard stopped", file=sys.stderr, flush=True)
    return 0
