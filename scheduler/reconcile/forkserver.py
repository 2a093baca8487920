"""The daemon's fork server: one helper process that forks each wrapper on request.

``run --daemon`` keeps its task store open across passes. SQLite forbids forking a
process that holds an open connection if the child will open the database itself (the
child inherits the library's record of locks it does not hold), so forking wrappers from
the daemon meant closing the connection, with its WAL checkpoint, before every pass that
spawned, and paying a fork of the whole daemon plus a middle process per task. Instead,
at its first launch the daemon lets the source release its connections once and forks
this server; the server starts its own session, keeps only its end of a socket pair,
and for each request forks the wrapper (``detach.serve_tasks``) and answers its pid.
Exited wrappers are reaped by the kernel (SIGCHLD ignored in the server; the wrapper
restores it). The server exits when the daemon closes the socket or dies; a server
found gone is started again at the next pass.

A wrapper whose task ended cleanly is not one per task: it waits, up to
``WARM_WRAPPER_SEC``, on its own channel to the server, which hands it the next request
instead of forking (see :class:`_Server`).

Requests and answers are single datagrams: ``<task id>\\0<token>`` and the decimal pid, or
``!`` and why the fork failed. The daemon does not wait for an answer: it goes on with
its pass while the server forks, and reads the answers later (a failed fork is reported
as ``launch_failed`` at the next pass; a request the server never answered, because it
died, leaves a ``starting`` lease that the spawn timeout reclaims).
"""

from __future__ import annotations

import os
import select
import selectors
import signal
import socket
import time
from collections import deque

from scheduler.reconcile.detach import (
    MAX_MESSAGE,
    READY,
    forget_parent,
    parse_request,
    serve_tasks,
)
from wrapper import main as wrapper_main

#: How long the daemon waits for the server to take a request (seconds).
SEND_TIMEOUT_SEC = 10.0


class ForkServer:
    """The daemon's launcher (``Launcher`` protocol) for ``SPAWN_MODE=fork``."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self._sock: socket.socket | None = None
        self._pid: int | None = None
        self._waiting: deque[tuple[str, str]] = deque()  #: requests not answered yet
        self._failed: list[tuple[str, str, str]] = []  #: (task id, token, why)

    def prepare(self, source) -> None:
        """Start the server if it is not running (the source first releases what a
        forked child must not inherit); nothing otherwise."""
        self.reap()
        if self._sock is None:
            source.before_fork()
            self._start()

    def launch(self, task_id: str, token: str, lease_path: str) -> int | None:
        """Ask the server to fork this task's wrapper, without waiting for the answer
        (see :meth:`failures`). Raises OSError when the request cannot be sent."""
        if self._sock is None:
            raise OSError("the fork server is not running")
        self._collect()
        try:
            self._sock.send(f"{task_id}\0{token}".encode())
        except OSError as exc:  # timeout, reset, broken pipe: the server is unwell
            self.close()
            raise OSError(f"the fork server failed: {exc}") from None
        self._waiting.append((task_id, token))
        return None

    def failures(self) -> list[tuple[str, str, str]]:
        """The launches that failed since the last call: (task id, token, why)."""
        self._collect()
        failed, self._failed = self._failed, []
        return failed

    def _collect(self) -> None:
        """Read the answers that have arrived, without waiting."""
        while self._waiting and self._sock is not None:
            if not _readable(self._sock):
                return  # nothing more yet
            try:
                answer = self._sock.recv(MAX_MESSAGE)
            except OSError:
                answer = b""
            if not answer:  # gone: what it never answered is left to the spawn timeout
                self.close()
                return
            task_id, token = self._waiting.popleft()
            if answer.startswith(b"!"):
                self._failed.append((task_id, token, answer[1:].decode(errors="replace")))

    def reap(self) -> None:
        """Read the answers that arrived; notice a server that exited (it is started again
        at the next ``prepare``)."""
        self._collect()
        if self._pid is None:
            return
        try:
            pid, _status = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:
            pid = self._pid
        if pid:
            self._pid = None
            self.close()

    def close(self) -> None:
        """Stop the server and reap it. SIGKILL: it keeps nothing worth a clean exit,
        and a stopped server would never act on SIGTERM (the wait would hang)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._waiting.clear()
        if self._pid is not None:
            try:
                os.kill(self._pid, signal.SIGKILL)
                os.waitpid(self._pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self._pid = None

    def _start(self) -> None:
        wrapper_main.preload()  # every wrapper the server forks starts with these loaded
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            _serve(self.settings, theirs)
        theirs.close()
        ours.settimeout(SEND_TIMEOUT_SEC)
        self._sock, self._pid = ours, pid


def _readable(sock: socket.socket) -> bool:
    """Whether ``sock`` has something to read now (poll: no limit on descriptor numbers;
    a timeout socket's recv would wait for its timeout even with MSG_DONTWAIT)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _serve(settings, sock: socket.socket) -> None:
    """The server's loop; never returns."""
    code = 0
    try:
        forget_parent(keep=(sock.fileno(),))
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the wrappers
        _Server(settings, sock).run()
    except BaseException:
        code = 1
    finally:
        os._exit(code)


class _Server:
    """Hands each request to an idle wrapper, or forks a new one.

    Every wrapper has its own channel (a socket pair) to the server. A wrapper that
    finished its task and left nothing behind says ``ready`` there and waits; the next
    request goes to the most recently idle one (its memory is the warmest). Idle
    wrappers are retired after ``WARM_WRAPPER_SEC`` by closing their channel. Only the
    server ever ends an idle wrapper's wait, so a request is never sent to a wrapper
    that is leaving on its own; a send that fails (it died) falls through to the next
    idle wrapper or a fork.
    """

    def __init__(self, settings, sock: socket.socket) -> None:
        self.settings = settings
        self.sock = sock
        self.warm_sec = settings.warm_wrapper_sec
        self.selector = selectors.DefaultSelector()
        self.busy: dict[socket.socket, int] = {}  #: channel -> the wrapper's pid
        self.idle: list[tuple[float, socket.socket, int]] = []  #: (idle since, channel, pid)

    def run(self) -> None:
        with self.selector:  # epoll, not select(): descriptors past 1023 are fine
            self.selector.register(self.sock, selectors.EVENT_READ)
            while True:
                timeout = None  # until the oldest idle wrapper is due to retire
                if self.idle:
                    timeout = max(0.0, self.idle[0][0] + self.warm_sec - time.monotonic())
                for key, _ in self.selector.select(timeout):
                    channel = key.fileobj
                    if channel is self.sock:
                        request = self.sock.recv(MAX_MESSAGE)
                        if not request:
                            return  # the daemon closed its end or died
                        self.sock.send(self._hand_over(request))
                    else:
                        self._heard(channel)  # type: ignore[arg-type]
                self._retire(time.monotonic() - self.warm_sec)

    def _hand_over(self, request: bytes) -> bytes:
        """Give the request to an idle wrapper or a new one; the answer for the daemon."""
        while self.idle:
            _, channel, pid = self.idle.pop()
            try:
                channel.send(request)
            except OSError:  # it died while idle
                channel.close()
                continue
            self._busy(channel, pid)
            return str(pid).encode()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError as exc:
            ours.close()
            theirs.close()
            return b"!" + f"the wrapper could not be forked: {exc}".encode()
        if pid == 0:
            self._let_go(ours)
            task_id, token = parse_request(request)
            serve_tasks(self.settings, theirs, task_id, token)
        theirs.close()
        self._busy(ours, pid)
        return str(pid).encode()

    def _busy(self, channel: socket.socket, pid: int) -> None:
        self.busy[channel] = pid
        self.selector.register(channel, selectors.EVENT_READ)

    def _heard(self, channel: socket.socket) -> None:
        """A busy wrapper said ``ready``, or left."""
        pid = self.busy.pop(channel)
        self.selector.unregister(channel)
        try:
            message = channel.recv(MAX_MESSAGE)
        except OSError:
            message = b""
        if message == READY:
            self.idle.append((time.monotonic(), channel, pid))
        else:
            channel.close()

    def _let_go(self, ours: socket.socket) -> None:
        """In a freshly forked wrapper: the server's sockets become plain numbers, which
        ``forget_parent`` closes (no object of the server may close a reused number)."""
        for channel in (self.sock, ours, *self.busy, *(entry[1] for entry in self.idle)):
            channel.detach()

    def _retire(self, idle_before: float) -> None:
        while self.idle and self.idle[0][0] <= idle_before:
            _, channel, _ = self.idle.pop(0)
            channel.close()
