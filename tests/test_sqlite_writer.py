"""The SQLite store writes on the event loop when it can, and hands over when it cannot.

Each test holds SQLite's real write lock from another connection, or makes
every batch count as slow, and checks that writes still land, in order, and
that the loop never waits: a write that cannot go at once goes to the
store's thread, and so do the writes that follow it for a moment.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest

from repoll import OperationStatus, SQLiteStore
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
        # Once the lock is free, writes go back to the loop.
        writer = store._loop_writer
        assert writer is not None
        await asyncio.sleep(writer._busy_pause)
        commits = writer._commits
        await create_and_finish(store)
        assert writer._commits == commits + 2
    finally:
        await store.close()


async def test_a_slow_batch_sends_writes_to_the_thread_for_a_while(tmp_path, caplog):
    store = SQLiteStore(tmp_path / "ops.db")
    await store.open()
    try:
        writer = store._loop_writer
        assert writer is not None
        writer._slow = 0.0  # every batch counts as slow
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
