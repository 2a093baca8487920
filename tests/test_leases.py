"""Lease documents and the file-backed lease store, with real files and real processes."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import stat
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from scheduler.errors import AlreadyLeased, InvalidName
from scheduler.state.leases import (
    FINISHING,
    LEASE_VERSION,
    MAX_RETIRED,
    RUNNING,
    STARTING,
    Lease,
    LeaseDecodeError,
    LeaseStore,
    encode,
)

T0 = datetime(2025, 1, 31, 12, 0, 0, 123000, tzinfo=timezone.utc)


def make_lease(task_id: str = "t1", token: str = "tok-1", **changes: object) -> Lease:
    lease = Lease(task_id=task_id, agent="worker", state=STARTING, spawn_token=token,
                  started_at=T0, heartbeat=T0, host="host-a")
    return replace(lease, **changes)


def wait_lines(children: list, expected: str) -> None:
    for child in children:
        line = child.stdout.readline().strip()
        assert line == expected, f"child {child.pid} said {line!r}"


def release_all(children: list) -> list[str]:
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    results = []
    for child in children:
        out, _ = child.communicate(timeout=30)
        assert child.returncode == 0, out
        results.append(out.strip())
    return results


# --- the document -----------------------------------------------------------------------


def test_json_round_trip_keeps_every_field_and_writes_utc_z() -> None:
    lease = make_lease(state=RUNNING, attempt=2, queue="q1", recipe="build.yaml", pid=123,
                       pid_started_at=1700000000.25, agent_pid=124,
                       agent_started_at=1700000001.5, scheduler_pid=99, heartbeat_sec=10,
                       stale_multiplier=3, metadata={"title": "x"})
    data = lease.to_json()
    assert data["started_at"] == "2025-01-31T12:00:00.123Z"
    assert data["heartbeat"].endswith("Z")
    assert data["version"] == LEASE_VERSION == 1
    for name in ("task_id", "agent", "pid", "recipe", "started_at", "heartbeat", "host",
                 "state", "metadata", "spawn_token", "pid_started_at", "agent_pid"):
        assert name in data
    assert Lease.from_json(json.loads(encode(lease))) == lease


def test_unknown_fields_survive_decode_and_rewrite(tmp_path: Path) -> None:
    data = make_lease().to_json() | {"future_field": {"a": [1, 2]}, "note": "kept"}
    lease = Lease.from_json(data)
    assert lease.extra == {"future_field": {"a": [1, 2]}, "note": "kept"}
    store = LeaseStore(tmp_path / "running")
    store.create(lease)
    store.heartbeat("t1", "tok-1", T0, state=FINISHING)
    raw = json.loads((tmp_path / "running" / "task_t1.json").read_text())
    assert raw["future_field"] == {"a": [1, 2]} and raw["note"] == "kept"
    assert raw["state"] == FINISHING


def test_legacy_lease_without_new_fields_decodes() -> None:
    legacy = {"task_id": "t9", "agent": "worker", "pid": 42, "recipe": "r.yaml",
              "started_at": "2025-01-31T12:00:00Z", "heartbeat": "2025-01-31T12:00:10Z",
              "host": "old-host", "state": "running", "metadata": {}}
    lease = Lease.from_json(legacy)
    assert (lease.spawn_token, lease.version, lease.heartbeat_sec) == ("", 1, 15)


@pytest.mark.parametrize(("field", "value"), [
    ("task_id", "../x"),
    ("task_id", None),
    ("agent", "a b"),
    ("state", "bogus"),
    ("spawn_token", 7),
    ("started_at", "yesterday"),
    ("heartbeat", 1700000000),
    ("host", ""),
    ("attempt", 0),
    ("attempt", True),
    ("pid", "123"),
    ("pid", -1),
    ("pid_started_at", "soon"),
    ("heartbeat_sec", 0),
    ("heartbeat_sec", 10**20),
    ("stale_multiplier", 10**6),
    ("metadata", []),
    ("queue", 3),
    ("version", "1"),
])
def test_decode_error_names_the_field(field: str, value: object) -> None:
    data = make_lease().to_json()
    data[field] = value
    with pytest.raises(LeaseDecodeError) as caught:
        Lease.from_json(data)
    assert caught.value.field == field
    assert repr(field) in str(caught.value)


def test_decode_error_for_a_missing_field_and_a_non_object() -> None:
    data = make_lease().to_json()
    del data["started_at"]
    with pytest.raises(LeaseDecodeError, match="'started_at'"):
        Lease.from_json(data)
    with pytest.raises(LeaseDecodeError, match="JSON object"):
        Lease.from_json([1, 2])  # type: ignore[arg-type]


# --- create / read / update / delete ----------------------------------------------------


def test_create_is_exclusive_private_and_leaves_no_temp(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "running")
    store.create(make_lease())
    with pytest.raises(AlreadyLeased, match="task t1 is already leased"):
        store.create(make_lease(token="tok-2"))
    assert store.read("t1").spawn_token == "tok-1"
    assert stat.S_IMODE(os.stat(tmp_path / "running").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "running" / "task_t1.json").st_mode) == 0o600
    assert os.listdir(tmp_path / "running") == ["task_t1.json"]


def test_read_missing_and_list_of_missing_dir(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "nothing")
    assert store.read("t1") is None
    assert store.list() == []
    assert not (tmp_path / "nothing").exists()


def test_update_replaces_and_list_skips_other_files(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "running")
    store.create(make_lease("a"))
    store.create(make_lease("b"))
    store.update(replace(make_lease("b"), state=RUNNING, pid=5))
    for name in (".tmp-task_c.json.1.ab", "task_a.lock", "notes.txt", "task_.json"):
        (tmp_path / "running" / name).write_text("junk")
    leases = store.list()
    assert [lease.task_id for lease in leases] == ["a", "b"]
    assert leases[1].state == RUNNING and leases[1].pid == 5
    assert not (tmp_path / "running" / "corrupt").exists()


def test_heartbeat_and_delete_are_fenced_by_the_spawn_token(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "running")
    store.create(make_lease(state=RUNNING))
    later = datetime(2025, 1, 31, 12, 1, 0, 456789, tzinfo=timezone.utc)
    assert store.heartbeat("t1", "other", later) is None
    beat = store.heartbeat("t1", "tok-1", later, agent_pid=77, agent_started_at=5.5)
    assert beat == store.read("t1")
    assert beat.heartbeat == later.replace(microsecond=456000) and beat.agent_pid == 77
    assert store.delete("t1", "other") is False
    assert store.read("t1") is not None
    # reclaimed and leased again: the old owner's heartbeat must not overwrite the new lease
    assert store.delete("t1", "tok-1") is True
    assert store.heartbeat("t1", "tok-1", later) is None
    store.create(make_lease(token="tok-2"))
    assert store.heartbeat("t1", "tok-1", later) is None
    assert store.read("t1").spawn_token == "tok-2"
    assert store.delete("t1", "") is False


def test_adopt_only_a_starting_lease_with_the_token(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "running")
    store.create(make_lease())
    assert store.adopt("t1", "wrong", 10, 1.0, T0) is None
    assert not store.is_held("t1")
    adopted = store.adopt("t1", "tok-1", os.getpid(), 1.5, T0)
    assert adopted is not None
    lease, lock = adopted
    try:
        assert lease == store.read("t1")
        assert (lease.state, lease.pid, lease.pid_started_at) == (RUNNING, os.getpid(), 1.5)
        assert store.is_held("t1")
        assert os.fstat(lock.fileno()).st_ino == os.stat(store.lock_path("t1")).st_ino
        assert store.adopt("t1", "tok-1", 11, 1.0, T0) is None  # already running
    finally:
        lock.release()
    assert not store.is_held("t1") and lock.fileno() is None
    assert stat.S_IMODE(os.stat(store.lock_path("t1")).st_mode) == 0o600


def test_remove_stale_lock_files(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "running")
    store.create(make_lease("leased"))
    held = store.liveness_lock("held")
    assert held.acquire(1)
    try:
        for task_id in ("leased", "free", "live"):
            lock = store.liveness_lock(task_id)
            assert lock.acquire(1)
            lock.release()
        assert store.remove_stale_lock_files({"live"}) == 1
        names = sorted(os.listdir(tmp_path / "running"))
        assert names == ["task_held.lock", "task_leased.json",
                         "task_leased.lock", "task_live.lock"]
        assert store.is_held("held")
    finally:
        held.release()


# --- corrupt files and untrusted names ---------------------------------------------------


def test_corrupt_files_are_quarantined_with_a_reason(tmp_path: Path, caplog) -> None:
    running = tmp_path / "running"
    store = LeaseStore(running)
    store.create(make_lease("good"))
    (running / "task_garbage.json").write_bytes(b"\x00\xff{not json")
    (running / "task_schema.json").write_text(
        json.dumps(make_lease("schema").to_json() | {"state": "bogus"}))
    (running / "task_mismatch.json").write_text(json.dumps(make_lease("other").to_json()))
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(make_lease("link").to_json()))
    (running / "task_link.json").symlink_to(outside)
    os.mkfifo(running / "task_fifo.json")
    with caplog.at_level(logging.WARNING, logger="tinyscheduler.leases"):
        leases = store.list()
    assert [lease.task_id for lease in leases] == ["good"]
    corrupt = running / "corrupt"
    moved = sorted(p.name for p in corrupt.iterdir() if not p.name.endswith(".reason"))
    assert [name.split(".json.")[0] for name in moved] == [
        "task_fifo", "task_garbage", "task_link", "task_mismatch", "task_schema"]
    reasons = {name.split(".json.")[0]: (corrupt / f"{name}.reason").read_text()
               for name in moved}
    assert "invalid JSON" in reasons["task_garbage"]
    assert "'state'" in reasons["task_schema"] and "bogus" in reasons["task_schema"]
    assert "'task_id'" in reasons["task_mismatch"]
    assert "symbolic link" in reasons["task_link"]
    assert "regular file" in reasons["task_fifo"]
    link_copy = next(corrupt.glob("task_link.json.*[0-9Z]"))
    assert link_copy.is_symlink()  # the link itself was moved, its target never touched
    assert json.loads(outside.read_text())["task_id"] == "link"
    assert len([r for r in caplog.records if "corrupt lease" in r.getMessage()]) == 5
    assert sorted(os.listdir(running)) == ["corrupt", "task_good.json"]


def test_read_quarantines_a_corrupt_lease(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "running")
    store.create(make_lease())
    (tmp_path / "running" / "task_t1.json").write_text("{}")
    assert store.read("t1") is None
    assert not (tmp_path / "running" / "task_t1.json").exists()
    assert len(list((tmp_path / "running" / "corrupt").glob("task_t1.json.*.reason"))) == 1


@pytest.mark.parametrize("task_id", ["../x", ".", "..", "a/b", "x" * 65, "..%2f", "", "a\0b",
                                     "/etc/passwd"])
def test_traversal_ids_rejected_before_any_path_exists(tmp_path: Path, task_id: str) -> None:
    store = LeaseStore(tmp_path / "running")
    calls = [
        lambda: store.create(make_lease(task_id)),
        lambda: store.update(make_lease(task_id)),
        lambda: store.read(task_id),
        lambda: store.heartbeat(task_id, "tok-1", T0),
        lambda: store.delete(task_id, "tok-1"),
        lambda: store.adopt(task_id, "tok-1", 1, 1.0, T0),
        lambda: store.liveness_lock(task_id),
        lambda: store.is_held(task_id),
    ]
    for call in calls:
        with pytest.raises(InvalidName):
            call()
    assert list(tmp_path.iterdir()) == []


# --- real concurrent processes ------------------------------------------------------------

CREATE_CHILD = """
import sys
from pathlib import Path
from scheduler import clock
from scheduler.errors import AlreadyLeased
from scheduler.state.leases import STARTING, Lease, LeaseStore
store = LeaseStore(Path(sys.argv[1]))
now = clock.now()
lease = Lease("t1", "worker", STARTING, sys.argv[2], now, now, "host-a")
print("ready", flush=True)
sys.stdin.readline()
try:
    store.create(lease)
    print("won", sys.argv[2])
except AlreadyLeased:
    print("lost")
"""


@pytest.mark.processes
def test_twenty_processes_create_one_lease(tmp_path: Path, spawn_python) -> None:
    running = tmp_path / "running"
    children = [spawn_python(CREATE_CHILD, str(running), f"tok-{n}") for n in range(20)]
    wait_lines(children, "ready")
    results = release_all(children)
    winners = [r for r in results if r.startswith("won")]
    assert len(winners) == 1 and results.count("lost") == 19
    assert LeaseStore(running).read("t1").spawn_token == winners[0].split()[1]
    assert os.listdir(running) == ["task_t1.json"]


ADOPT_CHILD = """
import os, sys
from pathlib import Path
from scheduler import clock
from scheduler.state.leases import LeaseStore
store = LeaseStore(Path(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
adopted = store.adopt("t1", "tok-1", os.getpid(), 1.0, clock.now())
print("won" if adopted else "lost")
"""


@pytest.mark.processes
def test_twenty_adopters_exactly_one_wins(tmp_path: Path, spawn_python) -> None:
    store = LeaseStore(tmp_path / "running")
    store.create(make_lease())
    children = [spawn_python(ADOPT_CHILD, str(store.running_dir)) for _ in range(20)]
    wait_lines(children, "ready")
    results = release_all(children)
    assert results.count("won") == 1 and results.count("lost") == 19
    winner = children[results.index("won")]
    lease = store.read("t1")
    assert lease.state == RUNNING and lease.pid == winner.pid


WRITER_CHILD = """
import sys
from dataclasses import replace
from pathlib import Path
from scheduler import clock
from scheduler.state.leases import LeaseStore
store = LeaseStore(Path(sys.argv[1]))
task_id = sys.argv[2]
lease = store.read(task_id)
print("ready", flush=True)
sys.stdin.readline()
for i in range(200):
    if i % 2:
        store.heartbeat(task_id, "tok-1", clock.now(), metadata={"i": i, "pad": "x" * i})
    else:
        store.update(replace(lease, metadata={"i": i}))
print("done", flush=True)
"""


@pytest.mark.processes
def test_sigkilled_writers_never_leave_a_torn_or_missing_lease(tmp_path: Path,
                                                               spawn_python) -> None:
    # 20 writers, each looping 200 updates on its own store, SIGKILLed at random moments.
    rng = random.Random()
    stores = {f"w{n}": LeaseStore(tmp_path / f"run{n}") for n in range(20)}
    for task_id, store in stores.items():
        store.create(make_lease(task_id, state=RUNNING))
    children = [spawn_python(WRITER_CHILD, str(store.running_dir), task_id)
                for task_id, store in stores.items()]
    wait_lines(children, "ready")
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    start = time.monotonic()
    delays = sorted(((rng.uniform(0.0, 0.3), c) for c in children), key=lambda d: d[0])
    for delay, child in delays:
        time.sleep(max(0.0, start + delay - time.monotonic()))
        child.send_signal(signal.SIGKILL)
    for child in children:
        child.wait(timeout=10)
    for task_id, store in stores.items():
        leases = store.list()
        assert [lease.task_id for lease in leases] == [task_id]
        assert 0 <= leases[0].metadata.get("i", 0) < 200
        assert not (store.running_dir / "corrupt").exists()
        # still usable: a writer killed inside the store mutex left no lock behind
        assert store.heartbeat(task_id, "tok-1", T0) is not None


def test_threads_sharing_one_store_never_collide(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    store = LeaseStore(tmp_path / "running")
    store.create(make_lease(state=RUNNING))

    def beat(n: int) -> int:
        return sum(store.heartbeat("t1", "tok-1", T0, metadata={"n": n}) is not None
                   for _ in range(25))

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(beat, range(8))) == 200
    assert store.read("t1").metadata["n"] in range(8)
    assert sorted(os.listdir(tmp_path / "running")) == [".store.lock", "task_t1.json"]


def test_reown_is_a_compare_and_swap(tmp_path: Path) -> None:
    """The scheduler's fence before a reclaim loses to a wrapper that moved the lease on."""
    store = LeaseStore(tmp_path / "running")
    judged = make_lease()
    store.create(judged)
    adopted = store.adopt("t1", "tok-1", os.getpid(), 1.0, T0)
    assert adopted is not None
    adopted[1].release()
    assert store.reown(judged, "fence") is None  # adopted meanwhile: the wrapper wins
    assert store.read("t1").spawn_token == "tok-1"
    current = store.read("t1")
    reowned = store.reown(current, "fence")
    assert reowned is not None and store.read("t1").spawn_token == "fence"
    assert store.heartbeat("t1", "tok-1", T0) is None  # the old owner is fenced
    assert store.delete("t1", "fence")


def test_list_without_quarantine_leaves_a_corrupt_lease_in_place(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "running")
    store.create(make_lease("good"))
    bad = tmp_path / "running" / "task_bad.json"
    bad.write_bytes(b"{not json")
    assert [lease.task_id for lease in store.list(quarantine=False)] == ["good"]
    assert bad.exists() and not (tmp_path / "running" / "corrupt").exists()
    store.list()
    assert not bad.exists()


# --- a change between the read and the commit ------------------------------------------


def interleave(store: LeaseStore, between) -> None:
    """Run ``between()`` once, after ``store``'s next operation has read the lease (and
    written its new file), just before it commits: another process's change landing in
    that window."""
    real = store._mutex
    pending = [between]

    def mutex_after_interleaving():
        if pending:
            pending.pop()()
        return real()

    store._mutex = mutex_after_interleaving  # type: ignore[method-assign]


def two_stores_and_a_running_lease(directory: Path) -> tuple[LeaseStore, LeaseStore, Lease]:
    """Two processes' stores over one directory and the running lease both see."""
    store, other = LeaseStore(directory), LeaseStore(directory)
    store.create(make_lease(state=RUNNING, pid=5))
    return store, other, store.read("t1")


def test_a_fence_read_before_a_heartbeat_that_lands_first_is_not_committed(
        tmp_path: Path) -> None:
    store, other, judged = two_stores_and_a_running_lease(tmp_path)
    later = T0.replace(second=30)
    interleave(store, lambda: other.heartbeat("t1", "tok-1", later))

    assert store.reown(judged, "scheduler-token") is None  # the wrapper proved alive

    kept = store.read("t1")
    assert (kept.spawn_token, kept.heartbeat) == ("tok-1", later)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_a_heartbeat_read_before_a_fence_that_lands_first_is_fenced(
        tmp_path: Path) -> None:
    store, scheduler, judged = two_stores_and_a_running_lease(tmp_path)
    interleave(store, lambda: scheduler.reown(judged, "scheduler-token"))

    assert store.heartbeat("t1", "tok-1", T0.replace(second=30)) is None  # fenced

    assert store.read("t1").spawn_token == "scheduler-token"
    assert store.read("t1").heartbeat == T0


def test_a_delete_read_before_a_fence_that_lands_first_deletes_nothing(
        tmp_path: Path) -> None:
    store, scheduler, judged = two_stores_and_a_running_lease(tmp_path)
    interleave(store, lambda: scheduler.reown(judged, "scheduler-token"))

    assert store.delete("t1", "tok-1") is False
    assert store.read("t1").spawn_token == "scheduler-token"


def deleted_lease_files_open() -> int:
    """How many replaced or removed lease files this process still has open."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "task_" in target and target.endswith(".json (deleted)"):
            count += 1
    return count


def test_replaced_lease_files_are_freed_when_the_store_closes_what_it_retired(
        tmp_path: Path) -> None:
    """A compare-and-set keeps the replaced file open until close_retired (so its freeing
    happens off the caller's path), a bounded number at most."""
    store = LeaseStore(tmp_path)
    store.create(make_lease(state=RUNNING, pid=5))
    before = deleted_lease_files_open()
    store.heartbeat("t1", "tok-1", T0.replace(second=1))
    assert deleted_lease_files_open() == before + 1
    store.close_retired()
    assert deleted_lease_files_open() == before

    for second in range(2, 40):
        store.heartbeat("t1", "tok-1", T0.replace(second=second))
    assert deleted_lease_files_open() == before + MAX_RETIRED  # the oldest were closed
    assert store.delete("t1", "tok-1")
    store.close_retired()
    assert deleted_lease_files_open() == before
    assert store.read("t1") is None
