"""A shared store on PostgreSQL (psycopg 3, async), for several server instances.

One table with the same columns as the SQLite store, a partial unique index on
idempotency keys, and a small table of owner heartbeats. Compare-and-set is an
``UPDATE ... WHERE version = expected`` in a transaction that also sends
``NOTIFY repoll_finished`` when the operation ends, so every instance
listening wakes its held polls the moment the transaction commits. Expired
records are dropped by :meth:`purge`, which servers call periodically.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from ._errors import require

require("psycopg", "postgres")
require("psycopg_pool", "postgres")

import psycopg  # noqa: E402 - after the extra check, for its clear message
from psycopg import errors as pg_errors  # noqa: E402
from psycopg_pool import AsyncConnectionPool, PoolTimeout  # noqa: E402

from ._errors import DuplicateOperation, StoreUnavailable  # noqa: E402
from ._model import Operation, decode_row, encode_row  # noqa: E402

_CHANNEL = "repoll_finished"
_CANCEL_CHANNEL = "repoll_cancel"
_COLUMNS = "id, version, status, expires_at, record, response, idempotency_key"
_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS repoll_operations (
        id TEXT PRIMARY KEY,
        version BIGINT NOT NULL,
        status TEXT NOT NULL,
        expires_at DOUBLE PRECISION,
        record TEXT NOT NULL,
        response BYTEA,
        idempotency_key TEXT
    )
    """,
    """CREATE UNIQUE INDEX IF NOT EXISTS repoll_operations_idempotency_key
        ON repoll_operations (idempotency_key) WHERE idempotency_key IS NOT NULL""",
    """CREATE INDEX IF NOT EXISTS repoll_operations_expires
        ON repoll_operations (expires_at) WHERE expires_at IS NOT NULL""",
    """CREATE INDEX IF NOT EXISTS repoll_operations_unfinished
        ON repoll_operations (status) WHERE status IN ('queued', 'running')""",
    """CREATE TABLE IF NOT EXISTS repoll_owners (
        owner TEXT PRIMARY KEY, alive_until DOUBLE PRECISION NOT NULL)""",
)
_UNAVAILABLE = (psycopg.OperationalError, PoolTimeout, OSError)


class PostgresStore:
    """Operations in PostgreSQL, shared by every instance that points at it."""

    shared = True

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self.url = url
        self._pool: AsyncConnectionPool | None = None
        self._sizes = (min_size, max_size)
        self._listener: asyncio.Task[None] | None = None

    @property
    def _p(self) -> AsyncConnectionPool:
        if self._pool is None:
            msg = "PostgresStore used before open()"
            raise RuntimeError(msg)
        return self._pool

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"PostgreSQL store: {exc}")

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = AsyncConnectionPool(
            self.url,
            min_size=self._sizes[0],
            max_size=self._sizes[1],
            open=False,
            kwargs={"autocommit": True},
            timeout=10,
        )
        try:
            await pool.open(wait=True, timeout=10)
            # One schema creation at a time across instances.
            async with pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(7461736)")
                for statement in _SCHEMA:
                    await conn.execute(statement)
        except _UNAVAILABLE as exc:
            await pool.close()
            raise self._unavailable(exc) from exc
        self._pool = pool

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                await self._listener
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _fetchone(self, query: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        try:
            async with self._p.connection() as conn:
                cursor = await conn.execute(query, params)
                return await cursor.fetchone()
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc

    async def create(self, operation: Operation) -> None:
        row = encode_row(operation)
        try:
            async with self._p.connection() as conn:
                await conn.execute(
                    f"INSERT INTO repoll_operations ({_COLUMNS}) "  # noqa: S608 - constant
                    "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    row,
                )
        except pg_errors.UniqueViolation as exc:
            if operation.idempotency_key is not None:
                owner = await self._fetchone(
                    "SELECT id FROM repoll_operations WHERE idempotency_key = %s",
                    (operation.idempotency_key,),
                )
                if owner is not None:
                    raise DuplicateOperation(owner[0]) from exc
            msg = f"duplicate operation id {operation.id}"
            raise ValueError(msg) from exc
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc

    async def find_by_idempotency_key(self, key: str) -> Operation | None:
        row = await self._fetchone(
            f"SELECT {_COLUMNS} FROM repoll_operations WHERE idempotency_key = %s",  # noqa: S608
            (key,),
        )
        return None if row is None else decode_row(row)

    async def get(self, operation_id: str) -> Operation | None:
        row = await self._fetchone(
            f"SELECT {_COLUMNS} FROM repoll_operations WHERE id = %s",  # noqa: S608
            (operation_id,),
        )
        return None if row is None else decode_row(row)

    async def compare_and_set(self, operation: Operation, *, expected_version: int) -> bool:
        op_id, version, status, expires_at, record, response, _ = encode_row(operation)
        try:
            async with self._p.connection() as conn, conn.transaction():
                cursor = await conn.execute(
                    "SELECT status FROM repoll_operations WHERE id = %s AND version = %s "
                    "FOR UPDATE",
                    (op_id, expected_version),
                )
                previous = await cursor.fetchone()
                if previous is None:
                    return False
                await conn.execute(
                    "UPDATE repoll_operations SET version = %s, status = %s, expires_at = %s, "
                    "record = %s, response = %s WHERE id = %s",
                    (version, status, expires_at, record, response, op_id),
                )
                if operation.status.is_terminal and previous[0] in ("queued", "running"):
                    await conn.execute("SELECT pg_notify(%s, %s)", (_CHANNEL, op_id))
                return True
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc

    async def unfinished(self) -> list[Operation]:
        try:
            async with self._p.connection() as conn:
                cursor = await conn.execute(
                    f"SELECT {_COLUMNS} FROM repoll_operations "  # noqa: S608
                    "WHERE status IN ('queued', 'running')"
                )
                rows = await cursor.fetchall()
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc
        return [decode_row(row) for row in rows]

    async def purge(self, *, now: float, tombstone: float) -> int:
        try:
            async with self._p.connection() as conn, conn.transaction():
                cursor = await conn.execute(
                    "DELETE FROM repoll_operations WHERE expires_at <= %s", (now - tombstone,)
                )
                deleted = cursor.rowcount
                await conn.execute(
                    "UPDATE repoll_operations SET response = NULL "
                    "WHERE expires_at <= %s AND response IS NOT NULL",
                    (now,),
                )
                return max(deleted, 0)
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc

    async def subscribe(self, on_event: Callable[[str, str], None]) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            await conn.execute(f"LISTEN {_CHANNEL}")
            await conn.execute(f"LISTEN {_CANCEL_CHANNEL}")
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc

        async def listen() -> None:
            try:
                async for notice in conn.notifies():
                    kind = "cancel" if notice.channel == _CANCEL_CHANNEL else "finished"
                    on_event(kind, notice.payload)
            finally:
                with contextlib.suppress(psycopg.Error, OSError):
                    await conn.close()

        self._listener = asyncio.get_running_loop().create_task(listen())

    async def announce_cancel(self, operation_id: str) -> None:
        await self._fetchone("SELECT pg_notify(%s, %s)", (_CANCEL_CHANNEL, operation_id))

    async def heartbeat(self, owner: str, *, ttl: float) -> None:
        now = time.time()
        try:
            async with self._p.connection() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO repoll_owners (owner, alive_until) VALUES (%s, %s) "
                    "ON CONFLICT (owner) DO UPDATE SET alive_until = EXCLUDED.alive_until",
                    (owner, now + ttl),
                )
                await conn.execute(
                    "DELETE FROM repoll_owners WHERE alive_until < %s", (now - 3600,)
                )
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc

    async def live_owners(self) -> set[str]:
        try:
            async with self._p.connection() as conn:
                cursor = await conn.execute(
                    "SELECT owner FROM repoll_owners WHERE alive_until > %s", (time.time(),)
                )
                return {row[0] for row in await cursor.fetchall()}
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc
