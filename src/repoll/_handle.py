"""Operation handles: start work without waiting, poll, wait, cancel, resume from a URL.

A handle needs nothing but its URL: ``OperationHandle.resume(client, url)`` in
another process picks up where the first left off. Nothing is pickled; the
URL is the resume token. Handles send their requests through the given
client (its auth, cookies, timeouts and base URL apply) with the
``repoll.passthrough`` extension, so a client built on a polling transport
does not block them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

from ._errors import require

require("httpx", "client")

import httpx  # noqa: E402 - after the extra check, for its clear message

from . import _headers as h  # noqa: E402
from ._errors import (  # noqa: E402
    OperationCanceled,
    OperationExpired,
    OperationFailed,
    OperationNotFound,
)
from ._httpx import CREDENTIAL_HEADERS, PASSTHROUGH_EXTENSION, observe, observe_error  # noqa: E402
from ._poll import (  # noqa: E402
    Observed,
    Poll,
    PollOptions,
    hop_of,
    is_polling_response,
    poll_flow,
    same_origin,
)
from ._runners import Flow, adrive, drive  # noqa: E402
from ._status import OperationStatus  # noqa: E402

_PASSTHROUGH = {PASSTHROUGH_EXTENSION: True}


class _HandleState:
    """What sync and async handles share: the state, and reading responses into it."""

    def __init__(self, url: str, options: PollOptions | None) -> None:
        self.url = url
        self.options = options or PollOptions()
        self.status: OperationStatus | None = None
        self.progress: float | None = None
        self.message: str | None = None
        self.response: httpx.Response | None = None  # the last response seen
        self.done = False
        self._last: Observed | None = None
        self._origin = url

    def __repr__(self) -> str:
        status = self.status.value if self.status else "unknown"
        return f"<{type(self).__name__} {self.url} {status}>"

    def _absorb(self, response: httpx.Response, observed: Observed) -> None:
        self.response = response
        self._last = observed
        value = observed.headers.get(h.OPERATION_STATUS)
        with contextlib.suppress(ValueError):  # an unknown status leaves ours as it was
            self.status = OperationStatus(value) if value else self.status
        hop = hop_of(observed, wall_now=time.time())
        if hop.progress is not None:
            self.progress = hop.progress
        if hop.message is not None:
            self.message = hop.message
        if is_polling_response(observed):
            self.url = str(httpx.URL(observed.url).join(observed.headers["location"]))
            self.done = False
        else:
            self.done = True
            if self.status is OperationStatus.SUCCEEDED:
                self.progress = 1.0

    def _poll_request(self, client: httpx.Client | httpx.AsyncClient, poll: Poll) -> httpx.Request:
        request = client.build_request("GET", poll.url, headers=dict(poll.headers))
        if not same_origin(str(request.url), self._origin):
            for name in CREDENTIAL_HEADERS:  # defence in depth: the flow refuses by default
                request.headers.pop(name, None)
        request.extensions.update(_PASSTHROUGH)
        return request

    def _status_request(
        self, client: httpx.Client | httpx.AsyncClient, method: str
    ) -> httpx.Request:
        prefer = h.format_prefer(respond_async=True, wait=0)
        request = client.build_request(method, self.url, headers={h.PREFER: prefer or ""})
        request.extensions.update(_PASSTHROUGH)
        return request

    def _flow(self, timeout: float | None) -> Flow:
        assert self._last is not None
        options = self.options
        if timeout is not None:
            options = dataclasses.replace(options, deadline=timeout)
        # The deadline counts from now, not from when the last response came.
        first = dataclasses.replace(self._last, at=time.monotonic())
        return poll_flow(first, options, wall_clock=time.time)

    def _auth_for(
        self, request: httpx.Request
    ) -> httpx.Auth | httpx._client.UseClientDefault | None:
        # The client's auth goes only to the operation's own origin.
        if same_origin(str(request.url), self._origin):
            return httpx.USE_CLIENT_DEFAULT
        return None

    def _outcome(self) -> httpx.Response:
        """The final response, or the exception that its outcome calls for."""
        response = self.response
        assert response is not None
        url = self.url
        if self.status is OperationStatus.CANCELED:
            msg = f"the operation {url} was canceled"
            raise OperationCanceled(msg, operation_url=url)
        if self.status is OperationStatus.FAILED:
            msg = f"the operation {url} failed with {response.status_code}: {response.text[:200]}"
            raise OperationFailed(msg, operation_url=url)
        if h.OPERATION_STATUS not in response.headers:
            if response.status_code == 404:
                msg = f"no such operation: {url}"
                raise OperationNotFound(msg, operation_url=url)
            if response.status_code == 410:
                msg = f"the operation {url} expired; its outcome is no longer kept"
                raise OperationExpired(msg, operation_url=url)
        return response


class OperationHandle(_HandleState):
    """A deferred request you poll yourself (blocking). See :meth:`start` and :meth:`resume`."""

    def __init__(
        self, client: httpx.Client, url: str, *, options: PollOptions | None = None
    ) -> None:
        super().__init__(str(client.build_request("GET", url).url), options)
        self._client = client

    @classmethod
    def start(
        cls,
        client: httpx.Client,
        method: str,
        url: str,
        *,
        options: PollOptions | None = None,
        **request: object,
    ) -> OperationHandle:
        """Send the request and return at once with a handle on its operation.

        ``request`` takes :meth:`httpx.Client.build_request`'s arguments
        (``json=``, ``content=``, ``headers=``, ...). If the server answered
        without deferring, the handle is already done.
        """
        built = client.build_request(method, url, **request)  # type: ignore[arg-type]
        built.headers.setdefault(h.PREFER, "respond-async")
        built.extensions.update(_PASSTHROUGH)
        handle = cls(client, str(built.url), options=options)
        response = client.send(built)
        handle._absorb(response, observe(response, built, response.content))
        if handle.done:
            handle.url = str(built.url.join(response.headers.get("content-location", handle.url)))
        return handle

    @classmethod
    def resume(
        cls, client: httpx.Client, url: str, *, options: PollOptions | None = None
    ) -> OperationHandle:
        """A handle on the operation at ``url`` (no request is sent yet)."""
        return cls(client, url, options=options)

    def poll(self) -> OperationStatus | None:
        """Ask once, without waiting, and return the status."""
        if self.done:
            return self.status
        request = self._status_request(self._client, "GET")
        response = self._client.send(request)
        self._absorb(response, observe(response, request, response.content))
        return self.status

    def wait(self, timeout: float | None = None) -> httpx.Response:
        """Poll until the operation ends (``PollingTimeout`` after ``timeout`` s)."""
        if self._last is None:
            self.poll()
        if self.done:
            assert self.response is not None
            return self.response

        def send(poll: Poll) -> Observed:
            request = self._poll_request(self._client, poll)
            try:
                response = self._client.send(request, auth=self._auth_for(request))
            except httpx.TransportError as exc:
                return observe_error(exc, request)
            observed = observe(response, request, response.content)
            self._absorb(response, observed)
            return observed

        drive(self._flow(timeout), send)
        assert self.response is not None
        return self.response

    def result(self, timeout: float | None = None) -> httpx.Response:
        """Wait, then return the final response, or raise if the operation failed.

        Raises :class:`OperationFailed`, :class:`OperationCanceled`,
        :class:`OperationNotFound`, :class:`OperationExpired` or
        :class:`PollingTimeout`.
        """
        self.wait(timeout)
        return self._outcome()

    def cancel(self) -> OperationStatus | None:
        """Ask the server to cancel (``DELETE``); returns the status it reports."""
        request = self._status_request(self._client, "DELETE")
        response = self._client.send(request)
        if response.status_code in (200, 202):
            value = response.headers.get(h.OPERATION_STATUS)
            self.status = OperationStatus(value) if value else self.status
            self._last = None  # the next wait() polls afresh
            self.done = False
        else:
            self._absorb(response, observe(response, request, response.content))
        return self.status


class AsyncOperationHandle(_HandleState):
    """The async twin of :class:`OperationHandle`."""

    def __init__(
        self, client: httpx.AsyncClient, url: str, *, options: PollOptions | None = None
    ) -> None:
        super().__init__(str(client.build_request("GET", url).url), options)
        self._client = client

    @classmethod
    async def start(
        cls,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        *,
        options: PollOptions | None = None,
        **request: object,
    ) -> AsyncOperationHandle:
        """Send the request and return at once with a handle on its operation."""
        built = client.build_request(method, url, **request)  # type: ignore[arg-type]
        built.headers.setdefault(h.PREFER, "respond-async")
        built.extensions.update(_PASSTHROUGH)
        handle = cls(client, str(built.url), options=options)
        response = await client.send(built)
        handle._absorb(response, observe(response, built, response.content))
        if handle.done:
            handle.url = str(built.url.join(response.headers.get("content-location", handle.url)))
        return handle

    @classmethod
    def resume(
        cls, client: httpx.AsyncClient, url: str, *, options: PollOptions | None = None
    ) -> AsyncOperationHandle:
        """A handle on the operation at ``url`` (no request is sent yet)."""
        return cls(client, url, options=options)

    async def poll(self) -> OperationStatus | None:
        """Ask once, without waiting, and return the status."""
        if self.done:
            return self.status
        request = self._status_request(self._client, "GET")
        response = await self._client.send(request)
        self._absorb(response, observe(response, request, response.content))
        return self.status

    async def wait(self, timeout: float | None = None) -> httpx.Response:  # noqa: ASYNC109 - the same API as the sync handle
        """Poll until the operation ends (``PollingTimeout`` after ``timeout`` s)."""
        if self._last is None:
            await self.poll()
        if self.done:
            assert self.response is not None
            return self.response

        async def send(poll: Poll) -> Observed:
            request = self._poll_request(self._client, poll)
            try:
                response = await self._client.send(request, auth=self._auth_for(request))
            except httpx.TransportError as exc:
                return observe_error(exc, request)
            observed = observe(response, request, response.content)
            self._absorb(response, observed)
            return observed

        await adrive(self._flow(timeout), send)
        assert self.response is not None
        return self.response

    async def result(self, timeout: float | None = None) -> httpx.Response:  # noqa: ASYNC109
        """Wait, then return the final response, or raise if the operation failed."""
        await self.wait(timeout)
        return self._outcome()

    async def cancel(self) -> OperationStatus | None:
        """Ask the server to cancel (``DELETE``); returns the status it reports."""
        request = self._status_request(self._client, "DELETE")
        response = await self._client.send(request)
        if response.status_code in (200, 202):
            value = response.headers.get(h.OPERATION_STATUS)
            self.status = OperationStatus(value) if value else self.status
            self._last = None
            self.done = False
        else:
            self._absorb(response, observe(response, request, response.content))
        return self.status
