"""An API key in a custom header, set once on the client: every poll carries it.

The demo server's principal is the request's credentials, ``X-API-Key``
among them, so an operation started with a key is that key's alone: a poll
without it is another principal's and gets 404. Each client is configured
the way its users configure it, client- or session-wide, and must get the
endpoint's answer; a different key must not see the operation.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import requests
from tests.services import repoll_cli

import repoll

pytestmark = pytest.mark.slow
KEY = {"X-API-Key": "key-of-alice"}
JOB = {"seconds": 2}


def via_transport(url: str) -> tuple[int, dict]:
    with httpx.Client(transport=repoll.PollingTransport(), headers=KEY, timeout=30) as client:
        response = client.post(url, json=JOB)
    return response.status_code, response.json()


def via_async_transport(url: str) -> tuple[int, dict]:
    async def go() -> tuple[int, dict]:
        transport = repoll.AsyncPollingTransport()
        async with httpx.AsyncClient(transport=transport, headers=KEY, timeout=30) as client:
            response = await client.post(url, json=JOB)
        return response.status_code, response.json()

    return asyncio.run(go())


def via_requests(url: str) -> tuple[int, dict]:
    with requests.Session() as session:
        session.headers.update(KEY)
        session.mount("http://", repoll.PollingAdapter())
        response = session.post(url, json=JOB, timeout=30)
    return response.status_code, response.json()


def via_handle(url: str) -> tuple[int, dict]:
    with httpx.Client(headers=KEY, timeout=30) as client:
        response = repoll.OperationHandle.start(client, "POST", url, json=JOB).result()
    return response.status_code, response.json()


def via_aiohttp(url: str) -> tuple[int, dict]:
    import aiohttp

    async def go() -> tuple[int, dict]:
        session = aiohttp.ClientSession(headers=KEY, middlewares=(repoll.aiohttp_polling(),))
        async with session, session.post(url, json=JOB) as response:
            return response.status, await response.json()

    return asyncio.run(go())


def via_cli(url: str) -> tuple[int, dict]:
    import json

    result = repoll_cli(
        "request", "-H", "X-API-Key: key-of-alice", "--json", '{"seconds": 2}', url, timeout=60
    )
    return (200 if result.returncode == 0 else result.returncode), json.loads(result.stdout)


CLIENTS = {
    "httpx transport": via_transport,
    "async httpx transport": via_async_transport,
    "requests adapter": via_requests,
    "handle": via_handle,
    "aiohttp": via_aiohttp,
    "repoll request": via_cli,
}


@pytest.mark.parametrize("client", CLIENTS)
def test_a_client_wide_api_key_serves_the_whole_operation(live, client):
    status, body = CLIENTS[client](f"{live.url}/start_work")
    assert status == 200, body
    assert body["result"] == "done"
    polls = [path for method, path in live.seen() if method == "GET"]
    assert polls  # it was deferred, and polled


def test_another_key_does_not_see_the_operation(live):
    with httpx.Client(headers=KEY, timeout=30) as client:
        handle = repoll.OperationHandle.start(client, "POST", f"{live.url}/start_work", json=JOB)
    other = httpx.get(handle.url, headers={"X-API-Key": "key-of-mallory"}, timeout=30)
    assert other.status_code == 404


def test_aiohttp_keeps_the_polls_and_hops_on_the_final_response(live):
    import aiohttp

    async def go() -> tuple[int, int, int]:
        session = aiohttp.ClientSession(headers=KEY, middlewares=(repoll.aiohttp_polling(),))
        async with session, session.post(f"{live.url}/start_work", json=JOB) as response:
            return response.status, len(response.repoll_history), len(response.repoll_hops)

    status, polls, hops = asyncio.run(go())
    assert status == 200
    assert polls >= 1  # the start's 303, and any poll before the last
    assert hops == polls + 1
