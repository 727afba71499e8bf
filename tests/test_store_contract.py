"""The contract every store passes. Later backends join the ``store`` fixture's params."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from repoll import MemoryStore, OperationStatus, SQLiteStore, Store, StoredResponse
from repoll._errors import DuplicateOperation
from repoll.core._headers import new_operation_id
from repoll.core._model import Operation
from repoll.core._status import Event
from repoll.stores._store import store_from_url, update_operation

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
    if not store.shared:
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
    with pytest.raises(ValueError, match="unsupported store URL"):
        store_from_url("mongodb://x")


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
    await store.heartbeat("instance-a", ttl=30)
    await store.heartbeat("instance-b", ttl=-1)  # already expired
    if store.shared:
        assert await store.live_owners() == {"instance-a"}
    else:
        assert "instance-b" not in await store.live_owners()


async def test_shared_stores_announce_finished_and_canceled_operations(store, twin):
    events: list[tuple[str, str]] = []
    await store.subscribe(lambda kind, op_id: events.append((kind, op_id)))
    if twin is None:
        return  # one process: the server wakes its own waiters
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
