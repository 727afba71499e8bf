"""The SQLite store writes on the event loop, never waiting there for a lock.

Each test holds SQLite's real write lock from another connection, or makes
every commit count as slow, and checks that writes still land, in order, and
that the loop never waits: a batch that finds the lock taken stays queued and
is tried again a moment later; a lock held for the whole timeout, or a slow
commit, sends the writes to the store's thread. Then the inserts that
``create_soon`` queues, and the compare-and-set that joins one.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from repoll import OperationStatus, SQLiteStore, StoreUnavailable
from repoll.core._headers import new_operation_id
from repoll.core._model import Operation
from repoll.core._status import Event
from repoll.stores import StoredResponse
from repoll.stores._store import update_operation

pytestmark = pytest.mark.anyio
NOW = 1_800_000_000.0


def running() -> Operation:
    return Operation(
        id=new_operation_id(),
        principal="p",
        endpoint="POST /x",
        status=OperationStatus.RUNNING,
        created_at=NOW,
        updated_at=NOW,
        started_at=NOW,
    )


async def create_and_finish(store: SQLiteStore) -> str:
    op = running()
    await store.create(op)

    def finish(current: Operation) -> Operation:
        return current.apply(
            Event.FINISH_OK, now=NOW, retention=60, response=StoredResponse(200, (), b"ok")
        )

    assert await update_operation(store, op.id, finish, known=op) is not None
    return op.id


async def test_writes_wait_for_another_writer_without_blocking_the_loop(tmp_path):
    store = SQLiteStore(tmp_path / "ops.db", timeout=5)
    await store.open()
    try:
        blocker = sqlite3.connect(
            tmp_path / "ops.db", isolation_level=None, check_same_thread=False
        )
        blocker.execute("BEGIN IMMEDIATE")  # SQLite's write lock, as another process would
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.get_running_loop().create_task(tick())
        threading.Timer(0.5, blocker.execute, args=("COMMIT",)).start()
        started = time.monotonic()
        ids = await asyncio.gather(*(create_and_finish(store) for _ in range(20)))
        waited = time.monotonic() - started
        ticker.cancel()
        blocker.close()
        assert waited >= 0.4  # they waited for the lock...
        assert ticks >= 20  # ...while the loop kept running
        for op_id in ids:  # and each create landed before its compare-and-set
            record = await store.get(op_id)
            assert record is not None
            assert record.status is OperationStatus.SUCCEEDED
        writer = store._loop_writer
        assert writer is not None
        assert writer.busy_retries > 0  # tried again on the loop...
        assert writer._commits >= 2  # ...and committed there, not on the thread
        commits = writer._commits
        await create_and_finish(store)
        assert writer._commits == commits + 2
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def locked_out(path, lock_timeout: float) -> AsyncIterator[tuple[SQLiteStore, Any]]:
    """An open store, and another connection holding its file's write lock until it commits."""
    store = SQLiteStore(path, timeout=lock_timeout)
    await store.open()
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        yield store, blocker
    finally:
        blocker.close()
        await store.close()


async def test_a_lock_held_for_the_whole_timeout_fails_the_write(tmp_path):
    async with locked_out(tmp_path / "ops.db", 0.3) as (store, blocker):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.create(running())
        # The loop's timeout, then the thread's own: no longer.
        assert 0.5 <= time.monotonic() - started < 3
        blocker.execute("COMMIT")
        op_id = await create_and_finish(store)  # and the store works on
        assert await store.get(op_id) is not None


async def test_a_slow_batch_sends_writes_to_the_thread_for_a_while(tmp_path, caplog):
    store = SQLiteStore(tmp_path / "ops.db")
    await store.open()
    try:
        writer = store._loop_writer
        assert writer is not None
        writer._slow = 0.0  # every commit counts as slow
        await create_and_finish(store)
        assert writer._slow_until > time.monotonic() + 20
        assert "took" in caplog.text
        ids = await asyncio.gather(*(create_and_finish(store) for _ in range(10)))
        for op_id in ids:
            assert await store.get(op_id) is not None
    finally:
        await store.close()


async def test_the_thread_checkpoints_what_the_loop_writes(tmp_path):
    path = tmp_path / "ops.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        writer = store._loop_writer
        assert writer is not None
        writer._checkpoint_every = 20
        for _ in range(100):
            await asyncio.gather(*(create_and_finish(store) for _ in range(20)))
        await asyncio.sleep(0.2)  # the last checkpoint runs on the thread
        # The WAL starts over after each checkpoint that finds no reader in it,
        # so the file stays small: 2.8 to 4.5 MB measured (it once failed a
        # 4 MiB bound); without checkpoints 2,000 operations grow it to 10.1 MB.
        assert (tmp_path / "ops.db-wal").stat().st_size < 7 * 1024 * 1024
    finally:
        await store.close()


async def test_closing_writes_what_is_queued(tmp_path):
    path = tmp_path / "ops.db"
    store = SQLiteStore(path)
    await store.open()
    op = running()
    pending = asyncio.get_running_loop().create_task(store.create(op))
    await asyncio.sleep(0)  # queued on the loop, not yet flushed
    await store.close()
    await pending
    reopened = SQLiteStore(path)
    await reopened.open()
    try:
        assert await reopened.get(op.id) is not None
    finally:
        await reopened.close()


# --- create_soon: an insert queued with the turn's writes ---------------------------


@contextlib.asynccontextmanager
async def opened(path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def finished(op: Operation) -> Operation:
    done = op.apply(Event.FINISH_OK, now=NOW, retention=60, response=StoredResponse(200, (), b"ok"))
    return done.evolve(version=op.version + 1)


def events(path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT kind, operation_id FROM repoll_events").fetchall()


async def test_an_update_before_the_insert_runs_is_written_with_it(tmp_path):
    async with opened(tmp_path / "ops.db") as store:
        writer = store._loop_writer
        assert writer is not None
        op = running()
        stored = store.create_soon(op)
        assert stored is not None
        commits = writer._commits
        # Joined at once, before anything is written...
        assert await store.compare_and_set(finished(op), expected_version=op.version)
        assert not stored.done()
        await stored
        # ...and written as one insert of the outcome.
        assert writer._commits == commits + 1
        reader = SQLiteStore(tmp_path / "ops.db")  # another process's view
        await reader.open()
        try:
            record = await reader.get(op.id)
        finally:
            await reader.close()
        assert record is not None
        assert record.status is OperationStatus.SUCCEEDED
        assert record.response is not None
        assert record.response.body == b"ok"
        # Nobody can have waited on it: no event for other processes.
        assert (("finished", op.id)) not in events(tmp_path / "ops.db")


async def test_an_update_after_the_insert_ran_is_an_update(tmp_path):
    async with opened(tmp_path / "ops.db") as store:
        op = running()
        stored = store.create_soon(op)
        assert stored is not None
        await stored
        assert await store.compare_and_set(finished(op), expected_version=op.version)
        assert not await store.compare_and_set(finished(op), expected_version=op.version)
        record = await store.get(op.id)
        assert record is not None
        assert record.status is OperationStatus.SUCCEEDED
        assert ("finished", op.id) in events(tmp_path / "ops.db")


async def test_an_insert_on_the_thread_still_takes_the_joined_outcome(tmp_path):
    # Commits counted slow: the queued insert runs on the store's thread,
    # while the loop may join it; the lock decides which record goes in.
    async with opened(tmp_path / "ops.db") as store:
        writer = store._loop_writer
        assert writer is not None
        writer._slow_until = time.monotonic() + 60
        ops = [running() for _ in range(200)]
        futures = [store.create_soon(op) for op in ops]
        joined = [
            await store.compare_and_set(finished(op), expected_version=op.version) for op in ops
        ]
        for future in futures:
            assert future is not None
            await future
        assert all(joined)
        for op in ops:
            store._terminal.clear()
            record = await store.get(op.id)
            assert record is not None
            assert record.status is OperationStatus.SUCCEEDED


async def test_a_queued_insert_that_fails_says_so_and_leaves_nothing(tmp_path):
    async with locked_out(tmp_path / "ops.db", 0.2) as (store, blocker):
        op = running()
        stored = store.create_soon(op)
        assert stored is not None
        assert await store.compare_and_set(finished(op), expected_version=op.version)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await stored
        blocker.execute("COMMIT")
        store._terminal.clear()
        assert await store.get(op.id) is None
        assert store._creating == {}
