"""Every client polls with the header fields the core names: one rule, over a real socket.

The same original request goes out through each client (httpx transports,
the requests adapter, handles); a small uvicorn server records the fields of
the poll it then receives. Fields the HTTP library adds on its own (Host,
Connection, Accept-Encoding, Content-Length) are left out: the rule is about
what repoll carries from the original request.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import repoll
from repoll import PollOptions
from repoll.cli._main import running_server
from repoll.core._poll import Poll, poll_headers

ORIGINAL = {
    "Accept": "application/x-probe",
    "User-Agent": "probe/1",
    "Authorization": "Bearer secret",
    "Cookie": "session=s1",
    "X-Api-Key": "k1",
    "X-Custom": "tenant-7",
    "Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "Idempotency-Key": '"k-1"',
    "If-Match": '"v1"',
    "Content-Type": "application/json",
}
LIBRARY_FIELDS = {"host", "connection", "accept-encoding", "content-length"}
OPTIONS = PollOptions(allow_cross_origin=True, long_poll=5)


class Recorder:
    def __init__(self) -> None:
        self.polls: list[list[tuple[str, str]]] = []
        self.lock = threading.Lock()

    def app(self) -> Starlette:
        async def start(request: Request) -> JSONResponse:
            await request.body()
            # "localhost" is another origin than the "127.0.0.1" the client used.
            host = "localhost" if request.query_params.get("cross") else "127.0.0.1"
            location = f"http://{host}:{request.url.port}/op"
            headers = {"location": location, "retry-after": "1", "retry-after-ms": "100"}
            return JSONResponse({"status": "running"}, status_code=202, headers=headers)

        async def op(request: Request) -> JSONResponse:
            with self.lock:
                self.polls.append(list(request.headers.items()))
            return JSONResponse({"done": True})

        return Starlette(
            routes=[Route("/start", start, methods=["POST"]), Route("/op", op, methods=["GET"])]
        )

    def last_poll(self) -> list[tuple[str, str]]:
        with self.lock:
            fields = self.polls[-1]
        return sorted((k, v) for k, v in fields if k not in LIBRARY_FIELDS)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()
    with running_server(recorder.app()) as url:
        yield url, recorder


def via_transport(url: str) -> None:
    with httpx.Client(transport=repoll.PollingTransport(options=OPTIONS), timeout=30) as client:
        assert client.post(url, headers=ORIGINAL, content=b"{}").status_code == 200


def via_async_transport(url: str) -> None:
    async def go() -> None:
        transport = repoll.AsyncPollingTransport(options=OPTIONS)
        async with httpx.AsyncClient(transport=transport, timeout=30) as client:
            response = await client.post(url, headers=ORIGINAL, content=b"{}")
            assert response.status_code == 200

    asyncio.run(go())


def via_adapter(url: str) -> None:
    with requests.Session() as session:
        session.mount("http://", repoll.PollingAdapter(options=OPTIONS))
        assert session.post(url, headers=ORIGINAL, data=b"{}", timeout=30).status_code == 200


def via_handle(url: str) -> None:
    with httpx.Client(timeout=30) as client:
        handle = repoll.OperationHandle.start(
            client, "POST", url, headers=ORIGINAL, content=b"{}", options=OPTIONS
        )
        assert handle.wait().status_code == 200


def via_async_handle(url: str) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            handle = await repoll.AsyncOperationHandle.start(
                client, "POST", url, headers=ORIGINAL, content=b"{}", options=OPTIONS
            )
            assert (await handle.wait()).status_code == 200

    asyncio.run(go())


def via_aiohttp(url: str) -> None:
    import aiohttp

    async def go() -> None:
        # Session-wide fields too: aiohttp merges them into every request.
        session = aiohttp.ClientSession(
            headers={"X-Session-Wide": "yes"}, middlewares=(repoll.aiohttp_polling(OPTIONS),)
        )
        async with session, session.post(url, headers=ORIGINAL, data=b"{}") as response:
            assert response.status == 200

    asyncio.run(go())


CLIENTS: dict[str, Callable[[str], None]] = {
    "httpx transport": via_transport,
    "async httpx transport": via_async_transport,
    "requests adapter": via_adapter,
    "handle": via_handle,
    "async handle": via_async_handle,
    "aiohttp": via_aiohttp,
}


@pytest.mark.parametrize("cross_origin", [False, True], ids=["same-origin", "cross-origin"])
def test_every_client_sends_the_same_poll_fields(server, cross_origin):
    base, recorder = server
    url = f"{base}/start" + ("?cross=1" if cross_origin else "")
    seen = {}
    for name, run in CLIENTS.items():
        run(url)
        seen[name] = recorder.last_poll()
    expected = {
        "accept": "application/x-probe",
        "user-agent": "probe/1",
        "x-custom": "tenant-7",
        "traceparent": ORIGINAL["Traceparent"],
        "prefer": "respond-async, wait=5",
    }
    if not cross_origin:
        expected |= {"authorization": "Bearer secret", "cookie": "session=s1", "x-api-key": "k1"}
    aiohttp_poll = dict(seen.pop("aiohttp"))
    # aiohttp's session-wide field is one of the caller's, and no credential.
    assert aiohttp_poll.pop("x-session-wide", None) == "yes"
    assert sorted(aiohttp_poll.items()) == sorted(expected.items())
    assert seen == dict.fromkeys(seen, sorted(expected.items()))


def test_the_rule_itself():
    original = httpx.Headers(ORIGINAL)
    same = poll_headers(original, "http://a.test/start", Poll("http://a.test/op", {"Prefer": "x"}))
    carried = {
        "accept": "application/x-probe",
        "user-agent": "probe/1",
        "x-custom": "tenant-7",
        "traceparent": ORIGINAL["Traceparent"],
    }
    assert same == {
        **carried,
        "authorization": "Bearer secret",
        "cookie": "session=s1",
        "x-api-key": "k1",
        "prefer": "x",
    }
    other = poll_headers(original, "http://a.test/start", Poll("http://a.test:81/op"))
    assert other == carried
    # Without an Accept of its own, a poll accepts anything; names are read in any case.
    assert poll_headers({"COOKIE": "a=1"}, "http://a.test/", Poll("/op")) == {
        "accept": "*/*",
        "cookie": "a=1",
    }


def test_a_deployment_names_its_own_credential_fields(server):
    from repoll.core._headers import CREDENTIAL_FIELDS

    options = PollOptions(
        allow_cross_origin=True, long_poll=5, credential_fields=CREDENTIAL_FIELDS | {"X-My-Token"}
    )
    assert "x-my-token" in options.credential_fields  # names are compared without case
    base, recorder = server
    for cross, carried in ((False, True), (True, False)):
        url = f"{base}/start" + ("?cross=1" if cross else "")
        transport = repoll.PollingTransport(options=options)
        with httpx.Client(transport=transport, timeout=30) as client:
            headers = {"X-My-Token": "t1", "X-Custom": "c"}
            assert client.post(url, headers=headers, content=b"{}").status_code == 200
        poll = dict(recorder.last_poll())
        assert ("x-my-token" in poll) is carried
        assert poll["x-custom"] == "c"
