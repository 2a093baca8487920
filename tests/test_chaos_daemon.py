"""The chaos run against ``run --daemon`` (``make chaos``; not part of ``make test``).

As tests/test_chaos.py, but the scheduler is a daemon: between top-ups the daemon, its
fork server, wrappers and agents are SIGKILLed at random moments (a killed daemon is
started again), while the daemon starts wrappers through its fork server without waiting
for them. Checked at the end: every task complete, no two runs of one task overlapped,
nothing left behind.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import psutil
import pytest
from test_chaos import KILLS, Chaos, overlaps
from test_reconciler import Scheduler, kill_leftovers

pytestmark = [pytest.mark.processes, pytest.mark.chaos]


class DaemonChaos(Chaos):
    """The kills of :class:`Chaos` around a long-lived daemon instead of single passes."""

    daemon: subprocess.Popen | None = None

    def start_daemon(self) -> None:
        """A daemon writing to a file (an unread pipe would fill and block it)."""
        out = open(self.s.base / "daemon.out", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.daemon = subprocess.Popen(self.s.argv("run", "--daemon"), env=self.env,
                                           cwd=self.s.base, stdin=subprocess.DEVNULL,
                                           stdout=out, stderr=subprocess.STDOUT)
        finally:
            out.close()
        self.s.children.append(self.daemon)

    def one_pass(self, *, kill: bool) -> None:
        if self.daemon is None or self.daemon.poll() is not None:
            if self.daemon is not None:
                self.s.children.remove(self.daemon)
            self.start_daemon()
        time.sleep(self.rng.uniform(0.05, 0.3))
        self.passes += 1
        if not kill:
            return
        roll = self.rng.random()
        assert self.daemon is not None
        if roll < 0.15:
            self.daemon.send_signal(signal.SIGKILL)
            self.daemon.wait(timeout=30)
            self.kills["scheduler"] += 1
        elif roll < 0.3:
            servers = [child for child in psutil.Process(self.daemon.pid).children()
                       if child.status() != psutil.STATUS_ZOMBIE]
            for server in servers:
                server.kill()
                self.kills["fork server"] += 1

    def _wait_dead(self, proc: psutil.Process) -> None:
        """Return once the process is dead, a zombie or gone, not once it is reaped: an
        orphaned agent is reaped by init only every couple of seconds on some machines,
        and waiting for that would record its end seconds after it died (a run that
        looks longer than it was)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    return
            except psutil.NoSuchProcess:
                return
            time.sleep(0.001)
        raise psutil.TimeoutExpired(10, proc.pid)

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            self.daemon.wait(timeout=60)


@pytest.mark.timeout(3600)
def test_chaos_daemon(tmp_path):
    settings = dict(SPAWN_TIMEOUT_SEC=1, MAX_ATTEMPTS=1000, HEARTBEAT_SEC=1,
                    STALE_MULTIPLIER=2, KILL_GRACE_SEC=1, RETRY_BACKOFF_SEC=0,
                    LOOP_INTERVAL_SEC=1)
    s = Scheduler(tmp_path, {"vaela": "dev", "damien": "dev"}, {"vaela": 3, "damien": 3},
                  **settings)
    chaos = DaemonChaos(s, "local", None)
    try:
        figures = chaos.run()
        chaos.stop()
    finally:
        kill_leftovers(tmp_path)
    (tmp_path / "chaos-daemon.json").write_text(json.dumps(figures, indent=1))
    print(f"\nchaos figures: {json.dumps(figures)}")
    assert figures["kill_events"] >= KILLS
    assert figures["overlapping_runs"] == 0, overlaps(s.events())
    assert figures["stranded_after"] == 0
    assert figures["tasks_missing_a_success"] == []
