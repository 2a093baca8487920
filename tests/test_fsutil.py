"""The kernel lock of scheduler.fsutil: two holders exclude each other even within one
process (each has its own open file), taking it again is a no-op, the file stays."""

from __future__ import annotations

from scheduler.fsutil import kernel_flock


def test_two_locks_on_one_file_exclude_each_other_and_the_file_stays(tmp_path):
    path = tmp_path / "the.lock"
    acquired: list[int] = []
    first, second = kernel_flock(path, acquired.append), kernel_flock(path)
    assert first.fileno() is None and first.acquire()
    fd = first.fileno()
    assert acquired == [fd] and first.is_locked
    assert first.acquire() and first.fileno() == fd and acquired == [fd]  # held: a no-op
    assert not second.acquire(timeout=0.05) and second.fileno() is None
    first.release()
    assert first.fileno() is None and path.exists()
    assert second.acquire() and not first.acquire()
    second.release()
    first.release()  # releasing what is not held changes nothing
    assert (path.stat().st_mode & 0o777) == 0o600
