"""Two server instances on one shared store, through the store's bad days.

What must hold after each fault: a poll held on B wakes within moments of the
work ending on A, a DELETE through B reaches the work on A, and an outcome the
store could not take while it was away lands once it is back. The faults are
real: subscription connections killed on the server (``CLIENT KILL``,
``pg_terminate_backend``), a Redis restarted under the instances, and a TCP
relay between an instance and its store that refuses every connection.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from fastapi import FastAPI
from tests.services import with_port, with_query

import repoll
from repoll import PacingPolicy
from repoll.stores import Store

pytestmark = pytest.mark.anyio
FAST = PacingPolicy(min_interval=0.05, default_interval=0.1, min_hold=0.2, max_hold=10)


class Instance:
    def __init__(self, store: Store, gate: asyncio.Event) -> None:
        app = FastAPI()
        self.server = repoll.install(
            app, store=store, pacing=FAST, lifetimes=repoll.Lifetimes(heartbeat_interval=0.2)
        )

        @app.post("/gated")
        @repoll.deferred
        async def gated() -> dict:
            await gate.wait()
            return {"gate": "opened"}

        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")

    async def post_gated(self) -> httpx.Response:
        response = await self.client.post("/gated")
        assert response.status_code == 303, response.text
        return response

    async def close(self) -> None:
        await self.client.aclose()
        await self.server.close()


async def _held_poll_wakes(a: Instance, b: Instance, gate: asyncio.Event) -> float:
    """Start on A, hold a poll on B, end the work: seconds from the end to B's answer."""
    location = (await a.post_gated()).headers["location"]
    held = asyncio.create_task(b.client.get(location, headers={"prefer": "wait=10"}))
    await asyncio.sleep(0.3)
    assert not held.done()
    released = time.monotonic()
    gate.set()
    answer = await asyncio.wait_for(held, timeout=12)
    assert answer.status_code == 200, answer.text
    return time.monotonic() - released


async def _cancel_through(b: Instance, a: Instance) -> None:
    location = (await a.post_gated()).headers["location"]
    assert (await b.client.delete(location)).status_code in (200, 202)
    final = await asyncio.wait_for(b.client.get(location, headers={"prefer": "wait=5"}), 60)
    assert final.status_code == 409
    assert final.headers["operation-status"] == "canceled"


async def _both_paths_work(a: Instance, b: Instance, gate: asyncio.Event) -> None:
    """A poll held on B wakes at once when work on A ends; a DELETE on B stops work on A."""
    assert await _held_poll_wakes(a, b, gate) < 0.5
    gate.clear()
    await _cancel_through(b, a)


async def _settle_subscriptions(b: Instance, seconds: float = 1.0) -> None:
    """Give a store that lost its subscription time to notice and restore it."""
    await asyncio.sleep(seconds)
    await b.server.open()


async def test_redis_killed_subscriptions_heal(redis_url, redis_prefix):
    import redis.asyncio as aioredis

    from repoll.stores._redis import RedisStore

    name = f"repoll-heal-{uuid.uuid4().hex[:10]}"
    gate = asyncio.Event()
    a = Instance(RedisStore(redis_url, prefix=redis_prefix), gate)
    b = Instance(
        RedisStore(
            with_query(redis_url, client_name=name), prefix=redis_prefix, health_interval=0.5
        ),
        gate,
    )
    admin = aioredis.from_url(redis_url)
    try:
        await a.server.open()
        await b.server.open()
        killed = 0
        for client in await admin.client_list(_type="pubsub"):
            if client["name"] == name:
                await admin.client_kill_filter(_id=client["id"])
                killed += 1
        assert killed == 1
        await _settle_subscriptions(b)
        await _both_paths_work(a, b, gate)
    finally:
        gate.set()
        await a.close()
        await b.close()
        await admin.aclose()


async def test_postgres_terminated_listen_connections_heal(postgres_url):
    import psycopg

    from repoll.stores._postgres import PostgresStore

    name = f"repoll-heal-{uuid.uuid4().hex[:10]}"
    gate = asyncio.Event()
    a = Instance(PostgresStore(postgres_url), gate)
    b = Instance(PostgresStore(with_query(postgres_url, application_name=name)), gate)
    try:
        await a.server.open()
        await b.server.open()
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
            cursor = await admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (f"{name}:listen",),
            )
            row = await cursor.fetchone()
            assert row is not None
            assert row[0] == 1
        await _settle_subscriptions(b)
        await _both_paths_work(a, b, gate)
    finally:
        gate.set()
        await a.close()
        await b.close()


async def test_a_redis_restart_under_two_instances_heals(redis_server, tmp_path):
    from repoll.stores._redis import RedisStore

    # This Redis keeps its data on disk, so operations outlive its restart.
    redis_server.persist_in = str(tmp_path)
    redis_server.stop()
    redis_server.start()
    gate = asyncio.Event()
    a = Instance(RedisStore(redis_server.url), gate)
    b = Instance(RedisStore(redis_server.url, health_interval=0.5), gate)
    try:
        await a.server.open()
        await b.server.open()
        running = (await a.post_gated()).headers["location"]
        redis_server.stop()
        gate.set()  # the work ends while the store is away: its outcome waits
        await asyncio.sleep(1.0)
        redis_server.start()
        final = await asyncio.wait_for(b.client.get(running, headers={"prefer": "wait=10"}), 60)
        assert final.status_code == 200, final.text
        assert final.json() == {"gate": "opened"}
        gate.clear()
        await _both_paths_work(a, b, gate)
    finally:
        gate.set()
        await a.close()
        await b.close()


async def test_an_outcome_waits_out_an_outage_of_the_store(redis_url, redis_prefix, proxy_factory):
    from repoll.stores._redis import RedisStore

    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    relay = await proxy_factory(port)
    gate = asyncio.Event()
    # Both instances reach the store through the relay: when it goes, the
    # store is out of reach for everyone, as when Redis itself is down.
    url = with_port(redis_url, relay.port)
    a = Instance(RedisStore(url, prefix=redis_prefix), gate)
    b = Instance(RedisStore(url, prefix=redis_prefix), gate)
    try:
        await a.server.open()
        await b.server.open()
        location = (await a.post_gated()).headers["location"]
        await relay.stop()
        gate.set()  # the work ends while the store is away: its outcome waits
        during = await asyncio.wait_for(b.client.get(location, headers={"prefer": "wait=0"}), 60)
        assert during.status_code == 503
        await asyncio.sleep(4.0)  # four owner_ttl: every heartbeat has expired
        await relay.start()  # back, on the same port
        # Nobody takes the other for dead after the outage: the real outcome lands.
        final = await asyncio.wait_for(b.client.get(location, headers={"prefer": "wait=20"}), 60)
        assert final.status_code == 200, final.text
        assert final.json() == {"gate": "opened"}
    finally:
        gate.set()
        await a.close()
        await b.close()


async def test_an_instance_cut_off_from_the_store_is_taken_for_dead(
    redis_url, redis_prefix, proxy_factory
):
    from repoll.stores._redis import RedisStore

    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    relay = await proxy_factory(port)
    gate = asyncio.Event()
    a = Instance(RedisStore(with_port(redis_url, relay.port), prefix=redis_prefix), gate)
    b = Instance(RedisStore(redis_url, prefix=redis_prefix), gate)
    try:
        await a.server.open()
        await b.server.open()
        await asyncio.sleep(1.2)  # B has heartbeated for a full owner_ttl
        location = (await a.post_gated()).headers["location"]
        await relay.stop()  # only A loses the store: to B, it looks dead
        gate.set()
        final = await asyncio.wait_for(b.client.get(location, headers={"prefer": "wait=10"}), 60)
        assert final.status_code == 500
        assert final.json()["type"] == "urn:repoll:problem:operation-lost"
        await relay.start()
        await asyncio.sleep(1.0)  # A writes its late outcome, which loses the race
        again = await b.client.get(location)
        assert again.content == final.content
    finally:
        gate.set()
        await a.close()
        await b.close()
