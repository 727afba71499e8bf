"""A token that expires halfway through an operation: refreshed on every poll.

The server accepts bearer tokens for 4 s after they were issued (an outer
middleware answers 401 past that, to every request, polls included); the
operation is the same user's whichever of their tokens a poll carries (the
principal is the user, not the token). The job lasts 10 s and each poll is
held at most 2 s, so a client that copies the first request's token to its
polls gets a 401 after about 4 s. The handle (through the client's own
``httpx.Auth``), the transport and the requests adapter (through their
``auth=``) refresh it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import requests
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import repoll
from repoll.cli._main import running_server

pytestmark = pytest.mark.slow
LIFETIME = 4.0
JOB = 10.0


def _token_of(headers: dict[str, str]) -> tuple[str, float] | None:
    value = headers.get("authorization", "")
    user, _, issued = value.removeprefix("Bearer ").partition(":")
    try:
        return user, float(issued)
    except ValueError:
        return None


class ExpiringTokens:
    """ASGI middleware: 401 for a missing or expired token."""

    def __init__(self, app: object) -> None:
        self.app = app
        self.refused = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            token = _token_of(headers)
            if token is None or time.time() - token[1] > LIFETIME:
                self.refused += 1
                response = JSONResponse({"error": "token expired"}, 401)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def user_of(connection: HTTPConnection) -> str:
    token = _token_of(dict(connection.headers))
    return token[0] if token else ""


@repoll.deferred
async def slow(request: Request) -> JSONResponse:
    await asyncio.sleep(JOB)
    return JSONResponse({"done": True, "user": user_of(request)})


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, ExpiringTokens]]:
    app = Starlette(routes=[Route("/slow", slow, methods=["POST"])])
    repoll.install(
        app, store="memory://", principal=user_of, pacing=repoll.PacingPolicy(max_hold=2.0)
    )
    guarded = ExpiringTokens(app)
    with running_server(guarded) as url:
        yield url, guarded


class FreshToken(httpx.Auth):
    """A new token for every request, as a refreshing auth would when the old one expires."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.issued = 0

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.issued += 1
        request.headers["authorization"] = f"Bearer {self.user}:{time.time()}"
        yield request


def through_handle(url: str) -> tuple[int, dict, int]:
    auth = FreshToken("alice")
    with httpx.Client(auth=auth, timeout=30) as client:
        handle = repoll.OperationHandle.start(client, "POST", url)
        response = handle.result()
    return response.status_code, response.json(), auth.issued


def through_transport(url: str) -> tuple[int, dict, int]:
    auth = FreshToken("bob")
    transport = repoll.PollingTransport(auth=auth)
    with httpx.Client(auth=auth, transport=transport, timeout=30) as client:
        response = client.post(url)
    return response.status_code, response.json(), auth.issued


def through_requests(url: str) -> tuple[int, dict, int]:
    issued = []

    def fresh(prepared: requests.PreparedRequest) -> requests.PreparedRequest:
        issued.append(time.time())
        prepared.headers["authorization"] = f"Bearer dave:{time.time()}"
        return prepared

    with requests.Session() as session:
        session.mount("http://", repoll.PollingAdapter(auth=fresh))
        response = session.post(url, auth=fresh, timeout=30)
    return response.status_code, response.json(), len(issued)


def through_transport_without_refresh(url: str) -> tuple[int, dict, int]:
    auth = FreshToken("carol")
    with httpx.Client(auth=auth, transport=repoll.PollingTransport(), timeout=30) as client:
        response = client.post(url)
    return response.status_code, response.json(), auth.issued


def test_an_expiring_token_is_refreshed_for_the_whole_operation(server):
    url, _ = server
    calls = (through_handle, through_transport, through_requests, through_transport_without_refresh)
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call, url + "/slow") for call in calls]
        handle, transport, adapter, stale = (f.result(timeout=60) for f in futures)
    assert handle[:2] == (200, {"done": True, "user": "alice"})
    assert transport[:2] == (200, {"done": True, "user": "bob"})
    assert adapter[:2] == (200, {"done": True, "user": "dave"})
    # A token per request, polls included.
    assert min(handle[2], transport[2], adapter[2]) >= 3
    # The control: the first request's token, copied to every poll, expires.
    assert stale[0] == 401, stale
    assert stale[2] == 1
