"""Shared stores keep their subscriptions, and heal their pools, through backend trouble.

Everything here is real: a throwaway ``redis-server`` restarted under a
store, connections killed with ``CLIENT KILL`` and ``pg_terminate_backend``,
and a TCP proxy that can go silent (a half-open link) or go away (a server
out of reach) without touching the shared services.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
from tests.services import delete_redis_keys, drop_postgres_schema, with_port, with_query

from repoll import OperationStatus
from repoll._errors import StoreUnavailable
from repoll.core._headers import new_operation_id
from repoll.core._model import Operation
from repoll.core._status import Event

pytestmark = pytest.mark.anyio
NOW = 1_800_000_000.0


# --- helpers -------------------------------------------------------------------------


class Recorder:
    """The events a subscription delivered, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, kind: str, operation_id: str) -> None:
        self.events.append((kind, operation_id))

    async def wait_for(self, event: tuple[str, str], within: float = 5.0) -> float:
        """Seconds until ``event`` arrived; fails after ``within`` seconds."""
        started = time.monotonic()
        while event not in self.events:
            if time.monotonic() - started > within:
                pytest.fail(f"no {event} within {within} s; got {self.events}")
            await asyncio.sleep(0.01)
        return time.monotonic() - started


def queued() -> Operation:
    return Operation(
        id=new_operation_id(),
        principal="p",
        endpoint="POST /x",
        status=OperationStatus.QUEUED,
        created_at=NOW,
        updated_at=NOW,
    )


async def end_one(store) -> str:
    """Create an operation and end it, which announces it as finished."""
    op = queued()
    await store.create(op)
    ended = dataclasses.replace(op.apply(Event.CANCEL, now=NOW, retention=60), version=1)
    assert await store.compare_and_set(ended, expected_version=0)
    return op.id


async def events_flow(sender, recorder: Recorder) -> None:
    """Both kinds of event sent by ``sender`` reach ``recorder``."""
    op_id = await end_one(sender)
    await recorder.wait_for(("finished", op_id))
    cancel_id = new_operation_id()
    await sender.announce_cancel(cancel_id)
    await recorder.wait_for(("cancel", cancel_id))


def listener_tasks() -> list[asyncio.Task]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("repoll-")]


async def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# --- Redis: a throwaway server ---------------------------------------------------------


async def test_redis_subscription_survives_a_server_restart(redis_server):
    from repoll.stores._redis import RedisStore

    listener = RedisStore(redis_server.url)
    sender = RedisStore(redis_server.url)
    recorder = Recorder()
    await listener.open()
    await sender.open()
    try:
        await listener.subscribe(recorder)
        # Several pooled connections, and the scripts loaded.
        before = await asyncio.gather(*(end_one(sender) for _ in range(4)))
        await recorder.wait_for(("finished", before[0]))

        redis_server.stop()
        redis_server.start()
        restarted = time.monotonic()
        await recorder.wait_for(("resync", ""))
        assert time.monotonic() - restarted < 3

        # The restart wiped the data and the script cache, and closed every
        # pooled connection: none of them is handed out again.
        assert await asyncio.gather(*(sender.get(op_id) for op_id in before)) == [None] * 4
        await events_flow(sender, recorder)
        assert recorder.events.count(("resync", "")) == 1
    finally:
        await listener.close()
        await sender.close()


async def test_redis_subscribe_fails_while_the_server_is_down(redis_server):
    from repoll.stores._redis import RedisStore

    store = RedisStore(redis_server.url)
    await store.open()
    try:
        redis_server.stop()
        with pytest.raises(StoreUnavailable):
            await store.subscribe(Recorder())
        assert listener_tasks() == []
    finally:
        await store.close()


async def test_redis_close_while_reconnecting_is_prompt_and_leaves_nothing(redis_server, caplog):
    from repoll.stores._redis import RedisStore

    store = RedisStore(redis_server.url)
    await store.open()
    with caplog.at_level(logging.WARNING):
        await store.subscribe(Recorder())
        redis_server.stop()
        await wait_until(lambda: "subscription lost" in caplog.text)
        await asyncio.sleep(0.3)  # well into the pauses between attempts
        started = time.monotonic()
        await store.close()
        assert time.monotonic() - started < 1
        assert listener_tasks() == []
        gc.collect()
        await asyncio.sleep(0.05)
    # "Task was destroyed but it is pending", "exception never retrieved"
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]


# --- Redis: the shared server -----------------------------------------------------------


async def test_redis_subscription_survives_a_killed_connection(redis_url, redis_prefix):
    import redis.asyncio as aioredis

    from repoll.stores._redis import RedisStore

    # A client name of our own, so that only this test's connection is killed.
    name = f"repoll-test-{uuid.uuid4().hex[:12]}"
    listener = RedisStore(with_query(redis_url, client_name=name), prefix=redis_prefix)
    sender = RedisStore(redis_url, prefix=redis_prefix)
    admin = aioredis.from_url(redis_url)
    recorder = Recorder()
    await listener.open()
    await sender.open()
    try:
        await listener.subscribe(recorder)
        clients = await admin.client_list(_type="pubsub")
        ids = [client["id"] for client in clients if client["name"] == name]
        assert len(ids) == 1
        assert await admin.execute_command("CLIENT", "KILL", "ID", ids[0]) == 1
        took = await recorder.wait_for(("resync", ""), within=3)
        assert took < 1
        await events_flow(sender, recorder)

        await listener.close()  # and nothing of it stays connected
        for _ in range(100):
            if not [c for c in await admin.client_list() if c["name"] == name]:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the listener's connections outlived close()")
    finally:
        await listener.close()
        await sender.close()
        await admin.aclose()


async def test_redis_subscription_notices_a_silent_connection(
    redis_url, redis_prefix, proxy_factory
):
    from repoll.stores._redis import RedisStore

    proxy = await proxy_factory(urlsplit(redis_url).port or 6379)
    listener = RedisStore(
        with_port(redis_url, proxy.port), prefix=redis_prefix, health_interval=0.2
    )
    sender = RedisStore(redis_url, prefix=redis_prefix)
    recorder = Recorder()
    await listener.open()
    await sender.open()
    try:
        await listener.subscribe(recorder)
        await asyncio.sleep(0.5)  # a few answered pings: a quiet link is not a dead one
        assert ("resync", "") not in recorder.events
        await proxy.go_silent()
        took = await recorder.wait_for(("resync", ""), within=3)
        assert took < 1.5
        await events_flow(sender, recorder)
    finally:
        await listener.close()
        await sender.close()


async def test_redis_a_failing_handler_does_not_end_the_subscription(
    redis_url, redis_prefix, caplog
):
    from repoll.stores._redis import RedisStore

    recorder = Recorder()

    def handler(kind: str, operation_id: str) -> None:
        recorder(kind, operation_id)
        if len(recorder.events) == 1:
            raise RuntimeError("handler bug")

    store = RedisStore(redis_url, prefix=redis_prefix)
    await store.open()
    try:
        await store.subscribe(handler)
        with caplog.at_level(logging.ERROR, logger="repoll"):
            first = await end_one(store)
            await recorder.wait_for(("finished", first))
        assert "handler bug" in caplog.text
        await events_flow(store, recorder)
    finally:
        await store.close()


async def test_redis_secret_is_one_per_prefix(redis_url, redis_prefix):
    from repoll.stores._redis import RedisStore

    other_prefix = f"repoll-test-{uuid.uuid4().hex[:12]}:"
    stores = [
        RedisStore(redis_url, prefix=redis_prefix),
        RedisStore(redis_url, prefix=redis_prefix),
        RedisStore(redis_url, prefix=other_prefix),
    ]
    for store in stores:
        await store.open()
    try:
        first, again, other = [await store.secret() for store in stores]
        assert len(first) == 32
        assert await stores[0].secret() == first
        assert again == first
        assert len(other) == 32
        assert other != first
    finally:
        for store in stores:
            await store.close()
        delete_redis_keys(redis_url, other_prefix)


# --- PostgreSQL ------------------------------------------------------------------------


async def terminate(postgres_url: str, application_name: str) -> int:
    import psycopg

    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
        cursor = await admin.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (application_name,),
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def backends(postgres_url: str, name: str) -> int:
    """How many connections named ``name`` or ``name:listen`` are open."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
        cursor = await admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name IN (%s, %s)",
            (name, f"{name}:listen"),
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


def named(postgres_url: str) -> tuple[str, str]:
    name = f"repoll-test-{uuid.uuid4().hex[:12]}"
    return with_query(postgres_url, application_name=name), name


async def test_postgres_subscription_survives_a_terminated_listen_connection(postgres_url):
    from repoll.stores._postgres import PostgresStore

    url, name = named(postgres_url)
    listener = PostgresStore(url)
    sender = PostgresStore(postgres_url)
    recorder = Recorder()
    await listener.open()
    await sender.open()
    try:
        await listener.subscribe(recorder)
        assert await terminate(postgres_url, f"{name}:listen") == 1
        took = await recorder.wait_for(("resync", ""), within=3)
        assert took < 1
        await events_flow(sender, recorder)
        assert recorder.events.count(("resync", "")) == 1

        await listener.close()  # and nothing of it stays connected
        for _ in range(100):
            if await backends(postgres_url, name) == 0:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the listener's connections outlived close()")
    finally:
        await listener.close()
        await sender.close()


async def test_postgres_pool_hands_out_no_terminated_connection(postgres_url):
    from repoll.stores._postgres import PostgresStore

    url, name = named(postgres_url)
    store = PostgresStore(url, min_size=2)
    await store.open()
    try:
        op = queued()
        await store.create(op)
        assert await terminate(postgres_url, name) >= 1
        await asyncio.sleep(0.1)  # let the server finish them off
        assert await store.get(op.id) == op
        assert await store.unfinished() == [op]
    finally:
        await store.close()


async def test_postgres_subscription_notices_a_silent_connection(postgres_url, proxy_factory):
    from repoll.stores._postgres import PostgresStore

    proxy = await proxy_factory(urlsplit(postgres_url).port or 5432)
    listener = PostgresStore(with_port(postgres_url, proxy.port), health_interval=0.2)
    sender = PostgresStore(postgres_url)
    recorder = Recorder()
    await listener.open()
    await sender.open()
    try:
        await listener.subscribe(recorder)
        await asyncio.sleep(0.5)  # a few answered checks: a quiet link is not a dead one
        assert ("resync", "") not in recorder.events
        await proxy.go_silent()
        took = await recorder.wait_for(("resync", ""), within=3)
        assert took < 1.5
        await events_flow(sender, recorder)
    finally:
        await listener.close()
        await sender.close()


async def test_postgres_subscribe_fails_while_the_server_is_out_of_reach(
    postgres_url, proxy_factory
):
    from repoll.stores._postgres import PostgresStore

    proxy = await proxy_factory(urlsplit(postgres_url).port or 5432)
    store = PostgresStore(with_port(postgres_url, proxy.port))
    await store.open()
    try:
        await proxy.stop()
        with pytest.raises(StoreUnavailable):
            await store.subscribe(Recorder())
        assert listener_tasks() == []
    finally:
        await store.close()


async def test_postgres_close_while_reconnecting_is_prompt_and_leaves_nothing(
    postgres_url, proxy_factory, caplog
):
    from repoll.stores._postgres import PostgresStore

    proxy = await proxy_factory(urlsplit(postgres_url).port or 5432)
    store = PostgresStore(with_port(postgres_url, proxy.port))
    await store.open()
    with caplog.at_level(logging.WARNING):
        await store.subscribe(Recorder())
        await proxy.stop()
        await wait_until(lambda: "subscription lost" in caplog.text)
        await asyncio.sleep(0.3)  # well into the pauses between attempts
        started = time.monotonic()
        await store.close()
        assert time.monotonic() - started < 1
        assert listener_tasks() == []
        gc.collect()
        await asyncio.sleep(0.05)
    # "Task was destroyed but it is pending", "exception never retrieved"
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]


async def test_postgres_secret_is_one_per_schema(postgres_url):
    import psycopg

    from repoll.stores._postgres import PostgresStore

    other_schema = f"repoll_test_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
        await admin.execute(f"CREATE SCHEMA {other_schema}")
    other_url = with_query(postgres_url.split("?")[0], options=f"-c%20search_path%3D{other_schema}")
    stores = [PostgresStore(postgres_url), PostgresStore(postgres_url), PostgresStore(other_url)]
    try:
        for store in stores:
            await store.open()
        first, again, other = [await store.secret() for store in stores]
        assert len(first) == 32
        assert await stores[0].secret() == first
        assert again == first
        assert len(other) == 32
        assert other != first
    finally:
        for store in stores:
            await store.close()
        drop_postgres_schema(postgres_url.split("?")[0], other_schema)
