"""The embedded default store: one SQLite file, shared by the processes of one host.

sqlite3 calls block, so they run on one dedicated thread that owns the
connection; the event loop only awaits them. One thread also serialises
writes, which is what SQLite does anyway. WAL mode lets readers in other
processes proceed during writes.

Processes sharing a file (``uvicorn --workers``, gunicorn) know who is alive
by lock files (see :mod:`._owner_locks`), and learn what the others did from
``repoll_events``: the transaction that ends an operation appends a row, and
a watcher thread polls ``PRAGMA data_version`` (a few system calls, changed
only by other connections' commits) and reads the new rows when it moves.
``":memory:"`` is a private database: one process, no events, no owners.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .._errors import DuplicateOperation, StoreNotOpen, StoreUnavailable
from ..core._model import Operation, decode_row, encode_row
from ._owner_locks import OwnerLocks
from ._sql import Statements, operations_schema, update_params
from ._sqlite_watch import Watcher
from ._sqlite_writer import LoopWriter, ThreadWriter

T = TypeVar("T")
logger = logging.getLogger("repoll")

# One script: ThreadWriter runs it in one transaction.
_SCHEMA = "".join(
    f"{statement};\n"
    for statement in (
        *operations_schema(integer="INTEGER", real="REAL", blob="BLOB"),
        """CREATE TABLE IF NOT EXISTS repoll_events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            origin TEXT NOT NULL,
            kind TEXT NOT NULL,
            operation_id TEXT NOT NULL
        )""",
        "CREATE TABLE IF NOT EXISTS repoll_meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
    )
)
_SQL = Statements.marked("?")

# Events are for instances that are up now; a watcher that falls further
# behind than this resyncs anyway. Sweeping rides on a write transaction.
_EVENT_RETENTION = 60.0
_EVENT_SWEEP_EVERY = 30.0
# Per cached record, beyond its response body: the record's own fields.
_ENTRY_OVERHEAD = 512


class SQLiteStore:
    """Operations in a SQLite file (``":memory:"`` for a private in-memory database).

    A :class:`~repoll.stores.SharedStore` whose instances say whether they
    are shared: a file may be used by several processes on one host
    (``shared`` is then True), ``":memory:"`` only by this one (False, and the
    server never calls the shared store's methods, which then do nothing).

    ``cache_bytes`` and ``cache_size`` bound the in-memory cache of ended
    operations; ``watch_interval`` is how often a subscribed store looks for
    other processes' events.
    """

    shared: bool
    exact_liveness: bool

    def __init__(
        self,
        path: str | Path,
        *,
        timeout: float = 5.0,
        cache_size: int = 4096,
        cache_bytes: int = 16 * 1024 * 1024,
        watch_interval: float = 0.05,
    ) -> None:
        self.path = str(path)
        self.shared = self.path not in {"", ":memory:"}
        # Liveness is a lock the kernel drops when a process dies: never stale.
        self.exact_liveness = self.shared
        self._timeout = timeout
        # Terminal records never change again (only expiry drops them), so the
        # most recently read are served from memory: replays cost no thread hop.
        # Bounded by bytes too: a few large responses must not hold the RSS.
        self._terminal: OrderedDict[str, tuple[Operation, int]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_bytes = cache_bytes
        self._cached_bytes = 0
        self._worker: ThreadWriter | None = None
        self._loop_writer: LoopWriter | None = None
        self._origin = secrets.token_hex(8)
        self._watch_interval = watch_interval
        self._watcher: Watcher | None = None
        self._owners = OwnerLocks(Path(f"{self.path}-owners")) if self.shared else None
        self._secret: bytes | None = None
        self._next_sweep = 0.0  # read and written by whichever writer runs a publish
        # Inserts queued by create_soon() and not yet run, by operation id.
        # The lock orders a compare-and-set that joins one (on the loop)
        # against the insert starting, which may run on the thread.
        self._creating: dict[str, _PendingCreate] = {}
        self._creating_lock = threading.Lock()

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"SQLite store {self.path}: {exc}")

    def _opened(self) -> ThreadWriter:
        if self._worker is None:
            msg = f"SQLiteStore {self.path} used before open() or after close()"
            raise StoreNotOpen(msg)
        return self._worker

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, small_write: bool = False) -> T:
        """Run ``fn`` with a connection: a small write on the event loop when it can."""
        worker = self._opened()
        try:
            if small_write and self._loop_writer is not None:
                return await self._loop_writer.submit(fn)
            return await worker.submit(fn)
        except sqlite3.OperationalError as exc:  # locked, busy, disk I/O, cannot open
            raise self._unavailable(exc) from exc

    async def open(self) -> None:
        if self._worker is not None:
            return
        if self.shared:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Connecting and creating the schema block: off the event loop.
        try:
            self._worker = await asyncio.to_thread(ThreadWriter, self.path, self._timeout, _SCHEMA)
        except sqlite3.OperationalError as exc:
            raise self._unavailable(exc) from exc
        if self.shared:  # a second connection to ":memory:" would be another database
            self._loop_writer = LoopWriter(self.path, self._worker, timeout=self._timeout)

    async def close(self) -> None:
        if self._watcher is not None:
            watcher, self._watcher = self._watcher, None
            watcher.stop()
        if self._owners is not None:
            await asyncio.to_thread(self._owners.close)
        if self._loop_writer is not None:
            self._loop_writer.close()  # what it still holds goes to the thread, first
            self._loop_writer = None
        if self._worker is None:
            return
        worker, self._worker = self._worker, None
        await asyncio.to_thread(worker.stop)
        self._terminal.clear()
        self._cached_bytes = 0

    async def create(self, operation: Operation) -> None:
        row = encode_row(operation)

        def insert(c: sqlite3.Connection) -> None:
            try:
                c.execute(_SQL.insert, row)
            except sqlite3.IntegrityError as exc:
                key = operation.idempotency_key
                if key is not None:
                    taken = c.execute(_SQL.id_by_key, (key,)).fetchone()
                    if taken is not None:
                        raise DuplicateOperation(taken[0]) from exc
                msg = f"duplicate operation id {operation.id}"
                raise ValueError(msg) from exc

        await self._run(insert, small_write=True)

    def create_soon(self, operation: Operation) -> asyncio.Future[None] | None:
        """Queue the insert of ``operation`` with this turn's writes and return at once.

        The future is done when the record is stored, or fails with the
        driver's error. Until the insert runs, a compare-and-set on the
        operation joins it and returns True at once: work that ends in the
        same turn of the loop is stored with one write, its outcome, whose
        fate is the future's. The caller must await the future before it
        gives out the operation's URL. None where the insert cannot be queued
        on this event loop; the caller then awaits :meth:`create`.
        """
        writer = self._loop_writer
        if writer is None or not writer.on_loop():
            return None
        pending = _PendingCreate(operation)
        self._creating[operation.id] = pending
        creating, lock = self._creating, self._creating_lock

        def insert(c: sqlite3.Connection) -> None:
            with lock:  # from here on, the record to insert is fixed
                pending.taken = True
                row = encode_row(pending.operation)
            try:
                c.execute(_SQL.insert, row)
            except sqlite3.IntegrityError as exc:  # 128 random bits twice
                msg = f"duplicate operation id {operation.id}"
                raise ValueError(msg) from exc

        stored = writer.submit(insert)

        def done(written: asyncio.Future[None]) -> None:
            # Written or failed: nothing to join any more. A failure is its
            # creator's to report; if the creator is gone (its client left),
            # it was nobody's.
            creating.pop(operation.id, None)
            if not written.cancelled():
                written.exception()

        stored.add_done_callback(done)
        pending.stored = stored
        return stored

    def _remember(self, operation: Operation) -> None:
        # An expired record is purged soon, here or elsewhere: the file has the truth.
        expired = operation.expires_at is not None and operation.expires_at <= time.time()
        if not operation.status.is_terminal or self._cache_size <= 0 or expired:
            return
        self._forget(operation.id)
        response = operation.response
        size = 0 if response is None else len(response.body)
        if size > self._cache_bytes // 4:
            return  # would evict a crowd of small records to hold one large
        if response is not None:
            size += sum(len(name) + len(value) for name, value in response.headers)
        cost = size + _ENTRY_OVERHEAD
        self._terminal[operation.id] = (operation, cost)
        self._cached_bytes += cost
        while self._terminal and (
            len(self._terminal) > self._cache_size or self._cached_bytes > self._cache_bytes
        ):
            _, (_, evicted) = self._terminal.popitem(last=False)
            self._cached_bytes -= evicted

    def _forget(self, operation_id: str) -> None:
        entry = self._terminal.pop(operation_id, None)
        if entry is not None:
            self._cached_bytes -= entry[1]

    async def get(self, operation_id: str) -> Operation | None:
        entry = self._terminal.get(operation_id)
        if entry is not None:
            cached = entry[0]
            # Past expiry another process may have purged it: ask the file.
            if cached.expires_at is None or cached.expires_at > time.time():
                self._terminal.move_to_end(operation_id)
                return cached
            self._forget(operation_id)

        def select(c: sqlite3.Connection) -> tuple[Any, ...] | None:
            row: tuple[Any, ...] | None = c.execute(_SQL.select_by_id, (operation_id,)).fetchone()
            return row

        row = await self._run(select)
        if row is None:
            return None
        operation = decode_row(row)
        self._remember(operation)
        return operation

    def _publish(self, c: sqlite3.Connection, kind: str, operation_id: str) -> None:
        """Append an event in the caller's transaction (on the worker thread)."""
        now = time.time()
        c.execute(
            "INSERT INTO repoll_events (at, origin, kind, operation_id) VALUES (?, ?, ?, ?)",
            (now, self._origin, kind, operation_id),
        )
        if now >= self._next_sweep:
            self._next_sweep = now + _EVENT_SWEEP_EVERY
            c.execute("DELETE FROM repoll_events WHERE at < ?", (now - _EVENT_RETENTION,))

    async def subscribe(self, on_event: Callable[[str, str], None]) -> None:
        if not self.shared:
            return  # one process: the server notifies itself
        self._opened()
        subscriber = (on_event, asyncio.get_running_loop())
        if self._watcher is not None:
            self._watcher.add(subscriber)
            return
        watcher = Watcher(self.path, self._timeout, self._origin, self._watch_interval)
        watcher.add(subscriber)
        try:
            await asyncio.to_thread(watcher.start)
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc
        watcher.run_on(asyncio.get_running_loop())
        self._watcher = watcher

    async def announce_cancel(self, operation_id: str) -> None:
        if self.shared:
            await self._run(lambda c: self._publish(c, "cancel", operation_id), small_write=True)

    async def heartbeat(self, owner: str, *, ttl: float) -> None:
        if self._owners is None:
            return  # one process per private database: its owner is the living one
        # The lock lives as long as the process; ttl only matters as a farewell.
        change = self._owners.hold if ttl > 0 else self._owners.release
        try:
            await asyncio.to_thread(change, owner)
        except OSError as exc:
            raise self._unavailable(exc) from exc

    async def live_owners(self) -> set[str]:
        if self._owners is None:
            return set()
        try:
            return await asyncio.to_thread(self._owners.live)
        except OSError as exc:
            raise self._unavailable(exc) from exc

    async def secret(self) -> bytes:
        if self._secret is None:
            candidate = secrets.token_bytes(32)

            def read(c: sqlite3.Connection) -> bytes:
                # The first process to commit wins; everyone reads its value.
                c.execute(
                    "INSERT OR IGNORE INTO repoll_meta (name, value) VALUES ('secret', ?)",
                    (candidate,),
                )
                row = c.execute("SELECT value FROM repoll_meta WHERE name = 'secret'").fetchone()
                return bytes(row[0])

            self._secret = await self._run(read)
        return self._secret

    async def find_by_idempotency_key(self, key: str) -> Operation | None:
        def select(c: sqlite3.Connection) -> tuple[Any, ...] | None:
            row: tuple[Any, ...] | None = c.execute(_SQL.select_by_key, (key,)).fetchone()
            return row

        row = await self._run(select)
        return None if row is None else decode_row(row)

    async def compare_and_set(self, operation: Operation, *, expected_version: int) -> bool:
        pending = self._creating.get(operation.id)
        if pending is not None and await self._join_create(pending, operation, expected_version):
            return True
        params = update_params(operation, expected_version)
        watched = self.shared and operation.status.is_terminal

        def update(c: sqlite3.Connection) -> bool:
            if c.execute(_SQL.update, params).rowcount != 1:
                return False
            if watched:
                # In the same transaction as the update. The record it replaced
                # was unfinished: no writer moves a terminal record to another
                # (and if one did, the event would only cost a re-read).
                self._publish(c, "finished", operation.id)
            return True

        # Not cached here, only when read (get): most outcomes are never read
        # back (a held poll is handed the record, a joined start's client has
        # its response), and a cache churning at the rate of starts held
        # thousands of records for the collector to walk: 6 to 9 % of the
        # starts per second (docs/performance.md).
        return bool(await self._run(update, small_write=True))

    async def _join_create(
        self, pending: _PendingCreate, operation: Operation, expected_version: int
    ) -> bool:
        """Store ``operation`` with its own queued insert, if that has not run yet.

        True when joined so, at once: the insert's future (``create_soon``)
        says whether it was stored, and whoever created the operation awaits
        it before giving out its URL. False when the update must be an
        update: the insert has started (it is awaited first, so the update
        follows it) or holds another version. No event is published for a
        joined write: before its insert commits nobody anywhere knows the id.
        """
        with self._creating_lock:
            if not pending.taken and pending.operation.version == expected_version:
                pending.operation = operation
                return True
        if pending.stored is not None:
            # If it failed, the update finds no record; its creator says why.
            with contextlib.suppress(sqlite3.Error, ValueError):
                await asyncio.shield(pending.stored)
        return False

    async def unfinished(self) -> list[Operation]:
        def select(c: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return c.execute(_SQL.select_unfinished).fetchall()

        return [decode_row(row) for row in await self._run(select)]

    async def purge(self, *, now: float, tombstone: float) -> int:
        for op_id, (op, _) in list(self._terminal.items()):
            if op.expires_at is not None and op.expires_at <= now:
                self._forget(op_id)

        def purge(c: sqlite3.Connection) -> int:
            deleted = c.execute(_SQL.delete_expired, (now - tombstone,)).rowcount
            c.execute(_SQL.drop_responses, (now,))
            c.execute("DELETE FROM repoll_events WHERE at < ?", (time.time() - _EVENT_RETENTION,))
            return deleted

        return await self._run(purge)


class _PendingCreate:
    """An insert queued by :meth:`SQLiteStore.create_soon`: what it will write, once it runs."""

    __slots__ = ("operation", "stored", "taken")

    def __init__(self, operation: Operation) -> None:
        self.operation = operation
        self.taken = False  # the insert has read ``operation``: too late to change it
        self.stored: asyncio.Future[None] | None = None
