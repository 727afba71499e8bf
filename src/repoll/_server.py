"""The ASGI shell: defers requests, serves operation URLs, paces polls.

How a request is deferred
-------------------------
:class:`PollingMiddleware` runs the wrapped app for each HTTP request in a
child task. The app validates the request as usual; when the endpoint calls
:func:`defer` (the :func:`deferred` decorator does so on entry), the
middleware creates an operation, answers the client ``303``/``202`` at once
(or waits for ``Prefer: wait``), and the child task keeps running the
endpoint. Whatever the app then sends is captured and stored as the
operation's final response, so the replay is exactly what the synchronous call
would have answered, status codes, headers, exception handlers and all. A
request whose endpoint never calls :func:`defer` passes through untouched.

Every decision about what to answer lives in the I/O-free modules
(``_replies``, ``_pacing``, ``_status``, ``_headers``); this module moves
bytes, time and tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import importlib.resources
import inspect
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from contextlib import AsyncExitStack
from typing import Any, ParamSpec, Protocol, TypeVar, cast, overload

from ._errors import require

require("starlette", "server")

from starlette.requests import HTTPConnection

from . import _replies as replies
from ._errors import (
    DuplicateOperation,
    InvalidTransition,
    NotDeferrableError,
    OperationCanceled,
    StoreUnavailable,
)
from ._executor import Executor, InProcessExecutor
from ._headers import (
    IDEMPOTENCY_KEY,
    InvalidIdempotencyKey,
    Preferences,
    digest,
    is_valid_operation_id,
    new_operation_id,
    parse_idempotency_key,
    parse_prefer,
)
from ._model import Operation, StoredResponse, clamp_progress
from ._pacing import DurationHistory, PacingPolicy, WorkSnapshot, estimate_interval, hold_seconds
from ._status import Event, OperationStatus, finish_event
from ._store import Store, store_from_url, update_operation

logger = logging.getLogger("repoll")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
PrincipalFunction = Callable[[HTTPConnection], str | Awaitable[str]]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_STORE_URL = "sqlite:///repoll.sqlite3"


def default_principal(request: HTTPConnection) -> str:
    """Who started a request: its Authorization and Cookie fields, as they are.

    Requests with neither share the anonymous principal ``""``. The server
    stores only a digest of whatever a principal function returns.
    """
    authorization = request.headers.get("authorization", "")
    cookie = request.headers.get("cookie", "")
    if not authorization and not cookie:
        return ""
    return f"{authorization}\0{cookie}"


def cookie_principal(name: str) -> PrincipalFunction:
    """A principal function for cookie sessions: the value of the cookie ``name``.

    Other cookies (analytics, preferences) may come and go without the user
    losing sight of their operations. Requests without the cookie fall back to
    their Authorization field, else to the anonymous principal.
    """

    def principal(request: HTTPConnection) -> str:
        session = request.cookies.get(name)
        if session:
            return f"cookie:{name}={session}"
        return request.headers.get("authorization", "")

    return principal


def _header_values(scope: Scope, name: bytes) -> Iterable[str]:
    return (v.decode("latin-1") for k, v in scope.get("headers", ()) if k == name)


# A Host value safe to echo in Location: a name or address and a port, no more.
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def wants_page(scope: Scope, preferences: Preferences) -> bool:
    """A browser navigating (it accepts HTML), not a script that asked for 202."""
    if preferences.respond_async:
        return False
    return any("text/html" in value for value in _header_values(scope, b"accept"))


def _wants_events(scope: Scope) -> bool:
    return any("text/event-stream" in value for value in _header_values(scope, b"accept"))


def _route_path(scope: Scope) -> str:
    # Group history by route template (/items/{id}), not by concrete path.
    route_path = getattr(scope.get("route"), "path", None)
    return route_path if isinstance(route_path, str) else str(scope["path"])


class _Notifier:
    """Wakes held polls the moment their operation ends (in this process).

    Each held poll is one future; the finishing side resolves them with the
    terminal record, so a thousand waiters cost no store reads when they wake.
    """

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[Operation | None]]] = {}

    def add(self, operation_id: str, waiter: asyncio.Future[Operation | None]) -> None:
        self._waiters.setdefault(operation_id, set()).add(waiter)

    def discard(self, operation_id: str, waiter: asyncio.Future[Operation | None]) -> None:
        waiters = self._waiters.get(operation_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[operation_id]

    def notify(self, operation_id: str, operation: Operation | None) -> None:
        for waiter in self._waiters.pop(operation_id, ()):
            if not waiter.done():
                waiter.set_result(operation)


async def _until_disconnect(receive: Receive) -> None:
    for _ in range(64):
        if (await receive())["type"] == "http.disconnect":
            return
        await asyncio.sleep(0)
    # A server whose receive() never blocks (not ASGI-conformant, but seen in
    # test harnesses) would make this a busy loop: stop watching instead.
    await asyncio.get_running_loop().create_future()


def _time_out(waiter: asyncio.Future[Operation | None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class PollingServer:
    """The state every request shares: store, executor, pacing, wake-ups.

    Create one with :func:`install` (Starlette/FastAPI) or pass it to
    :class:`PollingMiddleware` (any ASGI app).
    """

    def __init__(
        self,
        *,
        store: Store | str | None = None,
        executor: Executor | None = None,
        pacing: PacingPolicy | None = None,
        retention: float = 3600.0,
        operations_path: str = "/operations",
        max_body_size: int = 1024 * 1024,
        max_response_size: int = 64 * 1024 * 1024,
        principal: PrincipalFunction = default_principal,
        shutdown_grace: float = 5.0,
        max_held_polls: int = 10_000,
        max_operations: int = 10_000,
        max_operations_per_principal: int = 100,
        heartbeat_interval: float = 2.0,
        cors_origins: Iterable[str] = (),
        absolute_urls: bool = True,
    ) -> None:
        if store is None:
            store = DEFAULT_STORE_URL
        self.store: Store = store_from_url(store) if isinstance(store, str) else store
        self.executor: Executor = executor or InProcessExecutor()
        self.pacing = pacing or PacingPolicy()
        self.retention = retention
        self.operations_path = "/" + operations_path.strip("/")
        self.max_body_size = max_body_size
        self.max_response_size = max_response_size
        self.principal = principal
        self.shutdown_grace = shutdown_grace
        self.max_held_polls = max_held_polls
        self.max_operations = max_operations
        self.max_operations_per_principal = max_operations_per_principal
        self.held_polls = 0
        self._active_by_principal: dict[str, int] = {}
        # Shared stores: this instance's name in the store, and how often it
        # says it is alive. Its operations are declared lost when it has been
        # silent for owner_ttl seconds.
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.heartbeat_interval = heartbeat_interval
        self.cors_origins = frozenset(cors_origins)
        self.absolute_urls = absolute_urls
        self.owner_ttl = heartbeat_interval * 5
        self._maintenance: asyncio.Task[None] | None = None
        self._notifier = _Notifier()
        self._history: dict[str, DurationHistory] = {}
        self._running: dict[str, RunningOperation] = {}
        self._open = False
        self._closing = False
        self._open_lock: asyncio.Lock | None = None
        self._last_purge = 0.0

    # --- life cycle -----------------------------------------------------------

    async def open(self) -> None:
        """Open the store and settle operations a previous process left unfinished."""
        if self._open:
            return
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._open:
                return
            await self.store.open()
            self._closing = False
            if self.store.shared:
                await self.store.heartbeat(self.instance_id, ttl=self.owner_ttl)
                await self.store.subscribe(self._on_store_event)
                self._maintenance = asyncio.get_running_loop().create_task(self._maintain())
            else:
                # This process is the store's only user: whatever is unfinished
                # was left by its previous life.
                for op in await self.store.unfinished():
                    await self._lose(
                        op.id,
                        f"The server stopped while the operation was {op.status.value}; "
                        "its work was lost. Start it again.",
                    )
            self._open = True

    async def close(self) -> None:
        """Give running work ``shutdown_grace`` seconds, mark the rest failed, close."""
        if not self._open:
            return
        self._closing = True
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
            self._maintenance = None
        for op_id in await self.executor.shutdown(self.shutdown_grace):
            await self._lose(op_id, "The server shut down before the work finished.")
        await self.store.close()
        self._open = False

    def _on_store_event(self, kind: str, operation_id: str) -> None:
        if kind == "finished":
            self._notifier.notify(operation_id, None)  # waiters re-read the record
        elif kind == "cancel":
            running = self._running.get(operation_id)
            if running is not None:
                running.request_cancel()

    async def _maintain(self) -> None:
        """Shared stores: heartbeats, reaping operations of silent instances, purging."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await self.store.heartbeat(self.instance_id, ttl=self.owner_ttl)
                await self.reap()
                await self._maybe_purge()
            except StoreUnavailable:
                logger.warning("store unavailable during maintenance", exc_info=True)
            except Exception:
                logger.exception("maintenance failed")

    async def reap(self) -> int:
        """Declare lost the unfinished operations of instances that stopped; returns how many."""
        await self.open()
        live = await self.store.live_owners()
        live.add(self.instance_id)
        lost = 0
        for op in await self.store.unfinished():
            if op.owner is None or op.owner in live:
                continue
            await self._lose(
                op.id,
                f"The instance running the operation ({op.owner}) stopped: no sign of life for "
                f"{self.owner_ttl:g} s. Its work was lost; start it again.",
            )
            lost += 1
        return lost

    # --- operations -----------------------------------------------------------

    def operation_url(self, scope: Scope, operation_id: str) -> str:
        """The operation's URL: absolute (from the request's Host), else a path.

        Absolute because some pollers (azure-core among them) do not resolve a
        relative Location against the request URL, though RFC 9110 allows it.
        """
        path = f"{scope.get('root_path', '')}{self.operations_path}/{operation_id}"
        if not self.absolute_urls:
            return path
        host = next(iter(_header_values(scope, b"host")), "")
        if not _HOST.fullmatch(host):
            return path
        return f"{scope.get('scheme', 'http')}://{host}{path}"

    async def _principal_of(self, scope: Scope) -> str:
        result = self.principal(HTTPConnection(scope))
        if inspect.isawaitable(result):
            result = await result
        # Whatever identifies the principal (a token, a session id) is stored
        # only as a digest.
        return digest("principal", result) if result else ""

    async def _transition(
        self,
        operation_id: str,
        event: Event,
        *,
        response: StoredResponse | None = None,
        message: str | None = None,
        known: Operation | None = None,
    ) -> Operation | None:
        """Apply ``event``; None when the operation is gone or already moved on."""

        changed = False

        def change(op: Operation) -> Operation | None:
            nonlocal changed
            try:
                updated = op.apply(
                    event,
                    now=time.time(),
                    retention=self.retention,
                    response=response,
                    message=message,
                )
            except InvalidTransition:
                changed = False
                return None
            changed = True
            return updated

        running = self._running.get(operation_id)
        if known is None and running is not None:
            known = running.record
        after = await update_operation(self.store, operation_id, change, known=known)
        if running is not None and after is not None:
            running.record = after
        if after is None or not changed:
            return None
        if after.status.is_terminal:
            self._notifier.notify(operation_id, after)
        return after

    async def _lose(self, operation_id: str, reason: str) -> None:
        await self._transition(
            operation_id, Event.LOSE, response=replies.lost_response(reason), message=reason
        )

    async def _finish(self, running: RunningOperation, response: StoredResponse) -> None:
        op = await self._transition(running.id, finish_event(response.status), response=response)
        if op is not None and op.started_at is not None and op.finished_at is not None:
            history = self._history.setdefault(op.endpoint, DurationHistory())
            history.add(op.finished_at - op.started_at)

    async def _end_interrupted(self, running: RunningOperation, exc: BaseException) -> None:
        """The work raised or was cancelled: record the one outcome that applies."""
        if running.cancel_requested and isinstance(exc, asyncio.CancelledError | OperationCanceled):
            await self._transition(
                running.id,
                Event.CANCEL,
                response=replies.canceled_response(),
                message="Canceled on request.",
            )
        elif isinstance(exc, asyncio.CancelledError):
            await self._lose(running.id, "The server stopped the work before it finished.")
        else:
            logger.error("operation %s: the endpoint raised", running.id, exc_info=exc)
            await self._transition(
                running.id,
                Event.FINISH_ERROR,
                response=replies.handler_error_response(exc),
                message=f"The endpoint raised {type(exc).__name__}.",
            )

    async def _store_progress(
        self, operation_id: str, progress: float | None, message: str | None
    ) -> None:
        def change(op: Operation) -> Operation | None:
            return op.with_progress(progress, message, now=time.time())

        running = self._running.get(operation_id)
        after = await update_operation(
            self.store, operation_id, change, known=running.record if running else None
        )
        if running is not None and after is not None:
            running.record = after

    def interval_for(self, op: Operation, now: float) -> float:
        """The Retry-After the server advertises for ``op`` now."""
        history = self._history.get(op.endpoint)
        work = WorkSnapshot(
            age=max(now - op.created_at, 0.0),
            running_for=None if op.started_at is None else max(now - op.started_at, 0.0),
            progress=op.progress,
            typical_duration=history.mean if history else None,
            queued_ahead=self.executor.waiting,
            concurrency=self.executor.concurrency,
            load=self.held_polls / self.max_held_polls if self.max_held_polls else 1.0,
        )
        return estimate_interval(work, self.pacing)

    async def _visible(self, scope: Scope, operation_id: str) -> Operation | None:
        if not is_valid_operation_id(operation_id):
            return None
        op = await self.store.get(operation_id)
        if op is None or op.principal != await self._principal_of(scope):
            return None
        return op

    async def _hold(
        self, operation_id: str, seconds: float, receive: Receive | None = None
    ) -> Operation | None:
        """Wait until the operation ends or ``seconds`` pass; return a fresh record.

        At ``max_held_polls`` the server sheds: it answers at once, and the
        load stretches the Retry-After it advertises. With ``receive``, a client
        that goes away ends its hold at once (the work is not affected).
        """
        if self.held_polls >= self.max_held_polls:
            seconds = 0.0
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Operation | None] = loop.create_future()
        self._notifier.add(operation_id, waiter)
        try:
            # Read after listening, so a finish in between cannot be missed.
            op = await self.store.get(operation_id)
            if op is None or op.status.is_terminal or seconds <= 0:
                return op
            self.held_polls += 1
            timer = loop.call_later(seconds, _time_out, waiter)
            watcher = None
            if receive is not None:
                watcher = loop.create_task(_until_disconnect(receive))
                watcher.add_done_callback(lambda _: _time_out(waiter))
            try:
                finished = await waiter
            finally:
                timer.cancel()
                if watcher is not None:
                    watcher.cancel()
                self.held_polls -= 1
        finally:
            self._notifier.discard(operation_id, waiter)
        return finished if finished is not None else await self.store.get(operation_id)

    def _answer(self, scope: Scope, op: Operation, preferences: Preferences) -> replies.Reply:
        now = time.time()
        url = self.operation_url(scope, op.id)
        if op.expires_at is not None and op.expires_at <= now:
            return replies.expired(op)
        if op.status.is_terminal:
            return replies.final(op, operation_url=url)
        interval = self.interval_for(op, now)
        if wants_page(scope, preferences):
            return replies.progress_page(op, operation_url=url, interval=interval, now=now)
        if op.respond_async and not preferences.respond_async:
            preferences = dataclasses.replace(preferences, respond_async=True)
        return replies.pending(op, operation_url=url, preferences=preferences, interval=interval)

    async def status_reply(
        self, scope: Scope, operation_id: str, receive: Receive | None = None
    ) -> replies.Reply:
        """The answer to ``GET`` on an operation URL, after holding it if due."""
        op = await self._visible(scope, operation_id)
        if op is None:
            return replies.not_found()
        preferences = parse_prefer(_header_values(scope, b"prefer"))
        if not op.status.is_terminal:
            advertised = self.interval_for(op, time.time())
            hold = hold_seconds(preferences, advertised, self.pacing)
            if wants_page(scope, preferences):
                hold = 0.0  # a person sees the page at once; its Refresh paces the browser
            held = await self._hold(op.id, hold, receive)
            if held is None:
                return replies.not_found()
            op = held
        return self._answer(scope, op, preferences)

    async def stream_events(
        self, scope: Scope, send: Send, operation_id: str, cors: list[tuple[str, str]]
    ) -> None:
        """``Accept: text/event-stream``: status events until the outcome, then the end."""
        op = await self._visible(scope, operation_id)
        if op is None:
            reply = replies.not_found()
            reply.headers.extend(cors)
            await _send_reply(send, reply)
            return
        headers = [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
            *((k.encode(), v.encode()) for k, v in cors),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        last: tuple[Any, ...] | None = None
        deadline = time.monotonic() + self.retention
        while op is not None and time.monotonic() < deadline:
            seen = (op.status, op.progress, op.message)
            if seen != last:
                last = seen
                event = "outcome" if op.status.is_terminal else "status"
                document = op.status_document()
                if op.response is not None:
                    document["response_status"] = op.response.status
                body = json.dumps(document, separators=(",", ":")).encode()
                await send(
                    {
                        "type": "http.response.body",
                        "body": replies.sse_event(event, body),
                        "more_body": True,
                    }
                )
            if op.status.is_terminal:
                break
            # Ends wake at once; progress is re-read at most every half second.
            op = await self._hold(op.id, 0.5)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def cancel_reply(self, scope: Scope, operation_id: str) -> replies.Reply:
        """The answer to ``DELETE`` on an operation URL."""
        op = await self._visible(scope, operation_id)
        if op is None:
            return replies.not_found()
        if op.expires_at is not None and op.expires_at <= time.time():
            return replies.expired(op)
        if op.status.is_terminal:
            return replies.status_only(op)

        def flag(current: Operation) -> Operation | None:
            if current.status.is_terminal or current.cancel_requested:
                return None
            return dataclasses.replace(current, cancel_requested=True, updated_at=time.time())

        await update_operation(self.store, op.id, flag)
        running = self._running.get(op.id)
        if running is not None:
            running.request_cancel()
        elif self.store.shared:
            await self.store.announce_cancel(op.id)  # the instance running it stops it
        if running is None and op.status is OperationStatus.QUEUED:
            await self._transition(
                op.id,
                Event.CANCEL,
                response=replies.canceled_response(),
                message="Canceled on request.",
            )
        # Cooperative cancellation usually lands within a moment; answer with
        # the outcome when it does, else with 202 and the current status.
        op = await self._hold(op.id, 1.0) or op
        return replies.status_only(op, status=200 if op.status.is_terminal else 202)

    def admit(self, principal: str) -> replies.Reply | None:
        """None if one more operation may start for ``principal``, else the 429 to send."""
        if len(self._running) >= self.max_operations:
            scope_text = "the server"
        elif self._active_by_principal.get(principal, 0) >= self.max_operations_per_principal:
            scope_text = "one client"
        else:
            return None
        typical = [hist.mean for hist in self._history.values() if hist.mean is not None]
        wait = min(max(min(typical, default=self.pacing.default_interval), 1.0), 60.0)
        return replies.too_many_operations(scope_text, wait)

    def _track(self, running: RunningOperation, principal: str) -> None:
        self._running[running.id] = running
        self._active_by_principal[principal] = self._active_by_principal.get(principal, 0) + 1

    def _untrack(self, running: RunningOperation) -> None:
        if self._running.pop(running.id, None) is None:
            return
        principal = running.record.principal
        left = self._active_by_principal.get(principal, 1) - 1
        if left:
            self._active_by_principal[principal] = left
        else:
            self._active_by_principal.pop(principal, None)

    async def _maybe_purge(self) -> None:
        now = time.time()
        if now - self._last_purge < 60.0:
            return
        self._last_purge = now
        deleted = await self.store.purge(now=now, tombstone=self.retention)
        if deleted:
            logger.debug("purged %d expired operations", deleted)


class RunningOperation:
    """The operation the current request became; what the endpoint's work talks to.

    Get it from :func:`defer` or :func:`current_operation`. Its methods are
    safe to call from the event loop and from a sync handler's thread.
    """

    def __init__(self, server: PollingServer, operation: Operation, url: str) -> None:
        self.id = operation.id
        self.url = url
        self.record = operation  # the latest version this process wrote or read
        self.server = server
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._cancel = threading.Event()
        self._in_thread = False
        self.work_done = False
        self._task = asyncio.current_task()
        self._pending: tuple[float | None, str | None] | None = None
        self._flushing = False

    @property
    def cancel_requested(self) -> bool:
        """True once a client asked to cancel; sync work should check and stop."""
        return self._cancel.is_set()

    def raise_if_canceled(self) -> None:
        """Raise :class:`~repoll.OperationCanceled` if cancellation was requested."""
        if self._cancel.is_set():
            msg = "cancellation was requested"
            raise OperationCanceled(msg, operation_url=self.url)

    def report_progress(self, progress: float | None = None, message: str | None = None) -> None:
        """Record how far the work is (0..1) and a short message, for status polls."""
        self._pending = (clamp_progress(progress), message)
        if threading.get_ident() == self._loop_thread:
            self._schedule_flush()
        else:
            self._loop.call_soon_threadsafe(self._schedule_flush)

    def _schedule_flush(self) -> None:
        # Coalesce: at most one store write in flight; the newest report wins.
        if not self._flushing and self._pending is not None:
            self._flushing = True
            self._loop.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending is not None:
                progress, message = self._pending
                self._pending = None
                await self._server._store_progress(self.id, progress, message)
        finally:
            self._flushing = False

    def request_cancel(self) -> None:
        self._cancel.set()
        # Async work is cancelled at its next await; sync work in a thread
        # cannot be interrupted and must check ``cancel_requested``. Work that
        # has already ended is left to record its own outcome.
        if not self._in_thread and not self.work_done and self._task is not None:
            self._task.cancel()

    async def run_sync(self, fn: Callable[[], R]) -> R:
        """Run blocking work on the executor's threads, as this operation."""
        self._in_thread = True
        try:
            return await self._server.executor.run_sync(fn)
        finally:
            self._in_thread = False


_current_request: contextvars.ContextVar[_DeferrableRequest | None] = contextvars.ContextVar(
    "repoll_request", default=None
)


class WorkContext(Protocol):
    """What deferred work can ask of its operation, wherever it runs."""

    id: str

    @property
    def cancel_requested(self) -> bool: ...

    def raise_if_canceled(self) -> None: ...

    def report_progress(
        self, progress: float | None = None, message: str | None = None
    ) -> None: ...


_current_operation: contextvars.ContextVar[WorkContext | None] = contextvars.ContextVar(
    "repoll_operation", default=None
)


_SETTLE_RETRY_PAUSES = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


class _DeferralAborted(Exception):
    """Raised inside the app when defer() must answer the client with an error instead."""

    def __init__(self, reply: replies.Reply) -> None:
        self.reply = reply
        super().__init__(reply.status)


class _DeferrableRequest:
    """One HTTP request on its way through the app, which may become an operation."""

    def __init__(self, server: PollingServer, scope: Scope, receive: Receive, send: Send) -> None:
        self.server = server
        self.scope = scope
        self._receive = receive
        self._send = send
        self._replay: list[bytes] = []
        # The body itself is kept only when an idempotency key needs its digest.
        self._key_values = list(_header_values(scope, IDEMPOTENCY_KEY.encode()))
        self._body: list[bytes] | None = [] if self._key_values else None
        self._body_size = 0
        self._body_complete = False
        self._response_started = False
        self.decided: asyncio.Future[RunningOperation] = asyncio.get_running_loop().create_future()
        self.running: RunningOperation | None = None
        self._exit = AsyncExitStack()
        self._captured_status: int | None = None
        self._captured_headers: tuple[tuple[str, str], ...] = ()
        self._captured_body: list[bytes] = []
        self._captured_size = 0
        self._captured_complete = False

    # --- what the app sees ------------------------------------------------------

    async def receive(self) -> Message:
        if self.running is None:
            message = await self._receive()
            if message["type"] == "http.request":
                self._count_body(message)
            return message
        if self._replay:
            chunk = self._replay.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(self._replay)}
        # The client has its answer; the work must not see it leave. Block
        # until the task is cancelled (which only cancellation does).
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(self, message: Message) -> None:
        if self.running is None:
            if message["type"] == "http.response.start":
                self._response_started = True
            await self._send(message)
            return
        if message["type"] == "http.response.start":
            self._captured_status = int(message["status"])
            self._captured_headers = tuple(
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", ())
            )
        elif message["type"] == "http.response.body":
            body = bytes(message.get("body", b""))
            self._captured_size += len(body)
            if self._captured_size <= self.server.max_response_size:
                self._captured_body.append(body)
            if not message.get("more_body", False):
                self._captured_complete = True

    def _count_body(self, message: Message) -> None:
        chunk = message.get("body", b"")
        self._body_size += len(chunk)
        if self._body is not None and self._body_size <= self.server.max_body_size:
            self._body.append(bytes(chunk))
        if not message.get("more_body", False):
            self._body_complete = True

    # --- defer() ------------------------------------------------------------------

    async def defer(self) -> RunningOperation:
        if self.running is not None:
            return self.running
        if self._response_started:
            msg = "defer() was called after the response started"
            raise NotDeferrableError(msg)
        server = self.server
        limit = server.max_body_size
        while not self._body_complete:
            message = await self._receive()
            if message["type"] != "http.request":
                msg = "the client disconnected before its request body arrived"
                raise NotDeferrableError(msg)
            self._count_body(message)
            if self._body_size > limit:
                raise _DeferralAborted(replies.body_too_large(limit))
            self._replay.append(bytes(message.get("body", b"")))
        if self._body_size > limit:
            raise _DeferralAborted(replies.body_too_large(limit))

        principal = await server._principal_of(self.scope)
        key_digest, request_digest = await self._check_idempotency(principal)
        refusal = server.admit(principal)
        if refusal is not None:
            raise _DeferralAborted(refusal)
        now = time.time()
        # With a slot free, the operation is born running: one write, not two.
        immediate = server.executor.has_free_slot()
        op_id = new_operation_id()
        if immediate:
            await self._exit.enter_async_context(server.executor.slot(op_id))
        op = Operation(
            id=op_id,
            principal=principal,
            endpoint=f"{self.scope['method']} {_route_path(self.scope)}",
            status=OperationStatus.RUNNING if immediate else OperationStatus.QUEUED,
            created_at=now,
            updated_at=now,
            started_at=now if immediate else None,
            idempotency_key=key_digest,
            request_digest=request_digest,
            owner=server.instance_id,
            respond_async=parse_prefer(_header_values(self.scope, b"prefer")).respond_async,
        )
        try:
            await server.store.create(op)
        except DuplicateOperation as duplicate:
            # A concurrent twin won the race for the key: answer as it would.
            existing = await server.store.get(duplicate.existing_id)
            raise _DeferralAborted(self._duplicate_reply(existing, request_digest)) from None
        except StoreUnavailable:
            logger.warning("store unavailable: request not deferred", exc_info=True)
            raise _DeferralAborted(replies.store_unavailable()) from None
        running = RunningOperation(server, op, server.operation_url(self.scope, op.id))
        self.running = running
        server._track(running, principal)
        _current_operation.set(running)
        self.decided.set_result(running)
        # From here on the client has (or is about to get) its redirect; the
        # rest of the endpoint is the operation's work.
        if not immediate and not hasattr(server.executor, "hand_off"):
            # (A remote executor's worker starts the operation itself.)
            await self._exit.enter_async_context(server.executor.slot(op.id))
            if running.cancel_requested:
                raise asyncio.CancelledError
            if await server._transition(op.id, Event.START) is None:
                # Canceled (or declared lost) by another instance while queued.
                running._cancel.set()
                raise asyncio.CancelledError
        return running

    async def _check_idempotency(self, principal: str) -> tuple[str | None, str | None]:
        """Digests of (principal, key) and of the request; raises to answer a repeat."""
        try:
            key = parse_idempotency_key(self._key_values)
        except InvalidIdempotencyKey as exc:
            raise _DeferralAborted(replies.bad_idempotency_key(str(exc))) from None
        if key is None:
            return None, None
        scope = self.scope
        key_digest = digest("idempotency-key", principal, key)
        request_digest = digest(
            scope["method"],
            scope["path"],
            scope.get("query_string", b""),
            b"".join(self._body or ()),
        )
        existing = await self.server.store.find_by_idempotency_key(key_digest)
        if existing is not None:
            raise _DeferralAborted(self._duplicate_reply(existing, request_digest))
        return key_digest, request_digest

    def _duplicate_reply(
        self, existing: Operation | None, request_digest: str | None
    ) -> replies.Reply:
        if existing is None:  # purged between the two reads
            return replies.store_unavailable()
        if existing.request_digest != request_digest:
            return replies.idempotency_key_reused()
        preferences = parse_prefer(_header_values(self.scope, b"prefer"))
        return self.server._answer(self.scope, existing, preferences)

    # --- the child task -------------------------------------------------------------

    async def run_app(self, app: ASGIApp) -> None:
        _current_request.set(self)
        interrupted: BaseException | None = None
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            if self.running is None:
                raise
            interrupted = exc
        running = self.running
        if running is None:
            return
        running.work_done = True
        # Recording the outcome must not be cut short by a late cancellation
        # (a DELETE or a shutdown racing the end of the work), or the
        # operation would stay "running" for ever.
        await asyncio.shield(self._settle(running, interrupted))
        if isinstance(interrupted, asyncio.CancelledError):
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()

    async def _settle(self, running: RunningOperation, interrupted: BaseException | None) -> None:
        server = self.server
        try:
            await self._exit.aclose()  # frees the executor slot
            if isinstance(interrupted, HandedOff):
                return  # another process writes the outcome
            response = self._captured_response() if interrupted is None else None
            # The outcome must reach the store: a busy or briefly unreachable
            # store is retried, with growing pauses, for about a minute.
            for pause in (*_SETTLE_RETRY_PAUSES, None):
                try:
                    if response is not None:
                        await server._finish(running, response)
                    else:
                        await server._end_interrupted(running, interrupted)  # type: ignore[arg-type]
                    break
                except StoreUnavailable:
                    if pause is None:
                        logger.exception(
                            "operation %s: outcome lost, store unavailable", running.id
                        )
                        raise
                    logger.warning("operation %s: store unavailable, retrying", running.id)
                    await asyncio.sleep(pause)
        finally:
            server._untrack(running)

    def _captured_response(self) -> StoredResponse:
        if self._captured_status is None or not self._captured_complete:
            return replies.stored_problem(
                500,
                "The operation failed",
                "The endpoint ended without a complete response.",
                kind="operation-failed",
            )
        if self._captured_size > self.server.max_response_size:
            return replies.stored_problem(
                500,
                "The operation's response was too large",
                f"The response was over {self.server.max_response_size} bytes, "
                "the most this server keeps.",
                kind="response-too-large",
            )
        return StoredResponse(
            self._captured_status, self._captured_headers, b"".join(self._captured_body)
        )


CLIENT_MODULE = "client.js"


@functools.cache
def _client_module_reply() -> replies.Reply:
    source = importlib.resources.files("repoll").joinpath("static/repoll.js").read_bytes()
    return replies.Reply(
        200,
        [("content-type", "text/javascript; charset=utf-8"), ("cache-control", "max-age=3600")],
        source,
    )


async def _send_reply(send: Send, reply: replies.Reply, *, head: bool = False) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
    if not any(k == b"content-length" for k, _ in headers):
        headers.append((b"content-length", str(len(reply.body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else reply.body})


class PollingMiddleware:
    """ASGI middleware that makes endpoints deferrable and serves operation URLs.

    ``PollingMiddleware(app, server=PollingServer(...))``, or pass the
    :class:`PollingServer` options as keyword arguments.
    """

    def __init__(self, app: ASGIApp, server: PollingServer | None = None, **options: Any) -> None:
        if server is not None and options:
            msg = "pass either server= or PollingServer options, not both"
            raise TypeError(msg)
        self.app = app
        self.server = server or PollingServer(**options)
        self._prefix = self.server.operations_path + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        server = self.server
        try:
            await server.open()
        except StoreUnavailable:
            logger.warning("store unavailable while opening", exc_info=True)
            await _send_reply(send, replies.store_unavailable())
            return
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if path.startswith(self._prefix):
            await self._operation(scope, receive, send, path[len(self._prefix) :])
            return
        await self._request(scope, receive, send)

    async def _operation(
        self, scope: Scope, receive: Receive, send: Send, operation_id: str
    ) -> None:
        server = self.server
        method = scope["method"]
        origin = next(iter(_header_values(scope, b"origin")), "")
        cors = replies.cors_headers(origin, server.cors_origins)
        if method == "OPTIONS":
            await _send_reply(send, replies.preflight(origin, server.cors_origins))
            return
        if operation_id == CLIENT_MODULE and method in {"GET", "HEAD"}:
            await _send_reply(send, _client_module_reply(), head=method == "HEAD")
            return
        if method == "GET" and _wants_events(scope):
            await server.stream_events(scope, send, operation_id, cors)
            return
        try:
            if method in {"GET", "HEAD"}:
                reply = await server.status_reply(scope, operation_id, receive)
            elif method == "DELETE":
                reply = await server.cancel_reply(scope, operation_id)
            else:
                reply = replies.method_not_allowed()
        except StoreUnavailable:
            logger.warning("store unavailable", exc_info=True)
            reply = replies.store_unavailable()
        reply.headers.extend(cors)
        await _send_reply(send, reply, head=method == "HEAD")
        with contextlib.suppress(StoreUnavailable):
            await server._maybe_purge()

    async def _request(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = _DeferrableRequest(self.server, scope, receive, send)
        child = asyncio.create_task(request.run_app(self.app))
        try:
            waiters: list[asyncio.Future[Any]] = [child, request.decided]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            if not request.decided.done():
                child.cancel()
            raise
        if not request.decided.done():
            try:
                child.result()
            except _DeferralAborted as aborted:
                await _send_reply(send, aborted.reply)
            return
        running = request.decided.result()
        self.server.executor.track(running.id, child)
        await self._answer_start(scope, send, running)

    async def _answer_start(self, scope: Scope, send: Send, running: RunningOperation) -> None:
        server = self.server
        preferences = parse_prefer(_header_values(scope, b"prefer"))
        wait = min(preferences.wait or 0.0, server.pacing.max_hold)
        op: Operation | None
        if wait <= 0 and not running.work_done:
            # The record this process just wrote is the freshest there is.
            op = running.record
        else:
            op = await server._hold(running.id, wait)
        if op is None:  # pragma: no cover - the record was created a moment ago
            await _send_reply(send, replies.not_found())
            return
        reply = server._answer(scope, op, preferences)
        origin = next(iter(_header_values(scope, b"origin")), "")
        reply.headers.extend(replies.cors_headers(origin, server.cors_origins))
        await _send_reply(send, reply)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_hooked() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.server.open()
            elif message["type"] == "lifespan.shutdown":
                await self.server.close()
            return message

        await self.app(scope, receive_hooked, send)


async def defer() -> RunningOperation:
    """Turn the current request into an operation; the rest of the endpoint is its work.

    Call it after validating the input, so that bad requests still get their
    immediate 4xx. The client is answered ``303 See Other`` (or ``202``) at
    once; when the endpoint returns, its response becomes the operation's
    outcome. Calling it again returns the same operation.
    """
    request = _current_request.get()
    if request is None:
        msg = (
            "defer() needs the request to pass through repoll's PollingMiddleware: "
            "call repoll.install(app) or wrap the app in repoll.PollingMiddleware"
        )
        raise NotDeferrableError(msg)
    return await request.defer()


def current_operation() -> WorkContext | None:
    """The operation the running work belongs to, or None outside deferred work."""
    return _current_operation.get()


def report_progress(progress: float | None = None, message: str | None = None) -> None:
    """Report the current operation's progress (0..1) and a message; no-op outside one."""
    running = _current_operation.get()
    if running is not None:
        running.report_progress(progress, message)


# Every deferred endpoint, by "module:qualname", for executors that run the
# work in another process (a Celery worker imports the app, which registers).
ENDPOINTS: dict[str, Callable[..., Any]] = {}


class HandedOff(BaseException):
    """Raised in the endpoint once a remote executor has taken the work over."""


def endpoint_name(endpoint: Callable[..., Any]) -> str:
    return f"{endpoint.__module__}:{endpoint.__qualname__}"


@overload
def deferred(endpoint: Callable[P, Awaitable[R]], /) -> Callable[P, Awaitable[R]]: ...
@overload
def deferred(endpoint: Callable[P, R], /) -> Callable[P, Awaitable[R]]: ...
@overload
def deferred(
    *, rerun: bool = False
) -> Callable[[Callable[P, Any]], Callable[P, Awaitable[Any]]]: ...
def deferred(endpoint: Callable[P, Any] | None = None, /, *, rerun: bool = False) -> Any:
    """Make an endpoint deferred: it is validated as usual, then runs as an operation.

    Works for async and sync endpoints of Starlette and FastAPI; sync ones
    run on the executor's threads. Put it below the route decorator::

        @app.post("/reports")
        @repoll.deferred
        async def make_report(spec: ReportSpec) -> Report: ...

    ``@repoll.deferred(rerun=True)`` declares the work safe to run again: on a
    Celery executor, a worker that dies mid-operation leaves the task to be
    redelivered instead of failing the operation.
    """
    if endpoint is None:
        return functools.partial(deferred, rerun=rerun)
    name = endpoint_name(endpoint)
    ENDPOINTS[name] = endpoint

    async def hand_off_if_remote(running: RunningOperation, args: Any, kwargs: Any) -> None:
        executor = running.server.executor
        hand_off = getattr(executor, "hand_off", None)
        if hand_off is not None:
            request = _current_request.get()
            route = request.scope.get("route") if request is not None else None
            status = getattr(route, "status_code", None) or 200
            await hand_off(running, name, endpoint, args, kwargs, status_code=status, rerun=rerun)
            raise HandedOff

    if inspect.iscoroutinefunction(endpoint):

        @functools.wraps(endpoint)
        async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
            running = await defer()
            await hand_off_if_remote(running, args, kwargs)
            return await endpoint(*args, **kwargs)

        wrapper = run_async
    else:

        @functools.wraps(endpoint)
        async def run_sync(*args: P.args, **kwargs: P.kwargs) -> Any:
            running = await defer()
            await hand_off_if_remote(running, args, kwargs)
            return await running.run_sync(functools.partial(endpoint, *args, **kwargs))

        wrapper = run_sync
    cast(Any, wrapper).__repoll_deferred__ = True
    return wrapper


def is_deferred(endpoint: object) -> bool:
    return bool(getattr(endpoint, "__repoll_deferred__", False))
