"""Faults survived: cancellation racing completion, clients that leave early."""

from __future__ import annotations

import asyncio
import socket
import time
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import requests
from fastapi import FastAPI

import repoll
from repoll import MemoryStore, PacingPolicy

FAST = PacingPolicy(min_interval=0.05, default_interval=0.1, min_hold=0.2, max_hold=5)


@pytest.mark.anyio
@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
async def test_cancel_racing_completion_has_exactly_one_stable_outcome(tmp_path, store_kind):
    app = FastAPI()
    store = MemoryStore() if store_kind == "memory" else repoll.SQLiteStore(tmp_path / "s.db")
    server = repoll.install(app, store=store, pacing=FAST)

    @app.post("/quick")
    @repoll.deferred
    async def quick(delay: float) -> dict:
        await asyncio.sleep(delay)
        return {"done": True}

    outcomes = {"succeeded": 0, "canceled": 0}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for i in range(60):
            # Spread the DELETE around the moment the work ends.
            delay = 0.002 * (i % 20)  # 0 to 38 ms, around work of 10 ms
            start = await c.post("/quick", params={"delay": 0.01})
            location = start.headers.get("location") or start.headers["content-location"]
            await asyncio.sleep(delay)
            await c.delete(location)
            first = await c.get(location, headers={"prefer": "wait=5"})
            status = first.headers["operation-status"]
            assert status in outcomes
            assert first.status_code == (200 if status == "succeeded" else 409)
            for _ in range(3):  # stable on every later GET
                again = await c.get(location)
                assert again.headers["operation-status"] == status
                assert again.content == first.content
            outcomes[status] += 1
    await server.close()
    assert sum(outcomes.values()) == 60
    # The race went both ways, so both paths were exercised.
    assert outcomes["succeeded"] > 0
    assert outcomes["canceled"] > 0


def _post_and_leave(url: str, body: bytes) -> str:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST /start_work HTTP/1.1\r\nHost: {host}:{port}\r\n".encode()
            + b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = sock.recv(65536).decode("latin-1")
    # The connection is closed here, right after the redirect.
    location = next(line for line in head.split("\r\n") if line.lower().startswith("location:"))
    return location.split(":", 1)[1].strip()


@pytest.mark.slow
def test_work_goes_on_when_the_client_leaves_after_starting(live):
    location = urljoin(live.url, _post_and_leave(live.url, b'{"seconds": 0.5}'))
    time.sleep(1.0)
    response = requests.get(location, timeout=30)
    assert response.status_code == 200
    assert response.json()["result"] == "done"


@pytest.mark.slow
def test_work_goes_on_when_a_held_poll_is_abandoned(live):
    response = requests.post(
        f"{live.url}/start_work", json={"seconds": 1}, allow_redirects=False, timeout=10
    )
    location = urljoin(live.url, response.headers["location"])
    path = urlsplit(location).path
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nPrefer: wait=30\r\n\r\n".encode())
        time.sleep(0.2)  # held now; leave without reading
    final = requests.get(location, headers={"prefer": "wait=10"}, timeout=30)
    assert final.status_code == 200
    assert final.json()["result"] == "done"


@pytest.mark.slow
def test_a_client_that_leaves_frees_its_held_poll_at_once(live):
    server = live.app.state.repoll
    response = requests.post(
        f"{live.url}/start_work", json={"seconds": 5}, allow_redirects=False, timeout=10
    )
    path = urlsplit(response.headers["location"]).path
    host, port = live.url.removeprefix("http://").split(":")
    before = server.held_polls
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nPrefer: wait=30\r\n\r\n".encode())
    deadline = time.monotonic() + 5
    while server.held_polls == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.held_polls == before + 1
    sock.close()
    deadline = time.monotonic() + 2
    while server.held_polls > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.held_polls == before  # released well before its 30 s hold
