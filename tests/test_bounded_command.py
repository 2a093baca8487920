"""``run_bounded``, which runs every hook, git step and merge check: a program that cannot
start, a lost lease, a signal, a command that ignores SIGTERM or closes its output, and
output past the memory cap (real processes, no shell)."""

from __future__ import annotations

import os
import signal
import sys

import pytest
from test_reconciler import alive, wait_for

from scheduler.workspace import process
from scheduler.workspace.process import run_bounded

PY = sys.executable
ENV = dict(os.environ)


def python(code: str) -> list[str]:
    return [PY, "-S", "-c", code]


def test_a_missing_program_cannot_start_and_says_which(tmp_path):
    done = run_bounded([str(tmp_path / "no-such-hook")], cwd=tmp_path, env=ENV, timeout=5)
    assert done.returncode is None and not done.ok and done.output == b""
    assert done.describe(5) == f"could not start: {tmp_path / 'no-such-hook'}: No such file " \
                               "or directory"


def test_a_tick_that_says_stop_ends_the_command_and_its_group(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = ("import os, subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-S', '-c', "
            "'import time; time.sleep(60)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(60)\n")
    def tick() -> bool:
        return not pid_file.exists() or not pid_file.read_text()

    done = run_bounded(python(code), cwd=tmp_path, env=ENV, timeout=30, grace=5,
                       tick=tick, tick_every=0.02)
    assert done.stopped and not done.timed_out and not done.ok
    assert done.describe(30) == "stopped: the lease was lost"
    grandchild = int(pid_file.read_text())
    wait_for(lambda: not alive(grandchild), timeout=5, what="the grandchild to go with its group")


def test_a_command_killed_by_a_signal_is_named_so(tmp_path):
    done = run_bounded(python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"),
                       cwd=tmp_path, env=ENV, timeout=5)
    assert done.returncode == -signal.SIGKILL
    assert done.describe(5) == "killed by signal 9"


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ignoring TERM', flush=True)\n"
            "time.sleep(60)\n")
    seen = bytearray()
    # stopped (as by a lost lease) once it said it ignores SIGTERM: SIGKILL after the grace
    done = run_bounded(python(code), cwd=tmp_path, env=ENV, timeout=30, grace=0.2,
                       sink=seen.extend, tick=lambda: not seen, tick_every=0.02)
    assert done.stopped and done.returncode == -signal.SIGKILL
    assert done.output == b"ignoring TERM\n"


def test_a_command_that_closed_its_output_is_still_bounded_in_time(tmp_path):
    code = "import os, time; os.close(1); os.close(2); time.sleep(60)"
    done = run_bounded(python(code), cwd=tmp_path, env=ENV, timeout=0.3, grace=1)
    assert done.timed_out and done.returncode == -signal.SIGTERM


def test_output_past_the_cap_reaches_the_sink_but_is_not_all_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(process, "MAX_OUTPUT_BYTES", 1000)
    seen = bytearray()
    code = "import sys; sys.stdout.write('x' * 50000 + 'END')"
    done = run_bounded(python(code), cwd=tmp_path, env=ENV, timeout=10, sink=seen.extend)
    assert done.ok and done.output == b"x" * 1000
    assert len(seen) == 50003 and seen.endswith(b"END")


@pytest.mark.parametrize("lines, expected", [(2, "c\nd"), (10, "a\nb\nc\nd")])
def test_the_tail_is_the_last_lines(tmp_path, lines, expected):
    done = run_bounded(python("print('a\\nb\\nc\\nd\\n')"), cwd=tmp_path, env=ENV, timeout=5)
    assert done.tail(lines) == expected and done.describe(5) == "exited 0"


def test_a_failing_sink_never_leaves_the_command_running(tmp_path):
    pid_file = tmp_path / "pid"
    code = (f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
            "print('first line', flush=True); time.sleep(60)")

    def sink(_chunk: bytes) -> None:
        raise OSError(28, "No space left on device")  # the attempt log's disk is full

    with pytest.raises(OSError, match="No space left on device"):
        run_bounded(python(code), cwd=tmp_path, env=ENV, timeout=30, sink=sink)
    command = int(pid_file.read_text())
    assert not alive(command)  # killed and reaped before the error went up
