"""Two server instances sharing one Redis or PostgreSQL store, in one process."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fastapi import FastAPI

import repoll
from repoll import OperationStatus, PacingPolicy
from repoll.core._headers import new_operation_id
from repoll.core._model import Operation

pytestmark = pytest.mark.anyio
FAST = PacingPolicy(min_interval=0.05, default_interval=0.1, min_hold=0.2, max_hold=10)


def make_store(kind, request):
    if kind == "redis":
        from repoll.stores._redis import RedisStore

        return RedisStore(
            request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix")
        )
    from repoll.stores._postgres import PostgresStore

    return PostgresStore(request.getfixturevalue("postgres_url"))


@pytest.fixture(params=["redis", "postgres"])
async def pair(request):
    gate = asyncio.Event()
    instances = []
    for _ in range(2):
        app = FastAPI()
        server = repoll.install(
            app,
            store=make_store(request.param, request),
            pacing=FAST,
            lifetimes=repoll.Lifetimes(heartbeat_interval=0.2),
        )

        @app.post("/gated")
        @repoll.deferred
        async def gated() -> dict:
            await gate.wait()
            return {"gate": "opened"}

        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        instances.append((client, server))
    yield instances, gate
    gate.set()
    for client, server in instances:
        await client.aclose()
        await server.close()


async def test_a_poll_held_on_b_wakes_when_work_on_a_ends(pair):
    (a, _), (b, _) = pair[0]
    gate = pair[1]
    location = (await a.post("/gated")).headers["location"]
    assert (await b.get(location, headers={"prefer": "wait=0"})).status_code == 303
    held = asyncio.create_task(b.get(location, headers={"prefer": "wait=10"}))
    await asyncio.sleep(0.3)
    assert not held.done()
    released = time.monotonic()
    gate.set()
    response = await asyncio.wait_for(held, timeout=5)
    assert response.status_code == 200
    assert response.json() == {"gate": "opened"}
    assert time.monotonic() - released < 1.0  # woken, not timed out


async def test_cancel_through_b_stops_the_work_on_a(pair):
    (a, _), (b, _) = pair[0]
    location = (await a.post("/gated")).headers["location"]
    canceled = await b.delete(location)
    assert canceled.status_code in (200, 202)
    final = await b.get(location, headers={"prefer": "wait=5"})
    assert final.status_code == 409
    assert final.headers["operation-status"] == "canceled"


async def test_operations_of_a_silent_instance_are_declared_lost(pair):
    (_, _), (b, server_b) = pair[0]
    now = time.time()
    orphan = Operation(
        id=new_operation_id(),
        principal="",
        endpoint="POST /gated",
        status=OperationStatus.RUNNING,
        created_at=now,
        updated_at=now,
        started_at=now,
        owner="an-instance-that-died",
    )
    await server_b.open()
    await server_b.store.create(orphan)
    assert await server_b.reap() == 1
    lost = await b.get(f"/operations/{orphan.id}")
    assert lost.status_code == 500
    assert lost.json()["type"] == "urn:repoll:problem:operation-lost"
    assert "an-instance-that-died" in lost.json()["detail"]


async def test_live_instances_keep_their_operations(pair):
    (a, _), (b, server_b) = pair[0]
    location = (await a.post("/gated")).headers["location"]
    await asyncio.sleep(0.5)  # several heartbeats and maintenance rounds
    assert await server_b.reap() == 0
    status = await b.get(location, headers={"prefer": "wait=0"})
    assert status.headers["operation-status"] == "running"
