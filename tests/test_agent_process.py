"""The gated agent process (wrapper/agent.py) and the attempt log (wrapper/attemptlog.py)
on their own: a gate that is never opened, an agent killed before its gate opens, waiting
with a deadline, the CPU time it used, and the attempt log on a disk that fills up.

Real forked processes and, for the disk, a small tmpfs (the test process must be allowed
to mount: root, as in CI)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import psutil
import pytest
from test_hardening import mount as mount  # noqa: F401 - the fixture
from test_wrapper import wait_for

from wrapper.agent import AgentProcess
from wrapper.attemptlog import AttemptLog

pytestmark = pytest.mark.processes


def start(tmp_path: Path, code: str) -> tuple[AgentProcess, Path]:
    """A gated ``python -c code`` whose output goes to a file; (agent, output file)."""
    out = tmp_path / "out.log"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        agent = AgentProcess([sys.executable, "-c", code], env=dict(os.environ),
                             cwd=tmp_path, output_fd=fd, lock_fd=None)
    finally:
        os.close(fd)
    return agent, out


def test_an_agent_whose_gate_never_opens_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    agent, _ = start(tmp_path, f"open({str(marker)!r}, 'w').write('yes')")
    agent.abort()
    assert agent.returncode == 127
    assert not marker.exists()
    assert agent.fileno() is None  # the pidfd is closed once reaped
    assert not agent.signal_group(signal.SIGTERM)  # nothing left to signal


def test_an_agent_killed_before_its_gate_opens_is_seen_as_killed(tmp_path: Path) -> None:
    """The gated child is killed from outside (say, the OOM killer) before the wrapper
    opens the gate: opening it finds nobody there, which is no launch error to report;
    the agent's end is a kill, as it was."""
    marker = tmp_path / "ran"
    agent, _ = start(tmp_path, f"open({str(marker)!r}, 'w').write('yes')")
    os.kill(agent.pid, signal.SIGKILL)
    wait_for(lambda: psutil.Process(agent.pid).status() == psutil.STATUS_ZOMBIE,
             what="the gated child to die")
    assert agent.release() is None
    assert agent.wait() == -signal.SIGKILL
    assert not marker.exists()


def run_by_name(tmp_path: Path, name: str, path: str) -> tuple[int | None, str | None, str]:
    """Start ``name`` through the agent's PATH ``path``: (exit code, launch error, output)."""
    out = tmp_path / "named.log"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        agent = AgentProcess([name], env={"PATH": path}, cwd=tmp_path, output_fd=fd,
                             lock_fd=None)
    finally:
        os.close(fd)
    error = agent.release()
    return agent.wait(), error, out.read_text()


def test_the_agent_program_is_found_on_its_path_as_execvpe_would(tmp_path: Path) -> None:
    """The wrapper searches the agent's PATH before the fork; what that search alone
    would get wrong (a file the kernel cannot run, a relative PATH entry, which means the
    agent's working directory) still ends as ``execvpe`` has it."""
    broken, good, work = tmp_path / "broken", tmp_path / "good", tmp_path / "work"
    for directory in (broken, good, work):
        directory.mkdir()
    (broken / "agent").write_bytes(b"\x00not a program")  # executable, ENOEXEC
    (good / "agent").write_text(f"#!{sys.executable}\nprint('from good')\n")
    (work / "here").write_text(f"#!{sys.executable}\nprint('from work')\n")
    for program in (broken / "agent", good / "agent", work / "here"):
        program.chmod(0o700)

    assert run_by_name(tmp_path, "agent", f"{broken}:{good}") == (0, None, "from good\n")
    assert run_by_name(work, "here", ".") == (0, None, "from work\n")
    code, error, _ = run_by_name(tmp_path, "agent", str(broken))
    assert code == 127 and "cannot start 'agent'" in error and "Exec format error" in error
    code, error, _ = run_by_name(tmp_path, "missing", f"{good}")
    assert code == 127 and "No such file or directory" in error


def test_waiting_with_a_deadline_and_the_cpu_time_used(tmp_path: Path) -> None:
    agent, out = start(tmp_path, "import sys, time\nprint('up', flush=True)\n"
                                 "sys.stdin.read()\ntime.sleep(60)")
    assert agent.cpu_seconds() is None  # not ended yet
    assert agent.release() is None
    wait_for(lambda: out.read_text() == "up\n", what="the agent to start")
    assert agent.wait(timeout=0.05) is None  # still running at the deadline
    assert agent.signal_group(signal.SIGTERM)
    assert agent.wait(timeout=30) == -signal.SIGTERM
    used = agent.cpu_seconds()
    assert used is not None and used > 0


def fill(directory: Path) -> Path:
    """Write a file until its file system has no byte left (unbuffered); returns it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def test_the_attempt_log_on_a_full_disk_loses_output_never_the_agent(
        tmp_path: Path, mount) -> None:  # noqa: F811 - the fixture
    """The agent's output that cannot be written is counted as left out, and the pipe is
    drained to its end all the same (an agent blocked on a full pipe could never end)."""
    disk = mount("1m")
    log = AttemptLog(disk.path / "attempt-1.log", 256 * 1024)
    log.write(b"header\n")
    filler = fill(disk.path)
    try:
        writer = log.agent_output()
        os.write(writer, b"x" * 50_000)
        os.close(writer)  # the agent has ended: EOF after the data
        assert log.pump() == 50_000
        assert log.fileno() is None  # drained to its end and closed
        assert log.omitted > 0
        assert log.received == len(b"header\n") + 50_000
    finally:
        log.close()
        filler.unlink()
    assert (disk.path / "attempt-1.log").read_bytes().startswith(b"header\n")


def test_closing_the_attempt_log_copies_what_the_agent_left_in_the_pipe(
        tmp_path: Path) -> None:
    log = AttemptLog(tmp_path / "a.log", 64 * 1024)
    writer = log.agent_output()
    os.write(writer, b"last words\n")
    log.close()  # the write end is still open: the pipe is drained, then closed
    os.close(writer)
    assert (tmp_path / "a.log").read_bytes() == b"last words\n"
    assert log.tail(10) == b""  # closed: nothing to read through


def test_the_capped_log_compacts_the_same_without_copy_file_range(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel or file system without ``copy_file_range``: the tail is moved through
    memory instead, with the same result."""
    import wrapper.attemptlog as attemptlog

    def compact(path: Path) -> bytes:
        log = AttemptLog(path, 4096)
        for n in range(2000):
            log.write(f"line {n:04d}\n".encode())
        log.close()
        return path.read_bytes()

    expected = compact(tmp_path / "kernel.log")

    def unsupported(*_args, **_kwargs) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(attemptlog.os, "copy_file_range", unsupported)
    assert compact(tmp_path / "memory.log") == expected
    assert expected.endswith(b"line 1999\n") and len(expected) <= 4096
