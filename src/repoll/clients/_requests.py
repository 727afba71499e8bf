"""A requests transport adapter that follows the polling protocol (blocking use)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from .._errors import require

require("requests", "requests")

import requests  # noqa: E402 - after the extra check, for its clear message
from requests.adapters import HTTPAdapter  # noqa: E402

from ..core._poll import (  # noqa: E402
    Hop,
    Observed,
    Poll,
    PollOptions,
    first_request_headers,
    needs_polling,
    poll_flow,
    same_origin,
)
from ._runners import drive  # noqa: E402

_CREDENTIAL_HEADERS = ("Authorization", "Cookie", "Proxy-Authorization")


def _observe(response: requests.Response, method: str, url: str, body: bytes = b"") -> Observed:
    return Observed(
        method=method,
        status=response.status_code,
        headers={k.lower(): v for k, v in response.headers.items()},
        url=url,
        at=time.monotonic(),
        body=body,
    )


class PollingAdapter(HTTPAdapter):
    """Mount on a session to turn deferred requests into one ordinary call::

        session = requests.Session()
        adapter = repoll.PollingAdapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)

    The final response carries the polling responses in ``response.history``
    and the hops in ``response.repoll_hops``.
    """

    def __init__(self, *, options: PollOptions | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.options = options or PollOptions()

    def send(  # noqa: PLR0917 - requests' own signature
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        for name, value in first_request_headers(self.options).items():
            request.headers.setdefault(name, value)
        settings: dict[str, Any] = {
            "timeout": timeout,
            "verify": verify,
            "cert": cert,
            "proxies": proxies,
        }
        response = super().send(request, stream=stream, **settings)
        method, url = request.method or "GET", request.url or ""
        if not needs_polling(_observe(response, method, url)):
            return response
        first = _observe(response, method, url, response.content)
        history = [response]
        hops: list[Hop] = []
        user_callback = self.options.on_progress

        def record(hop: Hop) -> None:
            hops.append(hop)
            if user_callback is not None:
                user_callback(hop)

        def send_poll(poll: Poll) -> Observed:
            headers = dict(poll.headers)
            if same_origin(poll.url, url):
                for name in _CREDENTIAL_HEADERS:
                    if name in request.headers:
                        headers[name] = request.headers[name]
            prepared = requests.Request("GET", poll.url, headers=headers).prepare()
            try:
                reply = super(PollingAdapter, self).send(prepared, stream=False, **settings)
            except (requests.ConnectionError, requests.Timeout) as exc:
                return Observed(
                    method="GET", status=0, headers={}, url=poll.url, at=time.monotonic(), error=exc
                )
            history.append(reply)
            return _observe(reply, "GET", poll.url, reply.content)

        options = dataclasses.replace(self.options, on_progress=record)
        drive(poll_flow(first, options, wall_clock=time.time), send_poll)
        final = history[-1]
        final.history = history[:-1]
        final.repoll_hops = hops  # type: ignore[attr-defined]
        return final
