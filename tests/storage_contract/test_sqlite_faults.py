"""SQLite under faults: start-up problems are :class:`StorageError` with a message that
names the path and what to do; run-time problems are :class:`StorageUnavailable` and
pass once the cause is gone.

The tests run as root, which ignores file modes, so "read-only" and "disk full" use
real file systems: a ``tmpfs`` mounted for the test (read-only by ``remount,ro``, full
by a small ``size=``). Where mounting is not permitted those tests skip with the reason.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from collabtrio.storage import (
    EntityWrite,
    HistoryEntry,
    RoomChanges,
    StorageError,
    StorageUnavailable,
    open_store,
)
from collabtrio.storage.sqlite import SQLiteStore


def url(path: Path) -> str:
    return f"sqlite:///{path}"  # absolute: sqlite:////...


def changes(seq: int, size: int = 10) -> list[RoomChanges]:
    return [RoomChanges("r", seq, 100, base_seq=seq - 1,
                        entities=[EntityWrite("c", str(seq), {"blob": "x" * size})],
                        history=[HistoryEntry(seq, "op", {"seq": seq}, float(seq))])]


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``mount(size)`` -> a fresh tmpfs directory of that size; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        proc = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where))
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): "
                        f"{proc.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        if _run("umount", str(where)).returncode != 0:
            _run("umount", "-l", str(where))


def remount(where: Path, mode: str) -> None:
    proc = _run("mount", "-o", f"remount,{mode}", str(where))
    if proc.returncode != 0:
        pytest.skip(f"cannot remount {where} {mode}: {proc.stderr.strip()}")


# -- start-up -----------------------------------------------------------------------------


async def test_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "t.db"
    with pytest.raises(StorageError, match="does not exist") as info:
        await open_store(url(path))
    assert str(path) in str(info.value)
    assert "create it" in str(info.value)
    assert not isinstance(info.value, StorageUnavailable)


async def test_parent_is_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StorageError, match="is a file, not a directory"):
        await open_store(url(tmp_path / "file" / "t.db"))
    with pytest.raises(StorageError, match="is a file, not a directory"):
        await open_store(url(tmp_path / "file" / "deeper" / "t.db"))


async def test_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="it is a directory"):
        await open_store(url(tmp_path))


async def test_read_only_file_system(tmpfs: Callable[[str], Path]) -> None:
    where = tmpfs("1m")
    store = await open_store(url(where / "existing.db"))
    await store.commit(changes(1))
    await store.close()
    remount(where, "ro")
    for name in ("existing.db", "new.db"):
        with pytest.raises(StorageError, match="not writable") as info:
            await open_store(url(where / name))
        assert str(where / name) in str(info.value)
        assert "read-only" in str(info.value)
    remount(where, "rw")
    store = await open_store(url(where / "existing.db"))  # and it works again
    assert (await store.load_room("r", history_limit=10, chat_limit=10)).seq == 1
    await store.close()


async def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(StorageError, match="not a SQLite database") as info:
        await open_store(url(path))
    assert str(path) in str(info.value)
    assert path.read_text().startswith("these are my notes")  # left alone


_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2] == "exclusive":  # hold the file locked, even for readers, until exit
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("CREATE TABLE IF NOT EXISTS locker (x)")
    conn.execute("INSERT INTO locker VALUES (1)")
    conn.execute("COMMIT")
else:  # hold the write lock (readers may go on)
    conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
if conn.in_transaction:
    conn.execute("ROLLBACK")
conn.close()
"""


@pytest.fixture
def lock_file() -> Iterator[Callable[[Path, str], Callable[[], None]]]:
    """``lock(path, how)`` -> ``release()``: another process holds ``path`` locked,
    ``how`` = ``"exclusive"`` (``locking_mode=EXCLUSIVE`` and a write: nobody else may
    even read) or ``"write"`` (an open write transaction), until released or the test
    ends."""
    procs: list[subprocess.Popen[str]] = []

    def release(proc: subprocess.Popen[str]) -> None:
        assert proc.stdin is not None
        assert proc.stdout is not None
        if not proc.stdin.closed:
            proc.stdin.close()
        proc.wait(10)
        proc.stdout.close()

    def lock(path: Path, how: str) -> Callable[[], None]:
        proc = subprocess.Popen([sys.executable, "-c", _LOCKER, str(path), how], text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        return lambda: release(proc)

    yield lock
    for proc in procs:
        release(proc)


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "collabtrio-db"])
async def test_locked_by_another_process(
    tmp_path: Path, lock_file: Callable[[Path, str], Callable[[], None]], existing: bool
) -> None:
    path = tmp_path / "t.db"
    if existing:  # a collabtrio database (WAL mode) that another program opened exclusively
        store = await open_store(url(path))
        await store.commit(changes(1))
        await store.close()
    lock_file(path, "exclusive")
    with pytest.raises(StorageError, match="locked") as info:
        await SQLiteStore.open(url(path), busy_timeout_ms=200)
    assert str(path) in str(info.value)
    assert "another process" in str(info.value)


# -- run time -------------------------------------------------------------------------


async def test_disk_full_then_space_freed(tmpfs: Callable[[str], Path]) -> None:
    where = tmpfs("512k")
    store = await open_store(url(where / "t.db"))
    try:
        await store.commit(changes(1))
        filler = where / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError, match="No space left") as info:  # every free block
                while True:
                    os.write(fd, b"\0" * 4096)
            assert info.value.errno == errno.ENOSPC
        finally:
            os.close(fd)
        with pytest.raises(StorageUnavailable, match="full"):
            await store.commit(changes(2, size=100_000))
        await store.ping()  # reads still work
        snap = await store.load_room("r", history_limit=10, chat_limit=10)
        assert snap.seq == 1
        assert list(snap.entities["c"]) == ["1"]
        filler.unlink()
        await store.commit(changes(2, size=100_000))  # the same commit passes now
        snap = await store.load_room("r", history_limit=10, chat_limit=10)
        assert snap.seq == 2
        assert sorted(snap.entities["c"]) == ["1", "2"]
        assert [h.seq for h in snap.history] == [1, 2]
    finally:
        await store.close()


async def test_locked_at_run_time_is_unavailable_until_released(
    tmp_path: Path, lock_file: Callable[[Path, str], Callable[[], None]]
) -> None:
    """Another process holding the write lock longer than the busy timeout makes a
    commit fail with StorageUnavailable; once it lets go, commits pass again."""
    path = tmp_path / "t.db"
    store = await SQLiteStore.open(url(path), busy_timeout_ms=200)
    try:
        await store.commit(changes(1))
        release = lock_file(path, "write")
        with pytest.raises(StorageUnavailable, match="locked"):
            await store.commit(changes(2))
        assert (await store.load_room("r", history_limit=10, chat_limit=10)).seq == 1
        release()
        await store.commit(changes(2))
        assert (await store.load_room("r", history_limit=10, chat_limit=10)).seq == 2
    finally:
        await store.close()


async def test_calls_after_close_are_unavailable(tmp_path: Path) -> None:
    store = await open_store(url(tmp_path / "t.db"))
    await store.close()
    with pytest.raises(StorageUnavailable, match="closed"):
        await store.commit(changes(1))
