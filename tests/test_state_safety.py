"""State paths under umask 000 and with hostile things planted at them.

Every directory tinyscheduler creates is 0700 at every level and every file 0600,
whatever the umask; a symbolic link, FIFO or directory planted where a state file or
directory belongs is never followed, never blocks, and is refused with a message that
names the path (or quarantined, for records that are moved aside), never a traceback.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler import fsutil
from scheduler.errors import ConfigError, UnsafePath
from scheduler.state import outbox, pauses, records
from scheduler.state.leases import LeaseStore
from tests.test_leases import make_lease
from tests.test_reconciler import Scheduler, kill_leftovers, wait_for

VICTIM_TEXT = "precious, not tinyscheduler's\n"
NOBODY = 65534


@pytest.fixture
def umask0() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM_TEXT)
    path.chmod(0o644)
    return path


def assert_untouched(path: Path) -> None:
    assert path.read_text() == VICTIM_TEXT
    assert mode(path) == 0o644


def plant(path: Path, kind: str, target: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if kind == "symlink":
        path.symlink_to(target)
    elif kind == "dangling":
        path.symlink_to(target.parent / "nothing-here")
    elif kind == "fifo":
        os.mkfifo(path, 0o600)
    else:
        path.mkdir(mode=0o700)


# --- directories -----------------------------------------------------------------------------


def test_every_created_level_is_0700_whatever_the_umask(tmp_path, umask0):
    deep = tmp_path / "a" / "b" / "c"
    assert fsutil.ensure_private_dir(deep)
    for level in (tmp_path / "a", tmp_path / "a" / "b", deep):
        assert mode(level) == 0o700
    assert not fsutil.ensure_private_dir(deep)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o277, 0o777])
def test_files_and_dirs_are_exact_under_any_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        fsutil.ensure_private_dir(tmp_path / "d" / "e")
        fsutil.atomic_write(tmp_path / "d" / "f", b"x")
        fsutil.append_private(tmp_path / "d" / "g", b"x")
    finally:
        os.umask(previous)
    assert (mode(tmp_path / "d"), mode(tmp_path / "d" / "e")) == (0o700, 0o700)
    assert (mode(tmp_path / "d" / "f"), mode(tmp_path / "d" / "g")) == (0o600, 0o600)


def test_an_existing_state_dir_that_is_a_link_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(UnsafePath, match="is a symbolic link"):
        fsutil.ensure_private_dir(tmp_path / "link")


def test_writable_or_foreign_state_dirs_are_refused(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    with pytest.raises(UnsafePath, match=r"writable by group or others \(mode 0777\).*chmod 700"):
        fsutil.ensure_private_dir(loose)
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match=f"owned by uid {NOBODY}"):
        fsutil.ensure_private_dir(foreign)
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(UnsafePath, match="not a directory"):
        fsutil.ensure_private_dir(a_file)


# --- files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["symlink", "dangling", "fifo", "dir"])
def test_open_private_never_follows_or_blocks(tmp_path, kind):
    target = victim(tmp_path)
    path = tmp_path / "state" / "file"
    plant(path, kind, target)
    for flags in (os.O_WRONLY | os.O_APPEND, os.O_RDWR, os.O_RDONLY):
        with pytest.raises(UnsafePath) as caught:
            fsutil.open_private(path, flags)
        assert str(path) in str(caught.value)
    with pytest.raises(OSError):
        fsutil.read_private(path)
    assert_untouched(target)


def test_an_existing_loose_file_is_tightened_and_a_foreign_one_refused(tmp_path):
    path = tmp_path / "loose"
    path.write_text("")
    path.chmod(0o666)
    os.close(fsutil.open_private(path, os.O_RDWR))
    assert mode(path) == 0o600
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match=f"owned by uid {NOBODY}"):
        fsutil.open_private(path, os.O_RDWR)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "dir"])
def test_the_kernel_lock_refuses_what_is_not_a_lock_file(tmp_path, kind):
    target = victim(tmp_path)
    path = tmp_path / "task_1.lock"
    plant(path, kind, target)
    with pytest.raises(UnsafePath):
        fsutil.kernel_flock(path).acquire(0)
    assert_untouched(target)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "dir"])
def test_a_planted_liveness_lock_stops_the_lease_before_anything_starts(tmp_path, kind):
    store = LeaseStore(tmp_path / "running")
    plant(store.lock_path("1"), kind, victim(tmp_path))
    with pytest.raises(Exception, match="never followed.*task not started"):
        store.create(make_lease(task_id="1"))
    assert store.list() == []
    assert not store.is_held("1")


@pytest.mark.parametrize("kind", ["symlink", "fifo", "dir"])
def test_a_planted_store_mutex_is_refused(tmp_path, kind):
    store = LeaseStore(tmp_path / "running")
    store.create(make_lease(task_id="1"))
    plant(tmp_path / "running" / ".store.lock", kind, victim(tmp_path))
    with pytest.raises(UnsafePath, match=".store.lock"):
        store.delete("1", make_lease(task_id="1").spawn_token)
    assert_untouched(tmp_path / "victim.txt")


@pytest.mark.parametrize("kind", ["symlink", "dangling", "fifo", "dir"])
def test_planted_outbox_entries_are_quarantined_with_a_private_reason(tmp_path, kind, umask0):
    box = tmp_path / "outbox"
    fsutil.ensure_private_dir(box)
    entry = box / "1-abc.json"
    plant(entry, kind, victim(tmp_path))
    assert outbox.pending(box) == [entry]
    with pytest.raises(OSError):
        outbox.load(entry)
    moved = outbox.quarantine(entry, "not a regular file")
    reason = moved.with_name(moved.name + ".reason")
    assert mode(reason) == 0o600 and mode(moved.parent) == 0o700
    assert not os.path.lexists(entry)
    assert_untouched(tmp_path / "victim.txt")


@pytest.mark.parametrize("kind", ["symlink", "fifo", "dir"])
def test_a_planted_pause_file_is_a_config_error(tmp_path, kind):
    path = tmp_path / "paused.json"
    plant(path, kind, victim(tmp_path))
    with pytest.raises(ConfigError, match=str(path)):
        pauses.load(path)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "dir"])
def test_a_planted_metrics_file_is_refused_and_never_written_through(tmp_path, kind):
    target = victim(tmp_path)
    path = tmp_path / "metrics.jsonl"
    plant(path, kind, target)
    with pytest.raises(UnsafePath, match="metrics.jsonl"):
        records.append_metrics(path, "{}", 10 << 20)
    assert_untouched(target)


# --- end to end: real passes under umask 000 ---------------------------------------------------


class Hostile(Scheduler):
    """A :class:`Scheduler` whose commands run under umask 000."""

    def cli(self, *args: str, timeout: float = 60, env: dict | None = None,
            **extra: object) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), env=env or self.environ(**extra),
                              cwd=self.base, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, umask=0)


@pytest.fixture
def hostile(tmp_path) -> Iterator[Hostile]:
    s = Hostile(tmp_path, {"vaela": "dev"}, {"vaela": 1},
                LOG_DIR="deep/er/logs", MAX_ATTEMPTS=1)
    yield s
    kill_leftovers(tmp_path)


def walk_modes(root: Path) -> dict[str, int]:
    found = {}
    for path in [root, *root.rglob("*")]:
        found[str(path.relative_to(root.parent))] = mode(path)
    return found


def test_a_whole_life_under_umask_000_leaves_only_0700_dirs_and_0600_files(hostile):
    s = hostile
    done = s.add("all good", "--queue", "dev")
    failing = s.add("this will fail", "--queue", "dev")
    s.pass_until(lambda: s.statuses()[done] == "complete"
                 and s.statuses()[failing] == "failed")
    # quarantines write .reason files: a corrupt lease and a corrupt outbox entry
    for planted, text in ((s.running / "task_77.json", "{not json"),
                          (s.state / "outbox" / "9-tok.json", "[1, 2")):
        planted.write_text(text)
        planted.chmod(0o600)  # planted by this test: only what tinyscheduler makes is judged
    s.run_once(expect=1)
    assert s.cli("pause", "--agent", "vaela").returncode == 0
    assert (s.state / "paused.json").exists()
    assert list((s.running / "corrupt").glob("*.reason"))
    assert list((s.state / "outbox" / "corrupt").glob("*.reason"))
    for root in (s.state, s.base / "deep"):
        for name, found in walk_modes(root).items():
            if os.path.isdir(s.base / name):
                assert found == 0o700, name
            elif not stat.S_ISSOCK(os.lstat(s.base / name).st_mode):
                assert found == 0o600, name


#: (where, relative to the base) -> what a pass or command must do about a planted thing.
PATHS = {
    "lease": "state/running/task_1.json",
    "liveness lock": "state/running/task_1.lock",
    "store mutex": "state/running/.store.lock",
    "scheduler lock": "state/tinyscheduler.lock",
    "lock holder": "state/tinyscheduler.lock.holder",
    "outbox entry": "state/outbox/1-abc.json",
    "pause file": "state/paused.json",
    "last pass": "state/last-pass.json",
    "metrics": "state/metrics.jsonl",
    "attempt log": "deep/er/logs/tasks/1/attempt-1.log",
    "task file": "deep/er/logs/tasks/1/task.json",
    "tasks.db": "state/tasks.db",
    "scheduler log": "deep/er/logs/scheduler_{day}.log",
}


SINGLE_FILES = ("scheduler lock", "lock holder", "pause file", "last pass", "metrics",
                "tasks.db", "scheduler log", "store mutex")
KINDS = {"symlink": "a symbolic link", "fifo": "a FIFO", "dir": "a directory"}


def _prepare(s: Hostile, where: str) -> None:
    """Create the state a pass needs, except at ``where``."""
    if where != "tasks.db":
        with s.store() as store:
            store.add_task("a task", queue="dev")
    for directory in ("state/running", "state/outbox", "deep/er/logs/tasks/1"):
        fsutil.ensure_private_dir(s.base / directory)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "dir"])
@pytest.mark.parametrize("where", sorted(PATHS))
def test_a_planted_thing_is_never_followed_never_hangs_never_a_traceback(hostile, where,
                                                                         kind):
    s = hostile
    target = victim(s.base)
    _prepare(s, where)
    path = s.base / PATHS[where].format(day=time.strftime("%Y%m%d", time.gmtime()))
    plant(path, kind, target)

    if where not in SINGLE_FILES:
        proc = s.cli("run", "--once", timeout=30)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.returncode in (0, 1), (proc.returncode, proc.stderr)
        wait_for(lambda: not s.leases(), timeout=20, what="the wrappers to finish")
    _expect(s, where, kind, path)
    assert_untouched(target)


def _expect(s: Hostile, where: str, kind: str, path: Path) -> None:
    """What each planted thing leads to, beyond 'nothing followed, nothing hung'."""
    if where in ("lease", "outbox entry"):
        corrupt = path.parent / "corrupt"
        assert not os.path.lexists(path) and any(corrupt.iterdir())
    elif where == "liveness lock":
        proc = s.run_once(expect=1)
        assert "task 1: lease failed" in proc.stderr and "never followed" in proc.stderr
        assert not any(h["to_status"] == "working" for h in s.history("1"))
    elif where in SINGLE_FILES:  # refused before anything is done, by every command
        for command in (("run", "--once"), ("status",), ("validate-config",)):
            proc = s.cli(*command)
            assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
            assert f"{path} is {KINDS[kind]}, not a regular file" in proc.stdout + proc.stderr
            assert "Traceback" not in proc.stderr
            assert len(proc.stderr.strip().splitlines()) <= 1, proc.stderr
        if where == "tasks.db":
            proc = s.cli("task", "add", "x")
            assert proc.returncode == 2 and str(path) in proc.stderr
        else:
            assert not any(h["to_status"] == "working" for h in s.history("1"))
    elif where == "attempt log":
        task = wait_for(lambda: s.tasks()["1"] if s.tasks()["1"].status == "failed"
                        else None, what="the attempt to be reported")
        assert "attempt log unusable" in task.last_error and str(path) in task.last_error
    elif kind == "dir":  # the task file: cannot be replaced, so the launch fails
        task = wait_for(lambda: s.tasks()["1"] if s.tasks()["1"].status == "failed"
                        else None, what="the attempt to be reported")
        assert "launch_failed" in task.last_error and str(path) in task.last_error
    else:  # the task file: replaced, never followed
        s.pass_until(lambda: s.statuses()["1"] == "complete")
        assert stat.S_ISREG(os.lstat(path).st_mode)


def test_symlinked_running_or_outbox_dirs_are_refused_everywhere(hostile):
    s = hostile
    s.add("a task", "--queue", "dev")
    elsewhere = s.base / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    for name in ("running", "outbox"):
        fsutil.ensure_private_dir(s.state)
        link = s.state / name
        if os.path.isdir(link) and not link.is_symlink():
            os.rmdir(link) if not any(link.iterdir()) else None
        if not os.path.lexists(link):
            link.symlink_to(elsewhere)
        for command in (("validate-config",), ("run", "--once"), ("run", "--once", "--dry-run"),
                        ("status",)):
            proc = s.cli(*command)
            assert proc.returncode == 2, (name, command, proc.stdout, proc.stderr)
            out = proc.stdout + proc.stderr
            assert f"{link} is a symbolic link" in out and "OK       " + str(link) not in out
        link.unlink()
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("problem", ["group-writable", "foreign"])
def test_an_unsafe_state_dir_stops_every_command_with_exit_2(hostile, problem):
    s = hostile
    s.add("a task", "--queue", "dev")
    running = s.state / "running"
    fsutil.ensure_private_dir(running)
    if problem == "foreign":
        os.chown(running, NOBODY, NOBODY)
        expected = f"owned by uid {NOBODY}"
    else:
        running.chmod(0o770)
        expected = "chmod 700"
    for command in (("validate-config",), ("run", "--once"), ("status",)):
        proc = s.cli(*command)
        assert proc.returncode == 2 and expected in proc.stdout + proc.stderr, command
    assert s.statuses() == {"1": "idle"}
