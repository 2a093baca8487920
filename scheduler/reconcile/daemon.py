"""``run --daemon``: passes in a loop, woken early by wrappers and task changes.

Holds the scheduler lock for its whole life. Sleeps LOOP_INTERVAL_SEC between passes but
wakes within a moment when a wrapper exits or a local task changes (a datagram on the
wake socket) and, with several hosts on PostgreSQL, when work changes on any host
(LISTEN/NOTIFY through the source's coordinator). A woken pass starts at once; wake-ups
that arrive while a pass runs are drained together and start one more pass, so a burst
costs at most two passes without any fixed delay. SIGTERM/SIGINT: finish the current
pass, release the lock, exit 0, leave running agents alone. SIGHUP: re-read the
configuration at the next pass boundary.
"""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Callable

from scheduler.errors import ConfigError, TinySchedulerError
from scheduler.logs import get_logger
from scheduler.reconcile import sdnotify
from scheduler.state.wake import WakeSocket

log = get_logger("daemon")


class Daemon:
    def __init__(self, build: Callable, run_pass: Callable, settings) -> None:
        """``build(settings)`` makes a reconciler; ``run_pass(reconciler, busy)`` runs one
        pass and returns its summary (or raises); ``busy()`` tells whether wake-ups are
        already waiting for the next pass."""
        self.build = build
        self.run_pass = run_pass
        self.settings = settings
        self._stop = False
        self._reload = False
        self._listener = None  #: the cross-host wake-up channel, when there is one

    def _on_signal(self, signum, _frame) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True

    def serve(self, reload_settings: Callable) -> int:
        wake = WakeSocket(self.settings.wake_socket)
        signal_r, signal_w = os.pipe()
        os.set_blocking(signal_r, False)
        os.set_blocking(signal_w, False)
        old_wakeup = signal.set_wakeup_fd(signal_w)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        reconciler = self.build(self.settings)
        failures = 0
        ready = False
        try:
            while not self._stop:
                if self._reload:
                    self._reload = False
                    reconciler = self._reloaded(reconciler, reload_settings)
                try:
                    summary = self.run_pass(reconciler, wake.pending)
                    failures = 0 if not summary.errors else failures + 1
                    status = summary.line()
                except Exception:
                    failures += 1
                    log.exception("pass failed")
                    status = "last pass failed; see the log"
                if not ready:
                    sdnotify.notify("READY=1")
                    ready = True
                sdnotify.notify(f"WATCHDOG=1\nSTATUS={status}")
                if self._stop:
                    break
                self._listen(reconciler)
                self._sleep(wake, signal_r, self._interval(failures))
        finally:
            self._unlisten()
            sdnotify.notify("STOPPING=1")
            signal.set_wakeup_fd(old_wakeup)
            for fd in (signal_r, signal_w):
                os.close(fd)
            wake.close()
            reconciler.close()
            log.info("daemon stopped; running agents left alone")
        return 0

    def _interval(self, failures: int) -> float:
        """The interval, or while the source keeps failing, a backoff up to it."""
        interval = self.settings.loop_interval_sec
        if failures:
            return min(interval, 2 ** min(failures, 10))
        return interval

    def _listen(self, reconciler) -> None:
        """(Re)open the cross-host wake-up channel; without one, the interval rules."""
        if self._listener is not None:
            return
        try:
            self._listener = reconciler.wake_listener()
        except TinySchedulerError as exc:
            log.warning("cross-host wake-ups unavailable; sleeping the interval",
                        extra={"fields": {"error": str(exc)}})

    def _unlisten(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _sleep(self, wake: WakeSocket, signal_r: int, seconds: float) -> None:
        watched = [wake.fileno(), signal_r]
        listener = self._listener
        if listener is not None:
            watched.append(listener.fileno())
        ready, _, _ = select.select(watched, [], [], seconds)
        if listener is not None and listener.fileno() in ready:
            try:
                listener.drain()
            except TinySchedulerError as exc:
                log.warning("cross-host wake-up channel lost", extra={"fields": {
                    "error": str(exc)}})
                self._unlisten()
        if wake.fileno() in ready:
            wake.drain()
        if signal_r in ready:
            try:
                os.read(signal_r, 64)
            except BlockingIOError:
                pass

    def _reloaded(self, reconciler, reload_settings: Callable):
        try:
            settings = reload_settings()
        except ConfigError as exc:
            log.error("SIGHUP: configuration invalid, keeping the old one",
                      extra={"fields": {"error": str(exc)}})
            return reconciler
        changed = {name: item.value for name, item in settings.resolved().items()
                   if self.settings.resolved()[name].value != item.value}
        log.info("SIGHUP: configuration re-read", extra={"fields": {"changed": changed}})
        reconciler.close()
        self._unlisten()
        self.settings = settings
        return self.build(settings)
