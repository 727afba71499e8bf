"""aiohttp: a client middleware that follows the polling protocol, a shell around ``poll_flow``.

``aiohttp.ClientSession(middlewares=(repoll.aiohttp_polling(),))``: like the
httpx transports, it decides nothing. The core says whether a response
needs polling, drives the polls and names each poll's header fields; this
module sends them with the session (without middlewares, so a poll is not
polled again) and hands aiohttp's responses back as
:class:`~repoll.core._poll.Observed`. The session's cookie jar keeps what a
server sets while it is polled; a poll to another origin (only when
``allow_cross_origin``) goes through a bare session that carries none of the
session's default headers or cookies.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from .. import _telemetry as telemetry
from .. import _testing
from .._errors import MissingExtraError
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
from ._runners import AsyncSleeper, adrive

try:
    import aiohttp
    from yarl import URL
except ModuleNotFoundError as exc:
    raise MissingExtraError("aiohttp", "aiohttp") from exc

HOPS_ATTRIBUTE = "repoll_hops"
HISTORY_ATTRIBUTE = "repoll_history"


def _observe(response: aiohttp.ClientResponse, method: str, url: str, body: bytes) -> Observed:
    return Observed(
        method=method,
        status=response.status,
        headers={k.lower(): v for k, v in response.headers.items()},
        url=url,
        at=time.monotonic(),
        body=body,
        raw=response,
    )


class AiohttpPolling:
    """An aiohttp client middleware: a deferred request becomes one ordinary call.

    Made by :func:`aiohttp_polling`. The final response carries the hops in
    ``response.repoll_hops`` and the polling responses in
    ``response.repoll_history``: ``response.history`` is aiohttp's, which it
    sets to its own redirects after the middlewares return.
    """

    def __init__(self, options: PollOptions | None, sleep: AsyncSleeper | None) -> None:
        self.options = options or PollOptions()
        self._first_headers = first_request_headers(self.options)
        self._sleep = sleep or _testing.asleep
        self._breaker = breaker_for(self.options.circuit_breaker)

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: Any
    ) -> aiohttp.ClientResponse:
        for name, value in self._first_headers.items():
            if name not in request.headers:
                request.headers[name] = value
        method, url = request.method, str(request.url)
        trace = telemetry.client_trace(method, url, request.headers)
        response: aiohttp.ClientResponse = await handler(request)
        content_type = response.headers.get("content-type", "")
        body = (
            await response.read() if may_need_body(method, response.status, content_type) else b""
        )
        deferred = needs_polling(_observe(response, method, url, body))
        trace.started(response.status, deferred=deferred)
        if not deferred:
            return response
        first = _observe(response, method, url, await response.read())
        session = request.session
        # What the server sets while it is polled (session affinity), for the
        # next polls, as the httpx transports keep it: aiohttp's session jar
        # refuses cookies from IP addresses by default, this one does not.
        jar = aiohttp.CookieJar(unsafe=True)
        jar.update_cookies(response.cookies, response.url)
        history: list[aiohttp.ClientResponse] = [response]
        hops: list[Hop] = []
        user_callback = self.options.on_progress

        def record(hop: Hop) -> None:
            hops.append(hop)
            if user_callback is not None:
                user_callback(hop)

        async def send(poll: Poll) -> Observed:
            if (no := refused(self._breaker, poll.url)) is not None:
                return no
            kept = "; ".join(f"{k}={m.value}" for k, m in jar.filter_cookies(URL(poll.url)).items())
            headers = poll_headers(request.headers, url, poll, kept or None)
            limits = session.timeout
            if poll.read_timeout is not None:  # a held poll: wait out its hold
                limits = aiohttp.ClientTimeout(
                    total=limits.total,
                    connect=limits.connect,
                    sock_connect=limits.sock_connect,
                    sock_read=poll.read_timeout,
                )
            same = carries_credentials(url, poll.url)
            trace.poll(poll.url, headers)
            try:
                reply = await _get(session, poll.url, headers, limits, same=same)
                reply_body = await reply.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                trace.polled(0, {}, error=exc)
                failed = Observed(
                    method="GET", status=0, headers={}, url=poll.url, at=time.monotonic(), error=exc
                )
                return report(self._breaker, failed)
            trace.polled(reply.status, reply.headers)
            history.append(reply)
            jar.update_cookies(reply.cookies, reply.url)
            return report(self._breaker, _observe(reply, "GET", poll.url, reply_body))

        flow = poll_flow(
            first,
            replace(self.options, on_progress=record),
            wall_clock=time.time,
            read_timeout=session.timeout.sock_read,
        )
        try:
            await adrive(flow, send, self._sleep)
        except BaseException as exc:
            trace.ended(None, exc)
            raise
        final = history[-1]
        trace.ended(final.status)
        setattr(final, HISTORY_ATTRIBUTE, history[:-1])
        setattr(final, HOPS_ATTRIBUTE, hops)
        return final


async def _get(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    limits: aiohttp.ClientTimeout,
    *,
    same: bool,
) -> aiohttp.ClientResponse:
    options: dict[str, Any] = {"allow_redirects": False, "raise_for_status": False}
    if same:
        return await session.request(
            "GET", url, headers=headers, timeout=limits, middlewares=(), **options
        )
    # Another origin: none of the session's default headers or cookies go.
    async with aiohttp.ClientSession(
        connector=session.connector,
        connector_owner=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as bare:
        reply = await bare.request("GET", url, headers=headers, timeout=limits, **options)
        await reply.read()
        return reply


def aiohttp_polling(
    options: PollOptions | None = None, *, sleep: AsyncSleeper | None = None
) -> AiohttpPolling:
    """The middleware for ``aiohttp.ClientSession(middlewares=(...,))`` (aiohttp 3.12 or newer).

    ``sleep`` is awaited between polls (default: :func:`asyncio.sleep`,
    skipped under ``repoll.testing()``).
    """
    return AiohttpPolling(options, sleep)
