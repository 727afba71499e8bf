"""The embedded default store: one SQLite file, durable across restarts.

sqlite3 calls block, so they run on one dedicated thread that owns the
connection; the event loop only awaits them. One thread also serialises
writes, which is what SQLite does anyway. WAL mode lets readers in other
processes (a second server reading the same file) proceed during writes.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ._errors import DuplicateOperation, StoreUnavailable
from ._model import Operation, decode_row, encode_row

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS repoll_operations (
    id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    expires_at REAL,
    record TEXT NOT NULL,
    response BLOB,
    idempotency_key TEXT
);
CREATE INDEX IF NOT EXISTS repoll_operations_expires
    ON repoll_operations (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS repoll_operations_unfinished
    ON repoll_operations (status) WHERE status IN ('queued', 'running');
CREATE UNIQUE INDEX IF NOT EXISTS repoll_operations_idempotency_key
    ON repoll_operations (idempotency_key) WHERE idempotency_key IS NOT NULL;
"""
_COLUMNS = "id, version, status, expires_at, record, response, idempotency_key"
_INSERT = f"INSERT INTO repoll_operations ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"  # noqa: S608

_Job = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]
_BATCH = 256


class _Worker:
    """One thread that owns the connection and runs jobs in batches.

    Whatever queued up while the last batch ran goes into one transaction and
    is answered with one wake-up of the event loop: under load, a hundred
    writes cost one commit instead of a hundred.
    """

    def __init__(self, path: str, timeout: float) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._serve, args=(path, timeout), name="repoll-sqlite", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, future, loop))
        return future

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def _serve(self, path: str, timeout: float) -> None:
        try:
            connection = sqlite3.connect(
                path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
        except BaseException as exc:  # reported to the opener
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                first = self._jobs.get()
                if first is None:
                    return
                batch = [first]
                stopping = False
                while len(batch) < _BATCH:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        stopping = True
                        break
                    batch.append(job)
                self._run_batch(connection, batch)
                if stopping:
                    return
        finally:
            connection.close()

    @staticmethod
    def _run_batch(connection: sqlite3.Connection, batch: list[_Job]) -> None:
        results: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            connection.execute("BEGIN IMMEDIATE")
            for job in batch:
                try:
                    results.append((job, job[0](connection), None))
                except Exception as exc:
                    results.append((job, None, exc))
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            results = [(job, None, exc) for job in batch]
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Any, BaseException | None]]] = {}
        for result in results:
            by_loop.setdefault(result[0][2], []).append(result)
        for loop, answers in by_loop.items():
            if not loop.is_closed():
                loop.call_soon_threadsafe(_answer, answers)


def _answer(answers: list[tuple[_Job, Any, BaseException | None]]) -> None:
    for (_, future, _), value, error in answers:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


class SQLiteStore:
    """Operations in a SQLite file (``":memory:"`` for a private in-memory database).

    For one server process per file (see ``Store.shared``).
    """

    shared = False

    def __init__(self, path: str | Path, *, timeout: float = 5.0, cache_size: int = 4096) -> None:
        self.path = str(path)
        self._timeout = timeout
        # Terminal records never change again (only expiry drops them), so the
        # most recent ones are served from memory: replays cost no thread hop.
        self._terminal: OrderedDict[str, Operation] = OrderedDict()
        self._cache_size = cache_size
        self._worker: _Worker | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._worker is None:
            msg = "SQLiteStore used before open()"
            raise RuntimeError(msg)
        try:
            return await self._worker.submit(fn)
        except sqlite3.OperationalError as exc:  # locked, busy, disk I/O, cannot open
            msg = f"SQLite store {self.path}: {exc}"
            raise StoreUnavailable(msg) from exc

    async def open(self) -> None:
        if self._worker is not None:
            return
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Connecting and creating the schema block: off the event loop.
        self._worker = await asyncio.get_running_loop().run_in_executor(
            None, _Worker, self.path, self._timeout
        )

    async def close(self) -> None:
        if self._worker is None:
            return
        worker, self._worker = self._worker, None
        await asyncio.get_running_loop().run_in_executor(None, worker.stop)
        self._terminal.clear()

    async def create(self, operation: Operation) -> None:
        row = encode_row(operation)

        def insert(c: sqlite3.Connection) -> None:
            try:
                c.execute(_INSERT, row)
            except sqlite3.IntegrityError as exc:
                key = operation.idempotency_key
                if key is not None:
                    taken = c.execute(
                        "SELECT id FROM repoll_operations WHERE idempotency_key = ?", (key,)
                    ).fetchone()
                    if taken is not None:
                        raise DuplicateOperation(taken[0]) from exc
                msg = f"duplicate operation id {operation.id}"
                raise ValueError(msg) from exc

        await self._run(insert)

    def _remember(self, operation: Operation) -> None:
        if operation.status.is_terminal and self._cache_size > 0:
            self._terminal[operation.id] = operation
            if len(self._terminal) > self._cache_size:
                self._terminal.popitem(last=False)

    async def get(self, operation_id: str) -> Operation | None:
        cached = self._terminal.get(operation_id)
        if cached is not None:
            self._terminal.move_to_end(operation_id)
            return cached

        def select(c: sqlite3.Connection) -> tuple[Any, ...] | None:
            cursor = c.execute(
                f"SELECT {_COLUMNS} FROM repoll_operations WHERE id = ?",  # noqa: S608
                (operation_id,),
            )
            row: tuple[Any, ...] | None = cursor.fetchone()
            return row

        row = await self._run(select)
        if row is None:
            return None
        operation = decode_row(row)
        self._remember(operation)
        return operation

    async def subscribe(self, on_event: Callable[[str, str], None]) -> None:
        return None

    async def announce_cancel(self, operation_id: str) -> None:
        return None

    async def heartbeat(self, owner: str, *, ttl: float) -> None:
        return None  # one process per file: its owner is always the living one

    async def live_owners(self) -> set[str]:
        return set()

    async def find_by_idempotency_key(self, key: str) -> Operation | None:
        def select(c: sqlite3.Connection) -> tuple[Any, ...] | None:
            row: tuple[Any, ...] | None = c.execute(
                f"SELECT {_COLUMNS} FROM repoll_operations WHERE idempotency_key = ?",  # noqa: S608
                (key,),
            ).fetchone()
            return row

        row = await self._run(select)
        return None if row is None else decode_row(row)

    async def compare_and_set(self, operation: Operation, *, expected_version: int) -> bool:
        op_id, version, status, expires_at, record, response, _ = encode_row(operation)

        def update(c: sqlite3.Connection) -> bool:
            cursor = c.execute(
                "UPDATE repoll_operations SET version = ?, status = ?, expires_at = ?, "
                "record = ?, response = ? WHERE id = ? AND version = ?",
                (version, status, expires_at, record, response, op_id, expected_version),
            )
            return cursor.rowcount == 1

        updated = await self._run(update)
        if updated:
            self._remember(operation)
        return updated

    async def unfinished(self) -> list[Operation]:
        def select(c: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return c.execute(
                f"SELECT {_COLUMNS} FROM repoll_operations "  # noqa: S608
                "WHERE status IN ('queued', 'running')"
            ).fetchall()

        return [decode_row(row) for row in await self._run(select)]

    async def purge(self, *, now: float, tombstone: float) -> int:
        for op_id, op in list(self._terminal.items()):
            if op.expires_at is not None and op.expires_at <= now:
                del self._terminal[op_id]

        def purge(c: sqlite3.Connection) -> int:
            deleted = c.execute(
                "DELETE FROM repoll_operations WHERE expires_at <= ?", (now - tombstone,)
            ).rowcount
            c.execute(
                "UPDATE repoll_operations SET response = NULL "
                "WHERE expires_at <= ? AND response IS NOT NULL",
                (now,),
            )
            return deleted

        return await self._run(purge)
