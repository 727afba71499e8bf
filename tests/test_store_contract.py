"""The contract every store passes. Later backends join the ``store`` fixture's params."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from repoll import (
    MemoryStore,
    OperationStatus,
    SQLiteStore,
    StoreError,
    StoreUnavailable,
    StoreURLError,
)
from repoll.core._headers import new_operation_id
from repoll.core._status import Event
from repoll.stores import (
    DuplicateOperation,
    Operation,
    SharedStore,
    Store,
    StoredResponse,
    StoreNotOpen,
)
from repoll.stores._store import (
    shared_store,
    shared_store_from_url,
    store_from_url,
    update_operation,
)

pytestmark = pytest.mark.anyio
NOW = 1_800_000_000.0


def _backend(kind: str, request, tmp_path) -> Store:
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "s.db")
    if kind == "redis":
        from repoll.stores._redis import RedisStore

        url = request.getfixturevalue("redis_url")
        return RedisStore(url, prefix=request.getfixturevalue("redis_prefix"))
    from repoll.stores._postgres import PostgresStore

    return PostgresStore(request.getfixturevalue("postgres_url"))


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
async def store(request, tmp_path):
    backend = _backend(request.param, request, tmp_path)
    await backend.open()
    yield backend
    await backend.close()


@pytest.fixture
async def twin(store, request, tmp_path):
    """Another instance on the same backend, as a second server process would have."""
    if shared_store(store) is None:
        yield None
        return
    other = _backend(request.node.callspec.params["store"], request, tmp_path)
    await other.open()
    yield other
    await other.close()


def new_operation(**changes) -> Operation:
    base = {
        "id": new_operation_id(),
        "principal": "p",
        "endpoint": "POST /x",
        "status": OperationStatus.QUEUED,
        "created_at": NOW,
        "updated_at": NOW,
    }
    return Operation(**{**base, **changes})


async def test_implements_the_protocol(store):
    assert isinstance(store, Store)
    # Memory belongs to one process; the others may be shared by several.
    assert (shared_store(store) is None) == isinstance(store, MemoryStore)
    assert (shared_store(store) is None) == (not isinstance(store, SharedStore))


async def test_sqlite_in_memory_is_a_shared_store_class_but_not_shared(tmp_path):
    private = SQLiteStore(":memory:")
    assert isinstance(private, SharedStore)  # what the class can do ...
    assert shared_store(private) is None  # ... and what this instance does
    assert shared_store(SQLiteStore(tmp_path / "x.db")) is not None


def test_a_store_that_says_shared_but_cannot_be_is_refused():
    class HalfShared(MemoryStore):
        shared = True  # but no subscribe, announce_cancel, heartbeat, live_owners

    with pytest.raises(TypeError, match="lacks exact_liveness, subscribe"):
        shared_store(HalfShared())


def test_only_a_shared_store_url_can_be_joined(tmp_path):
    assert isinstance(shared_store_from_url(f"sqlite:///{tmp_path}/x.db"), SQLiteStore)
    for private in ("memory://", "sqlite://"):
        with pytest.raises(StoreURLError, match="belongs to one process"):
            shared_store_from_url(private)


async def test_create_then_get_round_trips(store):
    op = new_operation(progress=0.25, message="quarter", cancel_requested=True)
    await store.create(op)
    assert await store.get(op.id) == op
    assert await store.get(new_operation_id()) is None


async def test_create_rejects_a_duplicate_id(store):
    op = new_operation()
    await store.create(op)
    with pytest.raises(ValueError, match="duplicate"):
        await store.create(op)


async def test_response_bytes_survive_exactly(store):
    body = bytes(range(256)) * 10
    headers = (("content-type", "application/octet-stream"), ("x-ümlaut", "é"))
    op = new_operation()
    await store.create(op)
    done = dataclasses.replace(
        op.apply(
            Event.FINISH_OK, now=NOW, retention=60, response=StoredResponse(200, headers, body)
        ),
        version=1,
    )
    assert await store.compare_and_set(done, expected_version=0)
    assert (await store.get(op.id)).response == StoredResponse(200, headers, body)


async def test_compare_and_set_rejects_a_stale_version(store):
    op = new_operation()
    await store.create(op)
    first = dataclasses.replace(op, message="first", version=1)
    assert await store.compare_and_set(first, expected_version=0)
    stale = dataclasses.replace(op, message="stale", version=1)
    assert not await store.compare_and_set(stale, expected_version=0)
    assert (await store.get(op.id)).message == "first"


async def test_compare_and_set_on_unknown_id_fails(store):
    assert not await store.compare_and_set(new_operation(version=1), expected_version=0)


async def test_concurrent_updates_lose_nothing(store):
    op = new_operation(progress=0.0)
    await store.create(op)

    def bump(current: Operation) -> Operation:
        return dataclasses.replace(current, progress=(current.progress or 0) + 0.01)

    await asyncio.gather(*(update_operation(store, op.id, bump) for _ in range(50)))
    final = await store.get(op.id)
    assert final.progress == pytest.approx(0.5)
    assert final.version == 50


async def test_exactly_one_terminal_transition_wins(store):
    op = new_operation(status=OperationStatus.RUNNING)
    await store.create(op)
    outcomes = []

    def finisher(event: Event):
        def change(current: Operation) -> Operation | None:
            if current.status.is_terminal:
                return None
            outcomes.append(event)
            return current.apply(
                event, now=NOW, retention=60, response=StoredResponse(200, (), b"")
            )

        return change

    results = await asyncio.gather(
        update_operation(store, op.id, finisher(Event.FINISH_OK)),
        update_operation(store, op.id, finisher(Event.CANCEL)),
    )
    final = await store.get(op.id)
    assert final.status in {OperationStatus.SUCCEEDED, OperationStatus.CANCELED}
    assert all(r.status == final.status for r in results)


async def test_unfinished_lists_only_queued_and_running(store):
    queued = new_operation()
    running = new_operation(status=OperationStatus.RUNNING)
    done = new_operation(status=OperationStatus.SUCCEEDED, expires_at=NOW + 60)
    for op in (queued, running, done):
        await store.create(op)
    assert {op.id for op in await store.unfinished()} == {queued.id, running.id}


async def test_purge_drops_responses_then_records(store):
    response = StoredResponse(200, (), b"result")
    fresh = new_operation(status=OperationStatus.SUCCEEDED, expires_at=NOW + 10, response=response)
    expired = new_operation(
        status=OperationStatus.SUCCEEDED, expires_at=NOW - 10, response=response
    )
    gone = new_operation(status=OperationStatus.SUCCEEDED, expires_at=NOW - 1000, response=response)
    running = new_operation(status=OperationStatus.RUNNING)
    for op in (fresh, expired, gone, running):
        await store.create(op)
    assert await store.purge(now=NOW, tombstone=100) == 1
    assert (await store.get(fresh.id)).response == response
    tombstone = await store.get(expired.id)
    assert tombstone is not None
    assert tombstone.response is None
    assert await store.get(gone.id) is None
    assert await store.get(running.id) is not None


async def test_sqlite_is_durable_across_reopen(tmp_path):
    path = tmp_path / "durable.db"
    first = SQLiteStore(path)
    await first.open()
    op = new_operation(message="kept")
    await first.create(op)
    await first.close()
    second = SQLiteStore(path)
    await second.open()
    assert await second.get(op.id) == op
    await second.close()


def test_store_urls(tmp_path):
    assert isinstance(store_from_url("memory://"), MemoryStore)
    sqlite = store_from_url(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(sqlite, SQLiteStore)
    assert sqlite.path == f"{tmp_path}/x.db"
    assert store_from_url("sqlite:///rel.db").path == "rel.db"
    assert type(store_from_url("redis://127.0.0.1:6379/0")).__name__ == "RedisStore"
    assert type(store_from_url("postgresql://u@h/db")).__name__ == "PostgresStore"
    with pytest.raises(StoreURLError, match="unsupported store URL scheme 'mongodb'"):
        store_from_url("mongodb://x")
    with pytest.raises(ValueError, match="no scheme"):  # StoreURLError is a ValueError too
        store_from_url("repoll.sqlite3")


def test_a_bad_store_url_names_the_good_ones_but_no_password():
    with pytest.raises(StoreURLError) as caught:
        store_from_url("mysql://admin:hunter2@db.internal/ops")
    message = str(caught.value)
    assert "hunter2" not in message
    for good in ("memory://", "sqlite:///PATH", "redis://", "postgresql://"):
        assert good in message


@pytest.mark.parametrize("kind", ["sqlite", "redis", "postgres"])
async def test_a_store_used_before_open_or_after_close_says_so(kind, request, tmp_path):
    store = _backend(kind, request, tmp_path)
    with pytest.raises(StoreNotOpen, match="before open"):
        await store.get(new_operation_id())
    await store.open()
    await store.close()
    with pytest.raises(StoreNotOpen, match="after close"):
        await store.create(new_operation())
    with pytest.raises(RuntimeError):  # StoreNotOpen is a RuntimeError too
        await store.get(new_operation_id())


async def test_an_update_that_keeps_losing_races_reports_a_busy_store():
    class Contended(MemoryStore):
        async def compare_and_set(self, operation, *, expected_version):
            return False  # another writer always got there first

    store = Contended()
    op = new_operation()
    await store.create(op)
    with pytest.raises(StoreUnavailable, match="too busy"):
        await update_operation(store, op.id, lambda current: current.evolve(message="x"))


async def test_idempotency_keys_are_unique_and_found(store):
    first = new_operation(idempotency_key="key-digest", request_digest="r1")
    await store.create(first)
    assert (await store.find_by_idempotency_key("key-digest")).id == first.id
    assert await store.find_by_idempotency_key("other") is None
    with pytest.raises(DuplicateOperation) as caught:
        await store.create(new_operation(idempotency_key="key-digest"))
    assert caught.value.existing_id == first.id
    await store.create(new_operation())  # no key: no constraint


async def test_racing_creates_with_one_key_let_exactly_one_in(store):
    ops = [new_operation(idempotency_key="race") for _ in range(10)]
    results = await asyncio.gather(*(store.create(op) for op in ops), return_exceptions=True)
    winners = [op for op, result in zip(ops, results, strict=True) if result is None]
    assert len(winners) == 1
    assert all(isinstance(r, DuplicateOperation) for r in results if r is not None)
    assert (await store.find_by_idempotency_key("race")).id == winners[0].id


async def test_a_purged_operation_frees_its_key(store):
    op = new_operation(
        status=OperationStatus.SUCCEEDED, expires_at=NOW - 1000, idempotency_key="old"
    )
    await store.create(op)
    await store.purge(now=NOW, tombstone=100)
    assert await store.find_by_idempotency_key("old") is None
    await store.create(new_operation(idempotency_key="old"))


async def test_heartbeats_tell_the_live_owners(store):
    shared = shared_store(store)
    if shared is None:
        pytest.skip("one process: no owners but itself")
    await shared.heartbeat("instance-a", ttl=30)
    await shared.heartbeat("instance-b", ttl=-1)  # already expired
    assert await shared.live_owners() == {"instance-a"}


async def test_shared_stores_announce_finished_and_canceled_operations(store, twin):
    if twin is None:
        pytest.skip("one process: the server wakes its own waiters")
    events: list[tuple[str, str]] = []
    await store.subscribe(lambda kind, op_id: events.append((kind, op_id)))
    op = new_operation(status=OperationStatus.RUNNING)
    await twin.create(op)
    await asyncio.sleep(0.1)  # let the subscription settle
    done = op.apply(
        Event.FINISH_OK, now=NOW, retention=60, response=StoredResponse(200, (), b"")
    ).evolve(version=1)
    assert await twin.compare_and_set(done, expected_version=0)
    await twin.announce_cancel("some-other-id")
    for _ in range(50):
        if len(events) >= 2:
            break
        await asyncio.sleep(0.05)
    assert sorted(events) == [("cancel", "some-other-id"), ("finished", op.id)]


async def test_the_secret_is_stable_and_shared(store, twin):
    secret = await store.secret()
    assert isinstance(secret, bytes)
    assert len(secret) == 32
    assert await store.secret() == secret
    if twin is not None:
        assert await twin.secret() == secret


async def test_a_corrupt_secret_is_a_store_error(store):
    if isinstance(store, (MemoryStore, SQLiteStore)):
        pytest.skip("only the Redis and PostgreSQL stores keep the secret where it can be edited")
    if type(store).__name__ == "RedisStore":
        await store._r.set(store._key("secret"), b"short")
    else:
        async with store._p.connection() as conn:
            await conn.execute(
                "INSERT INTO repoll_meta (name, value) VALUES ('secret', %s) "
                "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                (b"short",),
            )
    with pytest.raises(StoreError, match="32-byte secret"):
        await store.secret()
