"""A requests transport adapter that follows the polling protocol (blocking use).

Like the httpx transports, the adapter decides nothing: the core says whether
a response needs polling, drives the polls, and names each poll's header
fields (:func:`~repoll.core._poll.poll_headers`, from the original prepared
request's, which the session has already merged its headers and cookies
into); the adapter sends them with requests and reports what came back.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

from .. import _telemetry as telemetry
from .. import _testing
from .._errors import MissingExtraError
from ..core import _poll as flow
from ._breakers import breaker_for, refused, report
from ._runners import Sleeper, drive

try:
    import requests
    import requests.cookies
    from requests.adapters import HTTPAdapter
except ModuleNotFoundError as exc:
    raise MissingExtraError("requests", "requests") from exc


def _observe(
    response: requests.Response, method: str, url: str, body: bytes = b""
) -> flow.Observed:
    return flow.Observed(
        method=method,
        status=response.status_code,
        headers={k.lower(): v for k, v in response.headers.items()},
        url=url,
        at=time.monotonic(),
        body=body,
        raw=response,
    )


class PollingAdapter(HTTPAdapter):
    """Mount on a session to turn deferred requests into one ordinary call::

        session = requests.Session()
        adapter = repoll.PollingAdapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)

    The final response carries the polling responses in ``response.history``
    and the hops in ``response.repoll_hops``. ``sleep`` waits between polls
    (default: :func:`time.sleep`, skipped under ``repoll.testing()``).
    ``auth`` (a requests auth: a callable that takes and returns the prepared
    request) runs again for every poll to the original origin, so a token
    that expires during a long operation is refreshed; the session's own
    auth covers the first request.
    """

    def __init__(
        self,
        *,
        options: flow.PollOptions | None = None,
        sleep: Sleeper | None = None,
        auth: Callable[[requests.PreparedRequest], requests.PreparedRequest] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.options = options or flow.PollOptions()
        self._sleep = sleep or _testing.sleep
        self._auth = auth
        self._breaker = breaker_for(self.options.circuit_breaker)

    def _poll_request(
        self,
        original: requests.PreparedRequest,
        poll: flow.Poll,
        jar: requests.cookies.RequestsCookieJar,
    ) -> requests.PreparedRequest:
        """The GET for ``poll``: the core's header fields, the jar's cookies, ``auth`` if due."""
        url = original.url or ""
        bare = requests.Request("GET", poll.url).prepare()
        cookies: str | None = requests.cookies.get_cookie_header(jar, bare)  # type: ignore[no-untyped-call]
        headers = flow.poll_headers(original.headers, url, poll, cookies)
        prepared = requests.Request("GET", poll.url, headers=headers).prepare()
        if self._auth is not None and flow.carries_credentials(url, poll.url):
            prepared = self._auth(prepared)
        return prepared

    def send(  # noqa: PLR0917 - requests' own signature
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        for name, value in flow.first_request_headers(self.options).items():
            request.headers.setdefault(name, value)
        settings: dict[str, Any] = {
            "timeout": timeout,
            "verify": verify,
            "cert": cert,
            "proxies": proxies,
        }
        method, url = request.method or "GET", request.url or ""
        trace = telemetry.client_trace(method, url, request.headers)
        response = super().send(request, stream=stream, **settings)
        content_type = response.headers.get("content-type", "")
        body = (
            response.content
            if flow.may_need_body(method, response.status_code, content_type)
            else b""
        )
        deferred = flow.needs_polling(_observe(response, method, url, body))
        trace.started(response.status_code, deferred=deferred)
        if not deferred:
            return response
        first = _observe(response, method, url, response.content)
        jar = requests.cookies.RequestsCookieJar()  # what the server sets while polled
        jar.update(response.cookies)
        history = [response]
        hops: list[flow.Hop] = []
        user_callback = self.options.on_progress

        def record(hop: flow.Hop) -> None:
            hops.append(hop)
            if user_callback is not None:
                user_callback(hop)

        def send_poll(poll: flow.Poll) -> flow.Observed:
            prepared = self._poll_request(request, poll, jar)
            timeout = settings["timeout"]
            if poll.read_timeout is not None:  # a held poll: wait out its hold
                connect = timeout[0] if isinstance(timeout, tuple) else timeout
                timeout = (connect, poll.read_timeout)
            if (no := refused(self._breaker, poll.url)) is not None:
                return no
            trace.poll(poll.url, prepared.headers)
            try:
                reply = super(PollingAdapter, self).send(
                    prepared, stream=False, **{**settings, "timeout": timeout}
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                trace.polled(0, {}, error=exc)
                failed = flow.Observed(
                    method="GET", status=0, headers={}, url=poll.url, at=time.monotonic(), error=exc
                )
                return report(self._breaker, failed)
            trace.polled(reply.status_code, reply.headers)
            history.append(reply)
            jar.update(reply.cookies)
            return report(self._breaker, _observe(reply, "GET", poll.url, reply.content))

        options = dataclasses.replace(self.options, on_progress=record)
        steps = flow.poll_flow(
            first, options, wall_clock=time.time, read_timeout=_read_timeout(timeout)
        )
        try:
            drive(steps, send_poll, self._sleep)
        except BaseException as exc:
            trace.ended(None, exc)
            raise
        final = history[-1]
        trace.ended(final.status_code)
        final.history = history[:-1]
        final.repoll_hops = hops  # type: ignore[attr-defined]
        return final


def _read_timeout(timeout: Any) -> float | None:
    """The read timeout in requests' ``timeout`` (a number, or (connect, read))."""
    if isinstance(timeout, tuple):
        timeout = timeout[1] if len(timeout) == 2 else None
    return float(timeout) if isinstance(timeout, int | float) else None
