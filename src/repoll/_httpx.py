"""httpx transports that follow the polling protocol: thin shells around ``poll_flow``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator

from ._errors import require

require("httpx", "client")

import httpx  # noqa: E402 - after the extra check, for its clear message

from ._poll import (  # noqa: E402
    Hop,
    Observed,
    Poll,
    PollOptions,
    Sleep,
    first_request_headers,
    is_polling_response,
    poll_flow,
)

HOPS_EXTENSION = "repoll.hops"
OPTIONS_EXTENSION = "repoll.options"
# Credentials follow a poll only to the origin that received the original
# request: a server must not be able to name another host and get them.
_CREDENTIAL_HEADERS = ("authorization", "cookie", "proxy-authorization")


def _observe(response: httpx.Response, request: httpx.Request, body: bytes = b"") -> Observed:
    return Observed(
        method=request.method,
        status=response.status_code,
        headers={k.lower(): v for k, v in response.headers.items()},
        url=str(request.url),
        at=time.monotonic(),
        body=body,
    )


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def _poll_request(original: httpx.Request, poll: Poll) -> httpx.Request:
    url = original.url.join(poll.url)
    headers = {"accept": original.headers.get("accept", "*/*"), **poll.headers}
    if _same_origin(url, original.url):
        for name in _CREDENTIAL_HEADERS:
            if name in original.headers:
                headers[name] = original.headers[name]
    return httpx.Request("GET", url, headers=headers, extensions=dict(original.extensions))


class _Flow:
    """What both transports share: preparing the request and starting the flow."""

    def __init__(self, options: PollOptions | None, on_hop: Callable[[Hop], None] | None) -> None:
        self.options = options or PollOptions()
        self.on_hop = on_hop

    def options_for(self, request: httpx.Request) -> PollOptions:
        per_request = request.extensions.get(OPTIONS_EXTENSION)
        return per_request if isinstance(per_request, PollOptions) else self.options

    def prepare(self, request: httpx.Request) -> None:
        for name, value in first_request_headers(self.options_for(request)).items():
            request.headers.setdefault(name, value)

    def start(
        self, request: httpx.Request, first: Observed, hops: list[Hop]
    ) -> Generator[Sleep | Poll, Observed | None, Observed]:
        def record(hop: Hop) -> None:
            hops.append(hop)
            if self.on_hop is not None:
                self.on_hop(hop)

        return poll_flow(first, self.options_for(request), wall_clock=time.time, on_hop=record)


def _finish(response: httpx.Response, hops: list[Hop]) -> httpx.Response:
    response.extensions = {**response.extensions, HOPS_EXTENSION: hops}
    return response


class PollingTransport(httpx.BaseTransport):
    """An httpx transport that turns a deferred request into one ordinary call.

    ``httpx.Client(transport=repoll.PollingTransport())``: a polling response
    (303/202 with Location and Retry-After, or Operation-Status) is followed
    until the final response, which is returned for the original request.
    Per-request options: ``extensions={"repoll.options": PollOptions(...)}``.
    The hops are in ``response.extensions["repoll.hops"]``.
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        options: PollOptions | None = None,
        on_hop: Callable[[Hop], None] | None = None,
    ) -> None:
        self._inner = transport or httpx.HTTPTransport()
        self._flow = _Flow(options, on_hop)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._flow.prepare(request)
        response = self._inner.handle_request(request)
        if not is_polling_response(_observe(response, request)):
            return response  # untouched, still streamable
        first = _observe(response, request, response.read())
        response.close()
        hops: list[Hop] = []
        flow = self._flow.start(request, first, hops)
        last = response
        try:
            action = next(flow)
            while True:
                if isinstance(action, Sleep):
                    time.sleep(action.seconds)
                    action = flow.send(None)
                    continue
                poll = _poll_request(request, action)
                last = self._inner.handle_request(poll)
                observed = _observe(last, poll, last.read())
                last.close()
                action = flow.send(observed)
        except StopIteration:
            return _finish(last, hops)

    def close(self) -> None:
        self._inner.close()


class AsyncPollingTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`PollingTransport`, driving the same flow."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        options: PollOptions | None = None,
        on_hop: Callable[[Hop], None] | None = None,
    ) -> None:
        self._inner = transport or httpx.AsyncHTTPTransport()
        self._flow = _Flow(options, on_hop)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._flow.prepare(request)
        response = await self._inner.handle_async_request(request)
        if not is_polling_response(_observe(response, request)):
            return response  # untouched, still streamable
        first = _observe(response, request, await response.aread())
        await response.aclose()
        hops: list[Hop] = []
        flow = self._flow.start(request, first, hops)
        last = response
        try:
            action = next(flow)
            while True:
                if isinstance(action, Sleep):
                    await asyncio.sleep(action.seconds)
                    action = flow.send(None)
                    continue
                poll = _poll_request(request, action)
                last = await self._inner.handle_async_request(poll)
                observed = _observe(last, poll, await last.aread())
                await last.aclose()
                action = flow.send(observed)
        except StopIteration:
            return _finish(last, hops)

    async def aclose(self) -> None:
        await self._inner.aclose()
