"""The ASGI shell: operation URLs, deferrable requests, and everything else untouched.

:class:`PollingMiddleware` sorts each HTTP request by path and method before
doing anything else:

* under ``operations_path``: a status poll, a cancellation, an event stream,
  a CORS preflight or the browser module, answered by the server engine;
* a request that may reach a deferrable endpoint (per the app's routes when
  ``install`` gave them, else every request): run through
  :class:`~repoll.server._deferral.DeferrableRequest`;
* anything else: passed to the app as it came, at no cost.

What a request on an operation URL asks for, what a stream sends, whether a
declared body is too large and how long a start waits are decided by the
core (``_replies``, ``_pacing``); this module reads the scope and sends.

Every request that waits (a held poll, a start with ``Prefer: wait``, a
cancellation waiting for the work to stop, an event stream) watches its
client, and stops waiting the moment the client leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.resources
import logging
import time
from collections.abc import Callable
from typing import Any

from .. import _telemetry as telemetry
from .._errors import StoreUnavailable
from ..core import _replies as replies
from ..core import _stream as stream
from ..core._headers import PREFER, Preferences, parse_prefer
from ..core._model import Operation
from ..core._pacing import hold_seconds
from . import _answers as answers
from ._deferral import DeferrableRequest, DeferralAborted, RunningOperation, send_reply
from ._engine import PollingServer
from ._routes import ALWAYS, MAYBE, NEVER, RouteTable
from ._scope import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    first_header,
    until_disconnect,
)

logger = logging.getLogger("repoll")

CLIENT_MODULE = "client.js"


@functools.cache
def _client_module_reply() -> replies.Reply:
    source = importlib.resources.files("repoll.server").joinpath("static/repoll.js").read_bytes()
    return replies.client_module(source)


@contextlib.asynccontextmanager
async def _watching(receive: Receive) -> Any:
    """A task that completes when the client disconnects; cancelled on exit."""
    watcher = asyncio.get_running_loop().create_task(until_disconnect(receive))
    try:
        yield watcher
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


_PREFER = PREFER.encode()
_NO_PREFERENCES = parse_prefer(())
# Parsed Prefer values: a client repeats its own on every poll. Bounded, and
# emptied when full, so that a flood of distinct values costs what parsing does.
_parsed_prefer: dict[bytes, Preferences] = {}
_PARSED_PREFER_MAX = 256


def _preferences(scope: Scope) -> Preferences:
    values = [value for name, value in scope.get("headers", ()) if name == _PREFER]
    if not values:
        return _NO_PREFERENCES
    if len(values) > 1:
        return parse_prefer(value.decode("latin-1") for value in values)
    value = values[0]
    parsed = _parsed_prefer.get(value)
    if parsed is None:
        parsed = parse_prefer((value.decode("latin-1"),))
        if len(value) <= 256:  # the long ones are no client's usual value
            if len(_parsed_prefer) >= _PARSED_PREFER_MAX:
                _parsed_prefer.clear()
            _parsed_prefer[value] = parsed
    return parsed


class PollingMiddleware:
    """ASGI middleware that makes endpoints deferrable and serves operation URLs.

    ``PollingMiddleware(app, server=PollingServer(...))``, or pass the
    :class:`PollingServer` options as keyword arguments. ``routes`` is an
    app with Starlette routes (``repoll.install`` passes the app itself):
    only requests that match a deferrable route go through the deferral
    machinery. Without it, every request may defer.
    """

    def __init__(
        self,
        app: ASGIApp,
        server: PollingServer | None = None,
        *,
        routes: Any = None,
        **options: Any,
    ) -> None:
        if server is not None and options:
            msg = "pass either server= or PollingServer options, not both"
            raise TypeError(msg)
        self.app = app
        self.server = server or PollingServer(**options)
        self._prefix = self.server.operations_path + "/"
        self._kind: Callable[[Scope], int] = (
            RouteTable(routes) if routes is not None else lambda _: MAYBE
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if path.startswith(self._prefix):
            operation_id = path[len(self._prefix) :]
        else:
            deferral = self._kind(scope)
            if deferral == NEVER:
                await self.app(scope, receive, send)
                return
            operation_id = None
        try:
            await self.server.open()
        except StoreUnavailable as exc:
            self.server.outages.failed("opening", exc)
            await send_reply(send, replies.store_unavailable())
            return
        if operation_id is not None:
            await self._operation(scope, receive, send, operation_id)
        else:
            await self._request(scope, receive, send, always=deferral == ALWAYS)

    # --- operation URLs -------------------------------------------------------------

    async def _operation(
        self, scope: Scope, receive: Receive, send: Send, operation_id: str
    ) -> None:
        server = self.server
        method = scope["method"]
        kind = replies.operation_request(
            method, operation_id, first_header(scope, b"accept"), module=CLIENT_MODULE
        )
        if kind == "preflight":
            origin = first_header(scope, b"origin")
            await send_reply(send, replies.preflight(origin, server.cors_origins))
            return
        if kind == "module":
            await send_reply(send, _client_module_reply(), head=method == "HEAD")
            return
        try:
            if kind == "stream":
                await self._stream(scope, receive, send, operation_id)
                return
            if kind == "cancel":
                reply = await answers.cancel_reply(server, scope, operation_id, receive)
            elif kind == "status":
                with telemetry.status_span(scope["headers"], operation_id):
                    reply = await answers.status_reply(
                        server, scope, operation_id, _preferences(scope), receive
                    )
            else:
                reply = replies.method_not_allowed(
                    method, after_redirect=answers.followed_redirects(scope) > 0
                )
        except StoreUnavailable as exc:
            server.outages.failed(f"{method} on an operation", exc)
            reply = replies.store_unavailable()
        await send_reply(send, reply, head=method == "HEAD")

    async def _stream(self, scope: Scope, receive: Receive, send: Send, operation_id: str) -> None:
        """``Accept: text/event-stream``: status events until the outcome, then the end."""
        server = self.server
        origin = first_header(scope, b"origin")
        op = await server.visible(scope, operation_id)
        if op is None:
            reply = replies.with_cors(replies.not_found(), origin, server.cors_origins)
            await send_reply(send, reply)
            return
        start = stream.stream_start(origin, server.cors_origins)
        headers = [(k.encode(), v.encode()) for k, v in start.headers]
        await send({"type": "http.response.start", "status": start.status, "headers": headers})
        if not server.admission.try_hold():
            # At the limit of held requests: the current status, and a hint
            # for the browser's EventSource to come back later.
            await _send_event(send, op, retry=server.interval_for(op, time.time()))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        try:
            async with _watching(receive) as gone:
                await self._stream_until_end(send, op, gone)
        finally:
            server.admission.release_hold()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stream_until_end(
        self, send: Send, op: Operation | None, gone: asyncio.Future[Any]
    ) -> None:
        last: tuple[Any, ...] | None = None
        deadline = time.monotonic() + self.server.retention
        refresh = self.server.pacing.stream_refresh
        while op is not None and not gone.done() and time.monotonic() < deadline:
            seen = (op.status, op.progress, op.message)
            if seen != last:
                last = seen
                await _send_event(send, op)
            if op.status.is_terminal:
                return
            op = await self.server.holds.hold(op.id, refresh, gone=gone, counted=False)

    # --- deferrable requests ----------------------------------------------------------

    async def _request(self, scope: Scope, receive: Receive, send: Send, *, always: bool) -> None:
        server = self.server
        if always and replies.declares_too_large(
            first_header(scope, b"content-length"), server.max_body_size
        ):
            await send_reply(send, replies.body_too_large(server.max_body_size))
            return
        preferences = _preferences(scope)
        request = DeferrableRequest(server, scope, receive, send, preferences, always_defers=always)
        child = asyncio.get_running_loop().create_task(request.run_app(self.app))
        child.add_done_callback(request.child_done)
        try:
            running = await request.decided
        except asyncio.CancelledError:
            if request.running is None:
                child.cancel()
            raise
        if running is None:
            try:
                child.result()
            except DeferralAborted as aborted:
                if not request.refused:
                    await send_reply(send, aborted.reply)
            except Exception:
                if not request.refused:
                    raise
                # The app failed on the body it was refused; the client has its 413.
            return
        server.executor.track(running.id, child)
        if running.stored is not None and not await _stored(request, running, child, send):
            return
        await self._answer_start(scope, receive, send, running, preferences)

    async def _answer_start(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        running: RunningOperation,
        preferences: Preferences,
    ) -> None:
        server = self.server
        wait = hold_seconds(preferences, None, server.pacing)  # only as long as asked
        if wait <= 0:
            # The record this process last wrote is the freshest there is: the
            # outcome itself if the work has ended and it is written already.
            op = running.record
        else:
            # The app has read the whole body; the client's receive channel
            # is ours to watch.
            op = await server.holds.hold(running.id, wait, receive=receive) or running.record
        origin = first_header(scope, b"origin")
        await send_reply(send, server.answer(scope, op, preferences, origin, running.url))

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = False

        async def receive_hooked() -> Message:
            nonlocal received
            received = True
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.server.open()
            elif message["type"] == "lifespan.shutdown":
                await self.server.close()
            return message

        try:
            await self.app(scope, receive_hooked, send)
        except Exception:
            if received:
                raise
        if not received:
            # The app has no lifespan (Django raises, a2wsgi-less apps return):
            # repoll still opens its store at startup and lets the work end
            # and closes it at shutdown.
            await self._own_lifespan(receive, send)

    async def _own_lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.server.open()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.server.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _stored(
    request: DeferrableRequest, running: RunningOperation, child: asyncio.Task[None], send: Send
) -> bool:
    """Wait for the record of work that started before it was stored; False if it never was.

    Then nothing can be given out that would lead to it: work that has
    ended is answered with its own response, as if it had not been deferred
    (nothing of it is lost); work still running is stopped, and the client
    told to try again (503), as for a start whose record could not be created.
    """
    stored = running.stored
    assert stored is not None
    try:
        # Usually written already: the batch was due before this task's turn.
        if not stored.done():
            await asyncio.shield(stored)
        stored.result()
    except Exception as exc:
        request.server.outages.failed("storing a started operation (answered without it)", exc)
        response = request.captured_response() if running.work_done else None
        if response is None:
            child.cancel()
            await send_reply(send, replies.store_unavailable())
        else:
            reply = replies.Reply(response.status, list(response.headers), response.body)
            await send_reply(send, reply)
        return False
    return True


async def _send_event(send: Send, op: Operation, *, retry: float | None = None) -> None:
    body = stream.stream_event(op, retry=retry)
    await send({"type": "http.response.body", "body": body, "more_body": True})
