"""A shared store on PostgreSQL (psycopg 3, async), for several server instances.

One table with the same columns, indexes and statements as the SQLite store
(:mod:`._sql`), among them a partial unique index on idempotency keys, and a
small table of owner heartbeats. Compare-and-set is an
``UPDATE ... WHERE version = expected`` in a transaction that also sends
``NOTIFY repoll_finished`` when the operation ends, so every instance
listening wakes its held polls the moment the transaction commits. Expired
records are dropped by :meth:`purge`, which servers call periodically.

LISTEN runs on a connection of its own, watched by a supervisor task: it
waits for notifications a few seconds at a time and checks the connection
with ``SELECT 1`` in between; a failed or unanswered connection is dropped
and made again with growing pauses, and the subscriber is told to resync.
Pool connections are checked before use, so none killed meanwhile (a
restart, ``pg_terminate_backend``) is handed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from .._errors import MissingExtraError

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    from psycopg_pool import AsyncConnectionPool, PoolTimeout
except ModuleNotFoundError as exc:
    # Both come with the extra; name the one that is missing.
    missing = "psycopg_pool" if (exc.name or "").startswith("psycopg_pool") else "psycopg"
    raise MissingExtraError("postgres", missing) from exc

from .._errors import DuplicateOperation, StoreError, StoreNotOpen, StoreUnavailable
from ..core._model import Operation, decode_row, encode_row
from ._resubscribe import Resubscriber, deliver
from ._sql import UNFINISHED, Statements, operations_schema, update_params

logger = logging.getLogger("repoll")

_CHANNEL = "repoll_finished"
_CANCEL_CHANNEL = "repoll_cancel"
_SCHEMA = (
    *operations_schema(integer="BIGINT", real="DOUBLE PRECISION", blob="BYTEA"),
    """CREATE TABLE IF NOT EXISTS repoll_owners (
        owner TEXT PRIMARY KEY, alive_until DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS repoll_meta (name TEXT PRIMARY KEY, value BYTEA NOT NULL)""",
)
_SQL = Statements.marked("%s")
_UNAVAILABLE = (psycopg.OperationalError, PoolTimeout, OSError)
# Whatever ends the LISTEN connection (TimeoutError: it stopped answering).
_DROPS = (psycopg.Error, OSError)


def _sever(conn: psycopg.AsyncConnection[Any], severed: list[bool]) -> None:
    """Shut the connection's socket down under psycopg, which then fails at once.

    Cancelling a stalled query instead would make psycopg ask the server to
    cancel it and wait for that, over the very link that stopped answering.
    """
    severed.append(True)
    with contextlib.suppress(OSError, psycopg.Error):
        sock = socket.socket(fileno=conn.pgconn.socket)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.detach()  # the descriptor stays psycopg's to close


class PostgresStore:
    """Operations in PostgreSQL, shared by every instance that points at it."""

    shared = True
    # Heartbeats expire: a process stalled past owner_ttl looks dead for a while.
    exact_liveness = False

    def __init__(
        self, url: str, *, min_size: int = 1, max_size: int = 10, health_interval: float = 5.0
    ) -> None:
        """``health_interval``: seconds between checks of the LISTEN connection; one
        that leaves a check unanswered for as long is given up and made again."""
        self.url = url
        self._pool: AsyncConnectionPool | None = None
        self._sizes = (min_size, max_size)
        self._health_interval = health_interval
        self._listeners: list[asyncio.Task[None]] = []
        self._secret: bytes | None = None

    @property
    def _p(self) -> AsyncConnectionPool:
        if self._pool is None:
            msg = "PostgresStore used before open() or after close()"
            raise StoreNotOpen(msg)
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
            # A round trip per checkout, so that no connection killed while
            # idle (a restart, pg_terminate_backend) is handed out.
            check=AsyncConnectionPool.check_connection,
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
        listeners, self._listeners = self._listeners, []
        for task in listeners:
            task.cancel()
        # gather retrieves every outcome (no "exception never retrieved"),
        # and still lets a cancellation of close() itself through.
        await asyncio.gather(*listeners, return_exceptions=True)
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
                await conn.execute(_SQL.insert, row)
        except pg_errors.UniqueViolation as exc:
            if operation.idempotency_key is not None:
                owner = await self._fetchone(_SQL.id_by_key, (operation.idempotency_key,))
                if owner is not None:
                    raise DuplicateOperation(owner[0]) from exc
            msg = f"duplicate operation id {operation.id}"
            raise ValueError(msg) from exc
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc

    async def find_by_idempotency_key(self, key: str) -> Operation | None:
        row = await self._fetchone(_SQL.select_by_key, (key,))
        return None if row is None else decode_row(row)

    async def get(self, operation_id: str) -> Operation | None:
        row = await self._fetchone(_SQL.select_by_id, (operation_id,))
        return None if row is None else decode_row(row)

    async def compare_and_set(self, operation: Operation, *, expected_version: int) -> bool:
        try:
            async with self._p.connection() as conn, conn.transaction():
                cursor = await conn.execute(
                    "SELECT status FROM repoll_operations WHERE id = %s AND version = %s "
                    "FOR UPDATE",
                    (operation.id, expected_version),
                )
                previous = await cursor.fetchone()
                if previous is None:
                    return False
                # Locked at expected_version: the update's own check passes.
                await conn.execute(_SQL.update, update_params(operation, expected_version))
                if operation.status.is_terminal and previous[0] in UNFINISHED:
                    await conn.execute("SELECT pg_notify(%s, %s)", (_CHANNEL, operation.id))
                return True
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc

    async def unfinished(self) -> list[Operation]:
        try:
            async with self._p.connection() as conn:
                cursor = await conn.execute(_SQL.select_unfinished)
                rows = await cursor.fetchall()
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc
        return [decode_row(row) for row in rows]

    async def purge(self, *, now: float, tombstone: float) -> int:
        try:
            async with self._p.connection() as conn, conn.transaction():
                cursor = await conn.execute(_SQL.delete_expired, (now - tombstone,))
                deleted = cursor.rowcount
                await conn.execute(_SQL.drop_responses, (now,))
                return max(deleted, 0)
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc

    async def subscribe(self, on_event: Callable[[str, str], None]) -> None:
        try:
            conn = await self._listen()
        except _DROPS as exc:
            raise self._unavailable(exc) from exc
        task = asyncio.get_running_loop().create_task(
            self._keep(conn, on_event), name="repoll-postgres-listener"
        )
        self._listeners.append(task)

    async def _listen(self) -> psycopg.AsyncConnection[Any]:
        """A connection that LISTENs on both channels (in effect once LISTEN returns)."""
        params = conninfo_to_dict(self.url)
        # Its own name, so that it can be told apart in pg_stat_activity.
        name = f"{params.get('application_name') or 'repoll'}:listen"
        # libpq's default waits minutes for a host that does not answer.
        timeout = params.get("connect_timeout") or max(5, round(2 * self._health_interval))
        conninfo = make_conninfo(self.url, application_name=name, connect_timeout=timeout)
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        try:
            await conn.execute(f"LISTEN {_CHANNEL}")
            await conn.execute(f"LISTEN {_CANCEL_CHANNEL}")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _pump(
        self, conn: psycopg.AsyncConnection[Any], on_event: Callable[[str, str], None]
    ) -> None:
        """Deliver notifications until the connection fails or stops answering."""
        loop = asyncio.get_running_loop()
        while True:
            async with contextlib.aclosing(conn.notifies(timeout=self._health_interval)) as gen:
                async for notice in gen:
                    kind = "cancel" if notice.channel == _CANCEL_CHANNEL else "finished"
                    deliver(on_event, kind, notice.payload)
            # A half-open connection (peer gone without a reset) just stays
            # quiet; only a query left unanswered gives it away.
            severed: list[bool] = []
            timer = loop.call_later(self._health_interval, _sever, conn, severed)
            try:
                await conn.execute("SELECT 1")
            except psycopg.OperationalError as exc:
                if severed:
                    msg = f"no answer to SELECT 1 in {self._health_interval:.1f} s"
                    raise TimeoutError(msg) from exc
                raise
            finally:
                timer.cancel()

    async def _keep(
        self, conn: psycopg.AsyncConnection[Any], on_event: Callable[[str, str], None]
    ) -> None:
        """Keep listening until close(), whatever happens to the server."""

        async def close(connection: psycopg.AsyncConnection[Any]) -> None:
            await connection.close()

        keeper: Resubscriber[psycopg.AsyncConnection[Any]] = Resubscriber(
            where="PostgreSQL store (LISTEN connection)",
            listen=self._listen,
            pump=lambda connection: self._pump(connection, on_event),
            close=close,
            drops=_DROPS,
            on_event=on_event,
        )
        await keeper.run(conn)

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

    async def secret(self) -> bytes:
        if self._secret is None:
            try:
                async with self._p.connection() as conn:
                    # Whoever inserts first wins; everyone reads the winner.
                    await conn.execute(
                        "INSERT INTO repoll_meta (name, value) VALUES ('secret', %s) "
                        "ON CONFLICT (name) DO NOTHING",
                        (secrets.token_bytes(32),),
                    )
                    cursor = await conn.execute(
                        "SELECT value FROM repoll_meta WHERE name = 'secret'"
                    )
                    row = await cursor.fetchone()
            except _UNAVAILABLE as exc:
                raise self._unavailable(exc) from exc
            if row is None or len(row[0]) != 32:
                msg = "repoll_meta holds no 32-byte secret; delete its row to make one"
                raise StoreError(msg)
            self._secret = bytes(row[0])
        return self._secret
