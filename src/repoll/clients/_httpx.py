"""httpx transports that follow the polling protocol: thin shells around ``poll_flow``.

The transport decides nothing. Whether a response needs polling
(:func:`~repoll.core._poll.needs_polling`), where and when to poll
(:func:`~repoll.core._poll.poll_flow`) and which header fields a poll carries
(:func:`~repoll.core._poll.poll_headers`) are the core's; this module turns
its answers into httpx requests and httpx responses back into
:class:`~repoll.core._poll.Observed`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import replace
from typing import Any

from .. import _telemetry as telemetry
from .. import _testing
from .._errors import MissingExtraError
from .._telemetry import ClientTrace
from ..core._poll import (
    Hop,
    Observed,
    Poll,
    PollOptions,
    carries_credentials,
    first_request_headers,
    may_need_body,
    needs_polling,
    poll_flow,
    poll_headers,
)
from ._breakers import breaker_for, refused, report
from ._runners import AsyncSleeper, Flow, Sleeper, adrive, drive

try:
    import httpx
except ModuleNotFoundError as exc:
    raise MissingExtraError("client", "httpx") from exc

HOPS_EXTENSION = "repoll.hops"
HISTORY_EXTENSION = "repoll.history"
OPTIONS_EXTENSION = "repoll.options"
PASSTHROUGH_EXTENSION = "repoll.passthrough"  # set by handles: return the first response


def observe(response: httpx.Response, request: httpx.Request, body: bytes = b"") -> Observed:
    """What the flow needs to know of an httpx response."""
    return Observed(
        method=request.method,
        status=response.status_code,
        headers={k.lower(): v for k, v in response.headers.items()},
        url=str(request.url),
        at=time.monotonic(),
        body=body,
        raw=response,
    )


def observe_error(error: httpx.TransportError, request: httpx.Request) -> Observed:
    return Observed(
        method=request.method,
        status=0,
        headers={},
        url=str(request.url),
        at=time.monotonic(),
        error=error,
    )


def wants_body(response: httpx.Response, request: httpx.Request) -> bool:
    """Whether to read the body before asking :func:`needs_following` (core: may_need_body)."""
    content_type = response.headers.get("content-type", "")
    return may_need_body(request.method, response.status_code, content_type)


def needs_following(response: httpx.Response, request: httpx.Request, body: bytes = b"") -> bool:
    """The core's :func:`needs_polling`, asked of a response still unread (and streamable).

    ``httpx.Headers`` looks names up case-insensitively, so it stands in for
    the lower-cased copy :func:`observe` would make: most responses are
    passed through, and they should cost no copy.
    """
    return needs_polling(
        Observed(
            method=request.method,
            status=response.status_code,
            headers=response.headers,
            url=str(request.url),
            at=0.0,
            body=body,
        )
    )


class PollCookies:
    """The cookies a server sets while it is polled (session affinity), for the next polls.

    The transports sit below httpx's client, whose cookie jar never sees the
    polls; this jar does, and judges domain, path and expiry as the client's
    would. (Handles send through the client, whose own jar serves them.)
    """

    def __init__(self) -> None:
        self._jar = httpx.Cookies()

    def keep(self, response: httpx.Response, request: httpx.Request) -> None:
        if "set-cookie" in response.headers:
            response.request = request
            self._jar.extract_cookies(response)

    def field_for(self, url: httpx.URL) -> str | None:
        if not self._jar:
            return None
        probe = httpx.Request("GET", url)
        self._jar.set_cookie_header(probe)
        field: str | None = probe.headers.get("cookie")
        return field


def poll_request(
    original: httpx.Request, poll: Poll, cookies: PollCookies | None = None
) -> httpx.Request:
    """The GET for ``poll``, with the header fields the core gives it."""
    url = original.url.join(poll.url)
    kept = cookies.field_for(url) if cookies is not None else None
    headers = poll_headers(original.headers, str(original.url), poll, kept)
    extensions = {k: v for k, v in original.extensions.items() if k != HOPS_EXTENSION}
    with_poll_timeout(extensions, poll)
    return httpx.Request("GET", url, headers=headers, extensions=extensions)


def with_poll_timeout(extensions: dict[str, Any], poll: Poll) -> None:
    """Give a held poll the read timeout the core asks for (httpx's ``timeout`` extension)."""
    timeout = extensions.get("timeout")
    if poll.read_timeout is not None and isinstance(timeout, dict):
        extensions["timeout"] = {**timeout, "read": poll.read_timeout}


PollAuth = httpx.Auth | Callable[[httpx.Request], httpx.Request]


def as_auth(auth: PollAuth | None) -> httpx.Auth | None:
    """An ``httpx.Auth`` from what the transports accept: one, or a function of the request."""
    if auth is None or isinstance(auth, httpx.Auth):
        return auth
    return _FunctionAuth(auth)


class _FunctionAuth(httpx.Auth):
    def __init__(self, func: Callable[[httpx.Request], httpx.Request]) -> None:
        self._func = func

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        yield self._func(request)


def send_authenticated(
    inner: httpx.BaseTransport, request: httpx.Request, auth: httpx.Auth | None
) -> httpx.Response:
    """Send ``request``, through ``auth``'s flow when there is one (a refresh, a 401 retry)."""
    if auth is None:
        return inner.handle_request(request)
    flow = auth.sync_auth_flow(request)
    current = next(flow)
    while True:
        response = inner.handle_request(current)
        if auth.requires_response_body:
            response.read()
        try:
            current = flow.send(response)
        except StopIteration:
            return response
        response.read()
        response.close()


async def asend_authenticated(
    inner: httpx.AsyncBaseTransport, request: httpx.Request, auth: httpx.Auth | None
) -> httpx.Response:
    """The async twin of :func:`send_authenticated`."""
    if auth is None:
        return await inner.handle_async_request(request)
    flow = auth.async_auth_flow(request)
    current = await flow.__anext__()
    while True:
        response = await inner.handle_async_request(current)
        if auth.requires_response_body:
            await response.aread()
        try:
            current = await flow.asend(response)
        except StopAsyncIteration:
            return response
        await response.aread()
        await response.aclose()


class _Shell:
    """What both transports share: options, auth, the breaker, the first request."""

    def __init__(self, options: PollOptions | None, auth: PollAuth | None) -> None:
        self.options = options or PollOptions()
        self._first_headers = first_request_headers(self.options)
        self.auth = as_auth(auth)
        self.breaker = breaker_for(self.options.circuit_breaker)

    def deferred(
        self, request: httpx.Request, response: httpx.Response, body: bytes, trace: ClientTrace
    ) -> bool:
        """Whether ``response`` starts an operation to follow (and the trace says so)."""
        follow = needs_following(response, request, body)
        trace.started(response.status_code, deferred=follow)
        return follow

    def options_for(self, request: httpx.Request) -> PollOptions:
        per_request = request.extensions.get(OPTIONS_EXTENSION)
        return per_request if isinstance(per_request, PollOptions) else self.options

    def prepare(self, request: httpx.Request) -> bool:
        """Add the Prefer header; False when the request must pass through untouched."""
        extensions = request.extensions
        if extensions.get(PASSTHROUGH_EXTENSION):
            return False
        options = extensions.get(OPTIONS_EXTENSION)
        added = self._first_headers if options is None else first_request_headers(options)
        for name, value in added.items():
            if name not in request.headers:
                request.headers[name] = value
        return True

    def flow(self, request: httpx.Request, first: Observed, hops: list[Hop]) -> Flow:
        options = self.options_for(request)
        user_callback = options.on_progress

        def record(hop: Hop) -> None:
            hops.append(hop)
            if user_callback is not None:
                user_callback(hop)

        return poll_flow(
            first,
            replace(options, on_progress=record),
            wall_clock=time.time,
            read_timeout=read_timeout_of(request),
        )


def read_timeout_of(request: httpx.Request) -> float | None:
    """How long httpx will wait for this request's answer (its ``timeout`` extension)."""
    timeout = request.extensions.get("timeout")
    read = timeout.get("read") if isinstance(timeout, dict) else None
    return float(read) if isinstance(read, int | float) else None


class _Following:
    """One followed request: all of both transports' work but the I/O.

    The transports differ only in how they send a request and read its body
    (blocking or awaited); everything around that (the poll's fields and
    cookies, the breaker, the trace, the history) is decided here, once.
    """

    def __init__(
        self,
        shell: _Shell,
        request: httpx.Request,
        response: httpx.Response,
        body: bytes,
        trace: ClientTrace,
    ) -> None:
        self._shell = shell
        self._request = request
        self._trace = trace
        self.first = observe(response, request, body)
        self.history = [response]
        self.hops: list[Hop] = []
        self._cookies = PollCookies()
        self._cookies.keep(response, request)

    def flow(self) -> Flow:
        return self._shell.flow(self._request, self.first, self.hops)

    def poll_request(self, poll: Poll) -> tuple[httpx.Request, httpx.Auth | None] | Observed:
        """The GET to send and the auth to run for it; or, refused by the breaker, the answer."""
        request = poll_request(self._request, poll, self._cookies)
        url = str(request.url)
        if (no := refused(self._shell.breaker, url)) is not None:
            return no
        self._trace.poll(url, request.headers)
        same = carries_credentials(str(self._request.url), url)
        return request, self._shell.auth if same else None

    def failed(self, error: httpx.TransportError, request: httpx.Request) -> Observed:
        self._trace.polled(0, {}, error=error)
        return report(self._shell.breaker, observe_error(error, request))

    def answered(self, reply: httpx.Response, request: httpx.Request, body: bytes) -> Observed:
        self._trace.polled(reply.status_code, reply.headers)
        reply.request = request
        self._cookies.keep(reply, request)
        self.history.append(reply)
        return report(self._shell.breaker, observe(reply, request, body))

    def aborted(self, error: BaseException) -> None:
        self._trace.ended(None, error)

    def result(self) -> httpx.Response:
        final = self.history[-1]
        self._trace.ended(final.status_code)
        return finish(final, self.history, self.hops)


def finish(final: httpx.Response, history: list[httpx.Response], hops: list[Hop]) -> httpx.Response:
    """Mark the final response with the way it was reached.

    httpx's client owns ``response.history`` (its redirects) and resets it
    after the transport returns, so the polling responses travel in an
    extension instead.
    """
    earlier = history[:-1] if history and history[-1] is final else list(history)
    final.extensions = {**final.extensions, HOPS_EXTENSION: hops, HISTORY_EXTENSION: earlier}
    return final


class PollingTransport(httpx.BaseTransport):
    """An httpx transport that turns a deferred request into one ordinary call.

    ``httpx.Client(transport=repoll.PollingTransport())``: a polling response
    (303/202 with Location and Retry-After, or Operation-Status) is followed
    until the final response, which is returned for the original request.
    Other responses pass through untouched (still streamable). Per-request
    options: ``extensions={"repoll.options": PollOptions(...)}``. ``auth``
    (an ``httpx.Auth``, or a function that returns the request with its
    credentials) runs again for every poll to the original origin, so a
    token that expires during a long operation is refreshed; the client's
    own auth covers the first request, which goes through the client. The hops are
    in ``response.extensions["repoll.hops"]`` and the polling responses in
    ``response.extensions["repoll.history"]``.
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        options: PollOptions | None = None,
        sleep: Sleeper | None = None,
        auth: PollAuth | None = None,
    ) -> None:
        self._inner = transport or httpx.HTTPTransport()
        self._shell = _Shell(options, auth)
        self._sleep = sleep or _testing.sleep

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        shell = self._shell
        if not shell.prepare(request):
            return self._inner.handle_request(request)
        trace = telemetry.client_trace(request.method, str(request.url), request.headers)
        response = self._inner.handle_request(request)
        body = response.read() if wants_body(response, request) else b""
        if not shell.deferred(request, response, body, trace):
            return response  # untouched, still streamable unless its body decided
        following = _Following(shell, request, response, response.read(), trace)
        response.close()

        def send(poll: Poll) -> Observed:
            step = following.poll_request(poll)
            if isinstance(step, Observed):
                return step
            poll_req, auth = step
            try:
                reply = send_authenticated(self._inner, poll_req, auth)
                body = reply.read()
            except httpx.TransportError as exc:
                return following.failed(exc, poll_req)
            reply.close()
            return following.answered(reply, poll_req, body)

        try:
            drive(following.flow(), send, self._sleep)
        except BaseException as exc:
            following.aborted(exc)
            raise
        return following.result()

    def close(self) -> None:
        self._inner.close()


class AsyncPollingTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`PollingTransport`, driving the same flow.

    ``sleep`` is awaited between polls (default: :func:`asyncio.sleep`,
    skipped under ``repoll.testing()``).
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        options: PollOptions | None = None,
        sleep: AsyncSleeper | None = None,
        auth: PollAuth | None = None,
    ) -> None:
        self._inner = transport or httpx.AsyncHTTPTransport()
        self._shell = _Shell(options, auth)
        self._sleep = sleep or _testing.asleep

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        shell = self._shell
        if not shell.prepare(request):
            return await self._inner.handle_async_request(request)
        trace = telemetry.client_trace(request.method, str(request.url), request.headers)
        response = await self._inner.handle_async_request(request)
        body = await response.aread() if wants_body(response, request) else b""
        if not shell.deferred(request, response, body, trace):
            return response  # untouched, still streamable unless its body decided
        following = _Following(shell, request, response, await response.aread(), trace)
        await response.aclose()

        async def send(poll: Poll) -> Observed:
            step = following.poll_request(poll)
            if isinstance(step, Observed):
                return step
            poll_req, auth = step
            try:
                reply = await asend_authenticated(self._inner, poll_req, auth)
                body = await reply.aread()
            except httpx.TransportError as exc:
                return following.failed(exc, poll_req)
            await reply.aclose()
            return following.answered(reply, poll_req, body)

        try:
            await adrive(following.flow(), send, self._sleep)
        except BaseException as exc:
            following.aborted(exc)
            raise
        return following.result()

    async def aclose(self) -> None:
        await self._inner.aclose()
