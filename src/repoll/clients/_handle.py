"""Operation handles: start work without waiting, poll, wait, cancel, resume from a URL.

A handle needs nothing but its URL: ``OperationHandle.resume(client, url)`` in
another process picks up where the first left off. Nothing is pickled; the
URL is the resume token. Handles send their requests through the given
client (its auth, cookies, timeouts and base URL apply) with the
``repoll.passthrough`` extension, so a client built on a polling transport
does not block them.

Each method is written once, as a generator that yields what to send (or how
long to sleep) and receives the response, like httpx's ``Auth.auth_flow``;
:class:`OperationHandle` and :class:`AsyncOperationHandle` only drive it.

Every request to the operation (a poll, a status check, a cancel) carries the
header fields the core names (:func:`~repoll.core._poll.poll_headers`), read
from the request that started the operation as the client would build it
now: the client's headers and its current cookies, with the ``headers=``
given to :meth:`OperationHandle.start`. So a handle polls with the same
fields as the transports, and cookies the server set meanwhile still go. The
client's ``auth`` goes where the core sends credentials, and nowhere else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Generator
from typing import Any, TypeVar

from .. import _testing
from .._errors import (
    MissingExtraError,
    OperationCanceled,
    OperationExpired,
    OperationFailed,
    OperationNotFound,
)
from ..core import _headers as h
from ..core import _monitors as monitors
from ..core._poll import (
    Observed,
    Poll,
    PollOptions,
    Sleep,
    carries_credentials,
    hop_of,
    is_polling_response,
    monitor_of,
    needs_polling,
    operation_url_of,
    poll_flow,
    poll_headers,
)
from ..core._status import OperationStatus
from ._breakers import client_breaker, refused, report
from ._runners import AsyncSleeper, Sleeper, adrive, drive

try:
    import httpx
except ModuleNotFoundError as exc:
    raise MissingExtraError("client", "httpx") from exc

from ._httpx import PASSTHROUGH_EXTENSION, observe, observe_error, with_poll_timeout

T = TypeVar("T")
_PASSTHROUGH = {PASSTHROUGH_EXTENSION: True}


@dataclasses.dataclass(frozen=True, slots=True)
class _Send:
    """Send ``request``; with ``tolerant``, a transport error comes back instead of raising."""

    request: httpx.Request
    auth: Any = httpx.USE_CLIENT_DEFAULT
    tolerant: bool = False


Reply = httpx.Response | httpx.TransportError | None
Steps = Generator[_Send | Sleep, Reply, T]


class _Handle:
    """The state of one operation and the flows that move it; no I/O."""

    def __init__(
        self, client: httpx.Client | httpx.AsyncClient, url: str, options: PollOptions | None
    ) -> None:
        self._client = client
        self.url = str(client.build_request("GET", url).url)
        self.options = options or PollOptions()
        self.status: OperationStatus | None = None
        self.progress: float | None = None
        self.message: str | None = None
        self.response: httpx.Response | None = None  # the last response seen
        self.done = False
        self._last: Observed | None = None
        self._origin = self.url
        self._headers: Any = None  # the headers= of the request that started it
        # The response that started the operation, when this handle saw it (or,
        # resumed on a status monitor, one standing for it): the flow starts
        # from it, so a handle decides as the transports do.
        self._first: Observed | None = None
        self._monitor = False  # another convention's status monitor (core._monitors)

    def __repr__(self) -> str:
        status = self.status.value if self.status else "unknown"
        return f"<{type(self).__name__} {self.url} {status}>"

    # --- reading responses ------------------------------------------------------

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
        if self._monitor:
            # A monitor's answer only says where the operation is; the flow
            # (wait) fetches the result and says when it is done.
            state = monitors.monitor_answer(observed)
            if state is not None:
                self.status = OperationStatus(monitors.handle_state(state))
            return
        if is_polling_response(observed):
            self.url = str(httpx.URL(observed.url).join(observed.headers["location"]))
            self.done = False
        else:
            self.done = True
            if self.status is OperationStatus.SUCCEEDED:
                self.progress = 1.0

    def _ended(self, response: httpx.Response, status: OperationStatus) -> None:
        self.response = response
        self.status = status
        self.done = True
        if status is OperationStatus.SUCCEEDED:
            self.progress = 1.0

    def _follow(self, first: Observed) -> None:
        """The operation ``first`` started: where it lives and which convention it keeps."""
        self._first = first
        self._monitor = monitor_of(first) is not None
        self.url = operation_url_of(first)
        self.done = False
        if self._monitor:
            self.status = OperationStatus.RUNNING

    def _outcome(self) -> httpx.Response:
        """The final response, or the exception that its outcome calls for."""
        response = self.response
        assert response is not None
        url = self.url
        failed = self.status in (OperationStatus.FAILED, OperationStatus.CANCELED)
        if failed and self.options.return_failed:
            return response
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

    # --- flows --------------------------------------------------------------------

    def _send_step(self, method: str, poll: Poll, *, tolerant: bool = False) -> _Send:
        """``poll`` as an httpx request, with the fields and credentials the core gives it."""
        original = self._client.build_request("GET", self._origin, headers=self._headers)
        url = original.url.join(poll.url)
        request = httpx.Request(
            method,
            url,
            headers=poll_headers(original.headers, str(original.url), poll),
            extensions={**original.extensions, **_PASSTHROUGH},
        )
        with_poll_timeout(request.extensions, poll)
        credentials = carries_credentials(str(original.url), str(url))
        auth: Any = httpx.USE_CLIENT_DEFAULT if credentials else None
        return _Send(request, auth, tolerant=tolerant)

    def _status_step(self, method: str) -> _Send:
        prefer = h.format_prefer(respond_async=True, wait=0) or ""
        poll = Poll(self.url, {h.PREFER: prefer}, credential_fields=self.options.credential_fields)
        return self._send_step(method, poll)

    def _start_flow(self, method: str, url: str, request: dict[str, Any]) -> Steps[None]:
        self._headers = request.get("headers")
        built = self._client.build_request(method, url, **request)
        built.headers.setdefault(h.PREFER, "respond-async")
        built.extensions.update(_PASSTHROUGH)
        response = yield _Send(built)
        assert isinstance(response, httpx.Response)
        observed = observe(response, built, response.content)
        self._origin = str(built.url)
        if needs_polling(observed):
            self.response, self._last = response, observed
            self._absorb(response, observed)
            self._follow(observed)
            return
        self._absorb(response, observed)
        location = response.headers.get("content-location", self.url)
        self.url = str(built.url.join(location))

    def _poll_flow(self) -> Steps[OperationStatus | None]:
        if self.done:
            return self.status
        step = self._status_step("GET")
        response = yield step
        assert isinstance(response, httpx.Response)
        self._absorb(response, observe(response, step.request, response.content))
        return self.status

    def _wait_flow(self, timeout: float | None) -> Steps[httpx.Response]:
        if self._last is None:
            yield from self._poll_flow()
            self._resumed_on_monitor()
        if not self.done:
            assert self._last is not None
            options = dataclasses.replace(self.options, return_failed=False)
            if timeout is not None:
                options = dataclasses.replace(options, deadline=timeout)
            # Another convention's flow starts from the response that started
            # the operation (it decides where the result is); repoll's from the
            # last answer. The deadline counts from now either way.
            start = self._first if self._monitor and self._first is not None else self._last
            first = dataclasses.replace(start, at=time.monotonic())
            flow = poll_flow(
                first, options, wall_clock=time.time, read_timeout=self._client.timeout.read
            )
            try:
                yield from self._drive_flow(flow)
            except (OperationFailed, OperationCanceled) as ended:
                # The handle's way: wait() ends, result() raises (_outcome).
                failed = isinstance(ended, OperationFailed)
                status = OperationStatus.FAILED if failed else OperationStatus.CANCELED
                if isinstance(ended.response, httpx.Response):
                    self._ended(ended.response, status)
                else:  # pragma: no cover - the flow always carries the response
                    raise
        assert self.response is not None
        return self.response

    def _resumed_on_monitor(self) -> None:
        """A handle resumed on a URL whose answer is a status monitor's: follow it as one."""
        last = self._last
        if (
            self._first is None
            and last is not None
            and monitors.recognised_monitor(last) is not None
        ):
            # The response that named this monitor is gone: one that names it
            # stands in (its result is the monitor's resourceLocation, if any).
            standing = Observed(
                status=202,
                headers={"operation-location": last.url},
                url=last.url,
                at=last.at,
                method="GET",
            )
            self._follow(standing)
            self._absorb(self.response, last)  # type: ignore[arg-type]

    def _drive_flow(self, flow: Any) -> Steps[None]:
        """Carry out the core's flow with this handle's requests, absorbing every answer."""
        breaker = client_breaker(self._client, self.options.circuit_breaker)
        try:
            action = next(flow)
            while True:
                if isinstance(action, Sleep):
                    yield action
                    action = flow.send(None)
                    continue
                step = self._send_step("GET", action, tolerant=True)
                if (no := refused(breaker, str(step.request.url))) is not None:
                    action = flow.send(no)
                    continue
                reply = yield step
                if isinstance(reply, httpx.TransportError):
                    action = flow.send(report(breaker, observe_error(reply, step.request)))
                    continue
                assert isinstance(reply, httpx.Response)
                observed = report(breaker, observe(reply, step.request, reply.content))
                self._absorb(reply, observed)
                action = flow.send(observed)
        except StopIteration as stop:
            final: Observed = stop.value
            if isinstance(final.raw, httpx.Response) and self._monitor:
                self._ended(final.raw, OperationStatus.SUCCEEDED)
            elif isinstance(final.raw, httpx.Response):
                self._absorb(final.raw, final)

    def _cancel_flow(self) -> Steps[OperationStatus | None]:
        step = self._status_step("DELETE")
        response = yield step
        assert isinstance(response, httpx.Response)
        if response.status_code in (200, 202):
            value = response.headers.get(h.OPERATION_STATUS)
            self.status = OperationStatus(value) if value else self.status
            self._last = None  # the next wait() polls afresh
            self.done = False
        else:
            self._absorb(response, observe(response, step.request, response.content))
        return self.status


class OperationHandle(_Handle):
    """A deferred request you poll yourself (blocking). See :meth:`start` and :meth:`resume`."""

    _client: httpx.Client

    def __init__(
        self,
        client: httpx.Client,
        url: str,
        *,
        options: PollOptions | None = None,
        sleep: Sleeper | None = None,
    ) -> None:
        super().__init__(client, url, options)
        self._sleep = sleep or _testing.sleep

    def _send(self, step: _Send) -> Reply:
        try:
            return self._client.send(step.request, auth=step.auth)
        except httpx.TransportError as exc:
            if not step.tolerant:
                raise
            return exc

    def _drive(self, steps: Steps[T]) -> T:
        return drive(steps, self._send, self._sleep)

    @classmethod
    def start(
        cls,
        client: httpx.Client,
        method: str,
        url: str,
        *,
        options: PollOptions | None = None,
        sleep: Sleeper | None = None,
        **request: Any,
    ) -> OperationHandle:
        """Send the request and return at once with a handle on its operation.

        ``request`` takes :meth:`httpx.Client.build_request`'s arguments
        (``json=``, ``content=``, ``params=``, ``headers=``, ...). If the server
        answered without deferring, the handle is already done. ``sleep``
        waits between polls (default: :func:`time.sleep`, skipped under
        ``repoll.testing()``).
        """
        handle = cls(client, url, options=options, sleep=sleep)
        handle._drive(handle._start_flow(method, url, request))
        return handle

    @classmethod
    def resume(
        cls,
        client: httpx.Client,
        url: str,
        *,
        options: PollOptions | None = None,
        sleep: Sleeper | None = None,
    ) -> OperationHandle:
        """A handle on the operation at ``url`` (no request is sent yet)."""
        return cls(client, url, options=options, sleep=sleep)

    def poll(self) -> OperationStatus | None:
        """Ask once, without waiting, and return the status."""
        return self._drive(self._poll_flow())

    def wait(self, timeout: float | None = None) -> httpx.Response:
        """Poll until the operation ends (``PollingTimeout`` after ``timeout`` s)."""
        return self._drive(self._wait_flow(timeout))

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
        return self._drive(self._cancel_flow())


class AsyncOperationHandle(_Handle):
    """The async twin of :class:`OperationHandle`: the same flows, driven on an event loop."""

    _client: httpx.AsyncClient

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        options: PollOptions | None = None,
        sleep: AsyncSleeper | None = None,
    ) -> None:
        super().__init__(client, url, options)
        self._sleep = sleep or _testing.asleep

    async def _send(self, step: _Send) -> Reply:
        try:
            return await self._client.send(step.request, auth=step.auth)
        except httpx.TransportError as exc:
            if not step.tolerant:
                raise
            return exc

    async def _drive(self, steps: Steps[T]) -> T:
        return await adrive(steps, self._send, self._sleep)

    @classmethod
    async def start(
        cls,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        *,
        options: PollOptions | None = None,
        sleep: AsyncSleeper | None = None,
        **request: Any,
    ) -> AsyncOperationHandle:
        """Send the request and return at once with a handle on its operation."""
        handle = cls(client, url, options=options, sleep=sleep)
        await handle._drive(handle._start_flow(method, url, request))
        return handle

    @classmethod
    def resume(
        cls,
        client: httpx.AsyncClient,
        url: str,
        *,
        options: PollOptions | None = None,
        sleep: AsyncSleeper | None = None,
    ) -> AsyncOperationHandle:
        """A handle on the operation at ``url`` (no request is sent yet)."""
        return cls(client, url, options=options, sleep=sleep)

    async def poll(self) -> OperationStatus | None:
        """Ask once, without waiting, and return the status."""
        return await self._drive(self._poll_flow())

    async def wait(self, timeout: float | None = None) -> httpx.Response:  # noqa: ASYNC109 - the sync handle's API
        """Poll until the operation ends (``PollingTimeout`` after ``timeout`` s)."""
        return await self._drive(self._wait_flow(timeout))

    async def result(self, timeout: float | None = None) -> httpx.Response:  # noqa: ASYNC109
        """Wait, then return the final response, or raise if the operation failed."""
        await self.wait(timeout)
        return self._outcome()

    async def cancel(self) -> OperationStatus | None:
        """Ask the server to cancel (``DELETE``); returns the status it reports."""
        return await self._drive(self._cancel_flow())
