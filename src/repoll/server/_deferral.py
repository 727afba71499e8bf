"""Turning a request into an operation: ``defer()``, ``@deferred``, and the work's handle.

How a request is deferred
-------------------------
The middleware runs the app for a request that may defer in a child task
(:meth:`DeferrableRequest.run_app`). The app validates the request as
usual; when the endpoint calls :func:`defer` (``@deferred`` does so on
entry), the operation is admitted, created and tracked, the middleware
answers the client ``303``/``202`` (or waits for ``Prefer: wait``), and the
child task keeps running the endpoint. Whatever the app then sends is
captured and stored as the operation's final response, so the replay is
exactly what the synchronous call would have answered.

Every resource a deferral takes (an admission, an executor slot, the
record's tracking) is given back on every path: if anything fails before
the operation exists, :meth:`DeferrableRequest.defer` undoes what it took
before re-raising; once it exists, :meth:`DeferrableRequest.run_app`
records its outcome and releases the rest, whatever the work did.

Work here and work on a Celery worker are one kind of work: the handle the
endpoint talks to (:class:`RunningOperation`) is the worker's
:class:`~repoll.executors._work.WorkHandle` too, and how the work ended
is classified by the same core function for both. Whether the work runs
here at all is the executor's to say, through its protocol
(:class:`~repoll.executors._in_process.RemoteExecutor`): a remote executor's
work is handed off after ``defer()``, and the worker starts the operation.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

from .. import _telemetry as telemetry
from .._errors import DuplicateOperation, NotDeferrableError, StoreUnavailable
from ..core import _replies as replies
from ..core._admission import quota_key
from ..core._headers import (
    IDEMPOTENCY_KEY,
    InvalidIdempotencyKey,
    Preferences,
    digest,
    new_operation_id,
    parse_idempotency_key,
)
from ..core._model import Operation, StoredResponse
from ..core._status import Event, OperationStatus
from ..executors._work import WorkHandle
from ..stores._store import create_soon
from ._scope import ASGIApp, Message, Receive, Scope, Send, first_header

if TYPE_CHECKING:
    from ._engine import PollingServer


P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("repoll")


class RunningOperation(WorkHandle):
    """The operation the current request became; what the endpoint's work talks to.

    Get it from :func:`defer` or :func:`current_operation`. Its methods are
    safe to call from the event loop and from a sync handler's thread. The
    cancel flag and progress reporting are :class:`WorkHandle`'s, shared
    with work on a Celery worker; progress goes through the engine, which
    keeps its copy of the record.
    """

    def __init__(
        self,
        server: PollingServer,
        operation: Operation,
        url: str,
        quota: str,
        task: asyncio.Task[Any] | None = None,
        *,
        stored: asyncio.Future[None] | None = None,
    ) -> None:
        super().__init__(operation, url, task or asyncio.current_task())
        self.server = server
        self.quota = quota  # whose admission this operation holds
        # The record's insert, when the work started before it was done
        # (see DeferrableRequest._create): the client is answered after it.
        self.stored = stored

    async def _store_progress(self, progress: float | None, message: str | None) -> None:
        await self.server.store_progress(self, progress, message)

    async def run_sync(self, fn: Callable[[], R]) -> R:
        """Run blocking work on the executor's threads, as this operation."""
        self._in_thread = True
        try:
            return await self.server.executor.run_sync(fn)
        finally:
            self._in_thread = False


class WorkContext(Protocol):
    """What deferred work can ask of its operation, wherever it runs."""

    id: str

    @property
    def cancel_requested(self) -> bool: ...

    def raise_if_canceled(self) -> None: ...

    def report_progress(
        self, progress: float | None = None, message: str | None = None
    ) -> None: ...


_current_request: contextvars.ContextVar[DeferrableRequest | None] = contextvars.ContextVar(
    "repoll_request", default=None
)
_current_operation: contextvars.ContextVar[WorkContext | None] = contextvars.ContextVar(
    "repoll_operation", default=None
)


class DeferralAborted(BaseException):
    """Raised inside the app when defer() must answer the client with an error instead.

    A BaseException, so that an endpoint's or a middleware's ``except
    Exception`` cannot turn the intended answer (a 413, 429, 503...) into a 500.
    """

    def __init__(self, reply: replies.Reply) -> None:
        self.reply = reply
        super().__init__(reply.status)


class HandedOff(BaseException):
    """Raised in the endpoint once a remote executor has taken the work over."""


class DeferrableRequest:
    """One HTTP request on its way through the app, which may become an operation."""

    def __init__(
        self,
        server: PollingServer,
        scope: Scope,
        receive: Receive,
        send: Send,
        preferences: Preferences,
        *,
        always_defers: bool = False,
    ) -> None:
        self.server = server
        self.scope = scope
        self.preferences = preferences
        self._receive = receive
        self._send = send
        self._always_defers = always_defers
        self._replay: list[bytes] = []
        # The body itself is kept only when an idempotency key needs its digest.
        self._key_values = [
            v.decode("latin-1") for k, v in scope["headers"] if k == IDEMPOTENCY_KEY.encode()
        ]
        self._body: list[bytes] | None = [] if self._key_values else None
        self._body_size = 0
        self._body_complete = False
        self._response_started = False
        self.refused = False  # answered 413 before the app had read the body
        self.decided: asyncio.Future[RunningOperation | None] = (
            asyncio.get_running_loop().create_future()
        )
        self.running: RunningOperation | None = None
        self._slot: AbstractAsyncContextManager[None] | None = None  # an executor slot held
        self._captured_status: int | None = None
        self._captured_headers: tuple[tuple[str, str], ...] = ()
        self._captured_body: list[bytes] = []
        self._captured_size = 0
        self._captured_complete = False
        self._work_span: telemetry.WorkSpan | None = None
        self.loop = asyncio.get_running_loop()
        self.app_task: asyncio.Task[Any] | None = None  # the task running the app

    # --- what the app sees ------------------------------------------------------

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        if self.running is None:
            message = await self._receive()
            if self.running is not None and message["type"] == "http.disconnect":
                # The app was already listening when it deferred (Django
                # listens for the client leaving while its view runs): the
                # client leaving after its 303 is not the work's business.
                return await self._never()
            if message["type"] == "http.request":
                self._count_body(message)
                if self._always_defers and self._body_size > self.server.max_body_size:
                    # The endpoint would refuse to defer this body anyway:
                    # answer now, before the app buffers all of it.
                    await self.refuse(replies.body_too_large(self.server.max_body_size))
                    return {"type": "http.disconnect"}
            return message
        if self._replay:
            chunk = self._replay.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(self._replay)}
        # The client has its answer; the work must not see it leave.
        return await self._never()

    async def _never(self) -> Message:
        """Block until the task is cancelled (which only cancellation does)."""
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")  # pragma: no cover

    async def refuse(self, reply: replies.Reply) -> None:
        """Answer the client with ``reply`` now; the app's own answer is dropped."""
        if not self._response_started and not self.refused:
            self.refused = True
            self._response_started = True
            await send_reply(self._send, reply)

    async def send(self, message: Message) -> None:
        if self.refused:
            return
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

    async def defer(
        self,
        *,
        task: asyncio.Task[Any] | None = None,
        in_thread: bool = False,
        handing_off: bool = False,
    ) -> RunningOperation:
        """Turn the request into an operation; ``task`` is what cancels its work.

        By default the task calling this; ``in_thread`` marks work in a thread,
        which only its own checks of ``cancel_requested`` can stop.
        ``handing_off``: the work goes to a remote executor's worker, which
        starts the operation itself; otherwise it runs here, whatever the
        executor (the rest of a view cannot be sent elsewhere).
        """
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
                raise DeferralAborted(replies.body_too_large(limit))
            self._replay.append(bytes(message.get("body", b"")))
        if self._body_size > limit:
            raise DeferralAborted(replies.body_too_large(limit))

        principal = await server.principal_of(self.scope)
        key_digest, request_digest = await self._check_idempotency(principal)
        client = self.scope.get("client")
        quota = quota_key(principal, client[0] if client else None)
        refused = server.admission.admit(quota)  # counted before any other await
        if refused is not None:
            raise DeferralAborted(server.refuse(refused))
        try:
            # Async work here may start before its record is stored (see _create).
            op, stored = await self._create(
                principal, key_digest, request_digest, eager=not (in_thread or handing_off)
            )
        except BaseException:
            await self._release_slot()
            server.admission.release(quota)
            raise
        url = server.operation_url(self.scope, op.id)
        running = RunningOperation(server, op, url, quota, task, stored=stored)
        running._in_thread = in_thread
        self.running = running
        if telemetry.active():
            self._work_span = telemetry.WorkSpan(self.scope["headers"], op.id, op.endpoint)
            self._work_span.enter()
        server.track(running)
        _current_operation.set(running)
        if not self.decided.done():
            self.decided.set_result(running)
        # From here on the client has (or is about to get) its redirect; the
        # rest of the endpoint is the operation's work.
        if op.status is OperationStatus.QUEUED and not handing_off:
            await self._take_slot(op.id)
            if running.cancel_requested:
                raise asyncio.CancelledError
            if await server.transition(op.id, Event.START) is None:
                # Canceled (or declared lost) by another process while queued.
                running._cancel = True
                raise asyncio.CancelledError
        return running

    async def _take_slot(self, operation_id: str) -> None:
        slot = self.server.executor.slot(operation_id)
        await slot.__aenter__()
        self._slot = slot

    async def _release_slot(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            await slot.__aexit__(None, None, None)

    async def _create(
        self,
        principal: str,
        key_digest: str | None,
        request_digest: str | None,
        *,
        eager: bool,
    ) -> tuple[Operation, asyncio.Future[None] | None]:
        """The new record, and the future of its insert if that is still queued.

        Work that is ``eager`` (async, in this process) and gets a slot at
        once, without an ``Idempotency-Key``, does not wait for its record:
        the insert is queued (on stores that batch writes, SQLite) and the
        work starts; the middleware answers the client only once the insert
        is done, so every id given out is stored. Work that ends before the
        batch is written is stored with one write, its outcome, and the
        client gets the final response at once (protocol 3.6). A key keeps
        the order strict: a duplicate must be found before any work starts.
        """
        server = self.server
        # With a slot free, the operation is born running: one write, not two.
        immediate = server.executor.has_free_slot()
        now = time.time()
        op_id = new_operation_id(now)
        if immediate:
            await self._take_slot(op_id)
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
            respond_async=self.preferences.respond_async,
        )
        if immediate and eager and key_digest is None:
            stored = create_soon(server.store, op)
            if stored is not None:
                return op, stored
        try:
            await server.store.create(op)
        except DuplicateOperation as duplicate:
            # A concurrent twin won the race for the key: answer as it would.
            existing = await server.store.get(duplicate.existing_id)
            raise DeferralAborted(self._duplicate_reply(existing, request_digest)) from None
        except StoreUnavailable as exc:
            server.outages.failed("creating an operation (answered 503)", exc)
            raise DeferralAborted(replies.store_unavailable()) from None
        return op, None

    async def _check_idempotency(self, principal: str) -> tuple[str | None, str | None]:
        """Digests of (principal, key) and of the request; raises to answer a repeat."""
        try:
            key = parse_idempotency_key(self._key_values)
        except InvalidIdempotencyKey as exc:
            raise DeferralAborted(replies.bad_idempotency_key(str(exc))) from None
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
            raise DeferralAborted(self._duplicate_reply(existing, request_digest))
        return key_digest, request_digest

    def _duplicate_reply(
        self, existing: Operation | None, request_digest: str | None
    ) -> replies.Reply:
        if existing is None:  # purged between the two reads
            return replies.store_unavailable()
        if existing.request_digest != request_digest:
            return replies.idempotency_key_reused()
        origin = first_header(self.scope, b"origin")
        return self.server.answer(self.scope, existing, self.preferences, origin)

    # --- the child task -------------------------------------------------------------

    def child_done(self, task: asyncio.Task[None]) -> None:
        """The app returned or raised: if it never deferred, the middleware answers."""
        if not self.decided.done():
            self.decided.set_result(None)
        elif self.decided.cancelled() and not task.cancelled():
            task.exception()  # the requester left; nobody else will look

    async def run_app(self, app: ASGIApp) -> None:
        _current_request.set(self)
        self.app_task = asyncio.current_task()
        interrupted: BaseException | None = None
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            if self.running is None:
                raise
            interrupted = exc
        finally:
            self.app_task = None  # a reference cycle otherwise (see below)
        running = self.running
        if running is None:
            return
        if interrupted is None and running.cancel_requested and self._ended_in_error():
            # Frameworks turn what a view raises into a response (Django and
            # Flask answer 500; Django answers nothing for a view task it
            # cancelled): work asked to stop that ends so was canceled.
            interrupted = asyncio.CancelledError()
        running.work_done = True
        # The task, its context and this request reference each other through
        # the handle: drop that edge now, so that each request is freed by
        # reference counting rather than left to the cyclic garbage collector
        # (whose passes cost a tenth of a busy server's time).
        running._task = None
        if isinstance(interrupted, asyncio.CancelledError):
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        # Recording the outcome must not be cut short by a late cancellation
        # (a shutdown cancelling what still runs), or the operation would stay
        # "running" for ever. A DELETE no longer cancels once the work is
        # done, so this is rare: when it happens, the recording is finished
        # in a task of its own (recording twice is harmless: a transition
        # applies once). Not shielding up front saves a task on every start.
        try:
            await self._settle(running, interrupted)
        except asyncio.CancelledError:
            finishing = asyncio.get_running_loop().create_task(self._settle(running, interrupted))
            self.server.keep(finishing)
            raise

    async def _settle(self, running: RunningOperation, interrupted: BaseException | None) -> None:
        try:
            await self._release_slot()
            if isinstance(interrupted, HandedOff):
                return  # another process writes the outcome
            response = self._captured_response() if interrupted is None else None
            await self.server.record_outcome(running, response, interrupted)
            if self._work_span is not None:
                self._work_span.end(_outcome_name(response, interrupted, running))
        finally:
            self.server.untrack(running)

    def _ended_in_error(self) -> bool:
        return (
            self._captured_status is None
            or not self._captured_complete
            or self._captured_status >= 500
        )

    def captured_response(self) -> StoredResponse | None:
        """What the app answered, if it finished answering; None before that."""
        if self._captured_status is None or not self._captured_complete:
            return None
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

    def _captured_response(self) -> StoredResponse:
        captured = self.captured_response()
        if captured is None:
            return replies.stored_problem(
                500,
                "The operation failed",
                "The endpoint ended without a complete response.",
                kind="operation-failed",
            )
        return captured


def _outcome_name(
    response: StoredResponse | None, interrupted: BaseException | None, running: RunningOperation
) -> str:
    """How the work ended, for telemetry: as the record says, without reading it back."""
    if response is not None:
        return "succeeded" if response.status < 400 else "failed"
    if running.cancel_requested and isinstance(interrupted, asyncio.CancelledError):
        return "canceled"
    return "failed"


def _route_path(scope: Scope) -> str:
    # Group history by route template (/items/{id}), not by concrete path.
    route_path = getattr(scope.get("route"), "path", None)
    return route_path if isinstance(route_path, str) else str(scope["path"])


async def send_reply(send: Send, reply: replies.Reply, *, head: bool = False) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
    if not any(k == b"content-length" for k, _ in headers):
        headers.append((b"content-length", str(len(reply.body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else reply.body})
