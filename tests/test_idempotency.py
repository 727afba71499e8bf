"""Idempotent starts with Idempotency-Key: one operation per key, whatever the retries."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

import repoll
from repoll import MemoryStore, PacingPolicy
from repoll.core._headers import InvalidIdempotencyKey, parse_idempotency_key

FAST = PacingPolicy(min_interval=0.05, default_interval=0.1, min_hold=0.2, max_hold=5)


class Order(BaseModel):
    item: str


@pytest.fixture(params=["memory", "sqlite"])
async def setup(request, tmp_path):
    store = MemoryStore() if request.param == "memory" else repoll.SQLiteStore(tmp_path / "s.db")
    app = FastAPI()
    server = repoll.install(app, store=store, pacing=FAST)
    runs: list[str] = []
    gate = asyncio.Event()

    @app.post("/orders")
    @repoll.deferred
    async def place(order: Order) -> dict:
        runs.append(order.item)
        await gate.wait()
        return {"placed": order.item}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c, server, runs, gate
    gate.set()
    await server.close()


def keyed(key: str, **headers: str) -> dict[str, str]:
    return {"idempotency-key": key, **headers}


@pytest.mark.anyio
async def test_a_repeated_request_gets_the_same_operation(setup):
    client, _, runs, gate = setup
    first = await client.post("/orders", json={"item": "tea"}, headers=keyed('"k-1"'))
    again = await client.post("/orders", json={"item": "tea"}, headers=keyed('"k-1"'))
    assert first.status_code == again.status_code == 303
    assert again.headers["location"] == first.headers["location"]
    assert runs == ["tea"]
    gate.set()
    await asyncio.sleep(0.05)
    done = await client.post("/orders", json={"item": "tea"}, headers=keyed('"k-1"'))
    assert done.status_code == 200
    assert done.json() == {"placed": "tea"}
    # The canonical operation URL: the start's Location is its first hop URL.
    assert done.headers["content-location"] == first.headers["location"].split("?")[0]
    assert runs == ["tea"]


@pytest.mark.anyio
async def test_concurrent_duplicates_start_one_operation(setup):
    client, _, runs, _ = setup
    responses = await asyncio.gather(
        *(client.post("/orders", json={"item": "jam"}, headers=keyed("k-2")) for _ in range(10))
    )
    assert {r.status_code for r in responses} == {303}
    assert len({r.headers["location"] for r in responses}) == 1
    await asyncio.sleep(0.05)
    assert runs == ["jam"]


@pytest.mark.anyio
async def test_the_same_key_with_another_request_is_422(setup):
    client, _, runs, _ = setup
    await client.post("/orders", json={"item": "tea"}, headers=keyed("k-3"))
    other = await client.post("/orders", json={"item": "coffee"}, headers=keyed("k-3"))
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert other.json()["type"] == "urn:repoll:problem:idempotency-key-reused"
    assert runs == ["tea"]


@pytest.mark.anyio
async def test_keys_are_per_principal(setup):
    client, _, runs, _ = setup
    alice = await client.post(
        "/orders", json={"item": "tea"}, headers=keyed("k-4", authorization="Bearer alice")
    )
    bob = await client.post(
        "/orders", json={"item": "tea"}, headers=keyed("k-4", authorization="Bearer bob")
    )
    assert alice.headers["location"] != bob.headers["location"]
    assert runs == ["tea", "tea"]


@pytest.mark.anyio
@pytest.mark.parametrize("bad", ['""', '"unterminated', "two words", "é", "x" * 256])
async def test_malformed_keys_get_400_and_no_operation(setup, bad):
    client, server, runs, _ = setup
    response = await client.post(
        "/orders", json={"item": "tea"}, headers={"idempotency-key": bad.encode("utf-8")}
    )
    assert response.status_code == 400
    assert response.json()["type"] == "urn:repoll:problem:invalid-idempotency-key"
    assert runs == []
    assert await server.store.unfinished() == []


@pytest.mark.anyio
async def test_requests_without_a_key_are_not_deduplicated(setup):
    client, _, runs, _ = setup
    a = await client.post("/orders", json={"item": "tea"})
    b = await client.post("/orders", json={"item": "tea"})
    assert a.headers["location"] != b.headers["location"]
    assert runs == ["tea", "tea"]


def test_parse_idempotency_key():
    assert parse_idempotency_key([]) is None
    assert parse_idempotency_key(['"abc-123"']) == "abc-123"
    assert parse_idempotency_key(["abc-123"]) == "abc-123"
    assert parse_idempotency_key(['"with space"']) == "with space"
    assert parse_idempotency_key(['"a\\"b"']) == 'a"b'
    assert parse_idempotency_key(['"x"', '"x"']) == "x"
    with pytest.raises(InvalidIdempotencyKey):
        parse_idempotency_key(['"x"', '"y"'])


@given(st.lists(st.text(max_size=300), max_size=3))
def test_parse_idempotency_key_accepts_or_rejects_cleanly(values):
    try:
        key = parse_idempotency_key(values)
    except InvalidIdempotencyKey:
        return
    assert key is None or 0 < len(key) <= 255
