"""Where operations live: the store interfaces, the in-memory store, and store URLs.

A store needs only a few primitives; everything else (state transitions,
progress, cancellation flags) is a read-modify-write loop on top of
:meth:`Store.compare_and_set`, written once in :func:`update_operation`.
That keeps every backend small and makes the races the same everywhere: a
writer whose version is stale loses and retries from a fresh read.

Two interfaces, because some stores serve one process and others several.
:class:`Store` is what every store does. :class:`SharedStore` adds what a
store used by several processes at once needs: events between them
(:meth:`~SharedStore.subscribe`, :meth:`~SharedStore.announce_cancel`) and
who is alive (:meth:`~SharedStore.heartbeat`, :meth:`~SharedStore.live_owners`).
A store that serves one process (:class:`MemoryStore`) implements only
:class:`Store` and stubs nothing.

The protocol says what a class *can* do; its ``shared`` attribute says what
one instance *does*. They differ for SQLite: a file is shared by the
processes of a host, ``":memory:"`` is private to one, and both are the same
class. So the server asks :func:`shared_store`, which answers with the store
only when its class implements :class:`SharedStore` and the instance says
``shared``; otherwise the server treats it as its only user (on start, every
unfinished operation was left by its previous life and is lost).
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Callable
from typing import Protocol, cast, runtime_checkable

from .._errors import DuplicateOperation, StoreUnavailable, StoreURLError
from ..core._model import Operation


@runtime_checkable
class Store(Protocol):
    """Persistence of operation records. Every backend passes tests/test_store_contract.py.

    A method that needs the backend raises :class:`~repoll.stores.StoreNotOpen`
    before :meth:`open` (or after :meth:`close`), and
    :class:`~repoll.StoreUnavailable` when the backend is down or busy (the
    server answers 503 and keeps retrying what it must write).

    A store that only implements this protocol belongs to one process: on
    start, that process declares every unfinished operation lost. A store
    several server instances may use at once is a :class:`SharedStore`.
    """

    async def open(self) -> None:
        """Prepare the backend (create tables, connect). Called once before use."""

    async def close(self) -> None:
        """Release connections. The store may be opened again."""

    async def create(self, operation: Operation) -> None:
        """Insert a new record (its id is fresh; version 0).

        Raises :class:`~repoll.stores.DuplicateOperation` when another stored
        record has the same ``idempotency_key`` (atomically: of two racing
        creates with one key, exactly one succeeds), and ``ValueError`` when
        one has the same id (a caller's mistake: ids are fresh by construction).
        """

    async def find_by_idempotency_key(self, key: str) -> Operation | None:
        """The stored record with this ``idempotency_key``, if any."""

    async def get(self, operation_id: str) -> Operation | None:
        """The record, or None if unknown (or purged)."""

    async def compare_and_set(self, operation: Operation, *, expected_version: int) -> bool:
        """Replace the record if its stored version is ``expected_version``.

        ``operation.version`` must be ``expected_version + 1``. Returns False
        (and changes nothing) when another writer got there first.
        """

    async def unfinished(self) -> list[Operation]:
        """Every record whose status is not terminal."""

    async def purge(self, *, now: float, tombstone: float) -> int:
        """Drop responses of expired records, and records expired over ``tombstone`` ago.

        Returns how many records were deleted.
        """

    async def secret(self) -> bytes:
        """32 random bytes made once per store, the same for every instance using it.

        Keys the digests of principals when the server is given no key of its own.
        """


@runtime_checkable
class SharedStore(Store, Protocol):
    """A store several server instances (and Celery workers) may use at once.

    Instead of declaring everything unfinished lost on start, the server
    relies on owner heartbeats (:meth:`heartbeat`, :meth:`live_owners`), and
    wakes held polls and stops canceled work on every instance through
    :meth:`subscribe`.

    ``shared`` says whether this instance really is shared: a class may serve
    both kinds (SQLite: a file is, ``":memory:"`` is not). When it is False,
    the server uses the store as a plain :class:`Store` and never calls the
    methods below. ``exact_liveness`` is True when :meth:`live_owners` can
    never call a live process dead (SQLite's lock files); otherwise the
    server waits out ``owner_ttl`` of its own heartbeats before believing it.
    """

    shared: bool
    exact_liveness: bool

    async def subscribe(self, on_event: Callable[[str, str], None]) -> None:
        """Call ``on_event(kind, id)`` for what other instances need to know.

        ``kind`` is ``"finished"`` when any instance ends an operation (sent by
        :meth:`compare_and_set` itself) and ``"cancel"`` after
        :meth:`announce_cancel`.

        The subscription lasts until :meth:`close`, whatever happens to the
        backend meanwhile: a store whose connection drops (a restart, a killed
        connection) reconnects by itself, with growing pauses, and then calls
        ``on_event("resync", "")`` because events sent in between are lost; the
        subscriber re-reads whatever it was waiting for. ``on_event`` runs on
        the event loop that called :meth:`subscribe` and must not block.
        """

    async def announce_cancel(self, operation_id: str) -> None:
        """Tell every subscribed instance that ``operation_id`` should stop."""

    async def heartbeat(self, owner: str, *, ttl: float) -> None:
        """Record that ``owner`` is alive for the next ``ttl`` seconds."""

    async def live_owners(self) -> set[str]:
        """The owners whose last heartbeat has not expired."""


def create_soon(store: Store, operation: Operation) -> asyncio.Future[None] | None:
    """Queue the creation of ``operation`` if ``store`` can, and return at once.

    A store may offer ``create_soon(operation)``: the record is written with
    the store's next batch, and a compare-and-set issued before then is
    written with it (SQLite, whose writes are batched per turn of the event
    loop). The future is done when the record is stored, or fails as
    ``create`` would. None from a store without it: await ``create``.
    """
    queue = getattr(store, "create_soon", None)
    if queue is None:
        return None
    return cast("asyncio.Future[None] | None", queue(operation))


# Whether a class implements SharedStore. Asked on every cancellation and
# heartbeat: a runtime protocol check reads every member each time (microseconds).
_SHARED_BY_CLASS: dict[type, bool] = {}
_SHARED_ONLY = ("exact_liveness", "subscribe", "announce_cancel", "heartbeat", "live_owners")


def shared_store(store: Store) -> SharedStore | None:
    """``store`` as a :class:`SharedStore` if this instance is shared, else None.

    Raises ``TypeError`` for a store that says ``shared = True`` but lacks
    part of :class:`SharedStore`: treated as one process's own store, it
    would have every other instance's work declared lost.
    """
    kind = type(store)
    capable = _SHARED_BY_CLASS.get(kind)
    if capable is None:
        capable = isinstance(store, SharedStore)
        if not capable and getattr(store, "shared", False):
            missing = ", ".join(name for name in _SHARED_ONLY if not hasattr(store, name))
            msg = f"{kind.__name__} says shared = True but lacks {missing} of SharedStore"
            raise TypeError(msg)
        _SHARED_BY_CLASS[kind] = capable
    if capable and cast("SharedStore", store).shared:
        return cast("SharedStore", store)
    return None


# A store reports conflicts by returning False; a writer retries this often
# before giving up. Conflicts need a concurrent writer on the same record, so
# more than a handful in a row means something is wrong.
_MAX_CAS_ATTEMPTS = 64


async def update_operation(
    store: Store,
    operation_id: str,
    change: Callable[[Operation], Operation | None],
    *,
    known: Operation | None = None,
) -> Operation | None:
    """Apply ``change`` atomically; returns the stored result.

    ``change`` gets the current record and returns the new one, or None to
    leave it alone (in which case the current record is returned). Returns
    None if the operation does not exist. ``known`` is the caller's latest
    copy: the first attempt uses it and saves a read; a stale copy only costs
    a retry. Raises :class:`~repoll.StoreUnavailable` when other writers keep
    winning: the record is too busy to change now.
    """
    current = known
    for _ in range(_MAX_CAS_ATTEMPTS):
        if current is None:
            current = await store.get(operation_id)
            if current is None:
                return None
        updated = change(current)
        if updated is None:
            return current
        updated = updated.evolve(version=current.version + 1)
        if await store.compare_and_set(updated, expected_version=current.version):
            return updated
        current = None
    msg = (
        f"operation {operation_id}: {_MAX_CAS_ATTEMPTS} updates in a row lost to "
        "concurrent writers; the store is too busy"
    )
    raise StoreUnavailable(msg)


class MemoryStore:
    """Keeps operations in this process's memory: fast, and gone on restart.

    A plain :class:`Store`: no other process can see it.
    """

    def __init__(self) -> None:
        self._records: dict[str, Operation] = {}
        self._by_key: dict[str, str] = {}
        self._secret = secrets.token_bytes(32)

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def create(self, operation: Operation) -> None:
        if operation.id in self._records:
            msg = f"duplicate operation id {operation.id}"
            raise ValueError(msg)
        key = operation.idempotency_key
        if key is not None:
            if key in self._by_key:
                raise DuplicateOperation(self._by_key[key])
            self._by_key[key] = operation.id
        self._records[operation.id] = operation

    async def find_by_idempotency_key(self, key: str) -> Operation | None:
        op_id = self._by_key.get(key)
        return None if op_id is None else self._records.get(op_id)

    async def get(self, operation_id: str) -> Operation | None:
        return self._records.get(operation_id)

    async def compare_and_set(self, operation: Operation, *, expected_version: int) -> bool:
        current = self._records.get(operation.id)
        if current is None or current.version != expected_version:
            return False
        self._records[operation.id] = operation
        return True

    async def unfinished(self) -> list[Operation]:
        return [op for op in self._records.values() if not op.status.is_terminal]

    async def purge(self, *, now: float, tombstone: float) -> int:
        deleted = 0
        for op_id, op in list(self._records.items()):
            if op.expires_at is None or op.expires_at > now:
                continue
            if op.expires_at + tombstone <= now:
                del self._records[op_id]
                if op.idempotency_key is not None:
                    self._by_key.pop(op.idempotency_key, None)
                deleted += 1
            elif op.response is not None:
                self._records[op_id] = dataclasses.replace(op, response=None)
        return deleted

    async def secret(self) -> bytes:
        return self._secret

    def __len__(self) -> int:
        return len(self._records)


def shared_store_from_url(url: str) -> SharedStore:
    """The shared store a URL names, for a process that joins a server's store.

    Raises :class:`~repoll.StoreURLError` when the URL names a store that only
    one process can use (``memory://``, SQLite in memory).
    """
    shared = shared_store(store_from_url(url))
    if shared is None:
        msg = f"a {url.partition(':')[0]}: store belongs to one process; no other can join it"
        raise StoreURLError(msg)
    return shared


def store_from_url(url: str) -> Store:
    """The store a URL names (docs/deployment.md lists them).

    ``memory://``, ``sqlite:///PATH`` (``sqlite://`` alone: in memory),
    ``redis://...`` and ``postgresql://...``; anything else raises
    :class:`~repoll.StoreURLError`.
    """
    if url in {"memory", "memory://"}:
        return MemoryStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from ._redis import RedisStore  # noqa: PLC0415 - loaded only when chosen

        # ?prefix=NAME: (not a redis-py option) namespaces the keys.
        base, _, query = url.partition("?")
        params = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
        prefix = params.pop("prefix", "repoll:")
        rest = "&".join(f"{k}={v}" for k, v in params.items())
        return RedisStore(f"{base}?{rest}" if rest else base, prefix=prefix)
    if url.startswith(("postgresql://", "postgres://")):
        from ._postgres import PostgresStore  # noqa: PLC0415 - loaded only when chosen

        return PostgresStore(url)
    if url.startswith("sqlite://"):
        from ._sqlite import SQLiteStore  # noqa: PLC0415 - loaded only when chosen

        path = url.removeprefix("sqlite://").removeprefix("/") or ":memory:"
        return SQLiteStore(path)
    # Only the scheme goes into the message: the rest may hold a password.
    scheme, colon, _ = url.partition(":")
    named = f"scheme {scheme!r}" if colon else f"{url[:40]!r} (no scheme)"
    msg = (
        f"unsupported store URL {named}: use memory://, sqlite:///PATH, "
        "redis://HOST[:PORT][/DB] or postgresql://USER@HOST[:PORT]/DB"
    )
    raise StoreURLError(msg)
