"""The embedded default store: one SQLite file, durable across restarts.

sqlite3 calls block, so they run on one dedicated thread that owns the
connection; the event loop only awaits them. One thread also serialises
writes, which is what SQLite does anyway. WAL mode lets readers in other
processes (a second server reading the same file) proceed during writes.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ._model import Operation, StoredResponse
from ._status import OperationStatus

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS repoll_operations (
    id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    expires_at REAL,
    record TEXT NOT NULL,
    response BLOB
);
CREATE INDEX IF NOT EXISTS repoll_operations_expires
    ON repoll_operations (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS repoll_operations_unfinished
    ON repoll_operations (status) WHERE status IN ('queued', 'running');
"""

_RECORD_FIELDS = (
    "principal",
    "endpoint",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "progress",
    "message",
    "cancel_requested",
)


def _encode(op: Operation) -> tuple[Any, ...]:
    record = {name: getattr(op, name) for name in _RECORD_FIELDS}
    response = None
    if op.response is not None:
        record["response_meta"] = {"status": op.response.status, "headers": op.response.headers}
        response = op.response.body
    return (
        op.id,
        op.version,
        op.status.value,
        op.expires_at,
        json.dumps(record, separators=(",", ":")),
        response,
    )


def _decode(row: tuple[Any, ...]) -> Operation:
    op_id, version, status, expires_at, record_json, body = row
    record = json.loads(record_json)
    meta = record.pop("response_meta", None)
    response = None
    if meta is not None and body is not None:
        headers = tuple((str(k), str(v)) for k, v in meta["headers"])
        response = StoredResponse(int(meta["status"]), headers, bytes(body))
    return Operation(
        id=op_id,
        version=version,
        status=OperationStatus(status),
        expires_at=expires_at,
        response=response,
        **record,
    )


class SQLiteStore:
    """Operations in a SQLite file (``":memory:"`` for a private in-memory database)."""

    def __init__(self, path: str | Path, *, timeout: float = 5.0) -> None:
        self.path = str(path)
        self._timeout = timeout
        self._thread: ThreadPoolExecutor | None = None
        self._connection: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None or self._connection is None:
            msg = "SQLiteStore used before open()"
            raise RuntimeError(msg)
        connection = self._connection
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, connection)

    async def open(self) -> None:
        if self._thread is not None:
            return
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="repoll-sqlite")

        def connect() -> sqlite3.Connection:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
            return connection

        loop = asyncio.get_running_loop()
        self._connection = await loop.run_in_executor(self._thread, connect)

    async def close(self) -> None:
        if self._thread is None:
            return
        if self._connection is not None:
            await self._run(lambda c: c.close())
        self._thread.shutdown(wait=True)
        self._thread = None
        self._connection = None

    async def create(self, operation: Operation) -> None:
        row = _encode(operation)

        def insert(c: sqlite3.Connection) -> None:
            try:
                c.execute("INSERT INTO repoll_operations VALUES (?, ?, ?, ?, ?, ?)", row)
            except sqlite3.IntegrityError as exc:
                msg = f"duplicate operation id {operation.id}"
                raise ValueError(msg) from exc

        await self._run(insert)

    async def get(self, operation_id: str) -> Operation | None:
        def select(c: sqlite3.Connection) -> tuple[Any, ...] | None:
            cursor = c.execute(
                "SELECT id, version, status, expires_at, record, response "
                "FROM repoll_operations WHERE id = ?",
                (operation_id,),
            )
            row: tuple[Any, ...] | None = cursor.fetchone()
            return row

        row = await self._run(select)
        return None if row is None else _decode(row)

    async def compare_and_set(self, operation: Operation, *, expected_version: int) -> bool:
        op_id, version, status, expires_at, record, response = _encode(operation)

        def update(c: sqlite3.Connection) -> bool:
            cursor = c.execute(
                "UPDATE repoll_operations SET version = ?, status = ?, expires_at = ?, "
                "record = ?, response = ? WHERE id = ? AND version = ?",
                (version, status, expires_at, record, response, op_id, expected_version),
            )
            return cursor.rowcount == 1

        return await self._run(update)

    async def unfinished(self) -> list[Operation]:
        def select(c: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return c.execute(
                "SELECT id, version, status, expires_at, record, response "
                "FROM repoll_operations WHERE status IN ('queued', 'running')"
            ).fetchall()

        return [_decode(row) for row in await self._run(select)]

    async def purge(self, *, now: float, tombstone: float) -> int:
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
