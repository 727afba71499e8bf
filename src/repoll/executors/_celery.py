"""Deferred work on Celery workers, with the outcome in a shared store.

On the server, :class:`CeleryExecutor` takes over a deferred endpoint's call:
it encodes the endpoint's validated arguments as JSON (with pydantic, from the
endpoint's own annotations: the arguments travel, never the request's
credentials) and sends one Celery task. On a worker (``repoll worker
MODULE:APP``), the task decodes the arguments, calls the same endpoint
function, and writes progress and the final response to the store; every
server instance's held polls wake through the store's announcements.

Worker death: a worker says it is alive through the store (owner heartbeats).
If it dies mid-operation, the servers declare the operation lost once its
heartbeat is ``owner_ttl`` old (10 s by default), unless the endpoint was
declared ``@repoll.deferred(rerun=True)``: such tasks are acknowledged only
when done, so the broker hands them to another worker, which takes the
operation over.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import inspect
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from .._errors import require

require("celery", "celery")

import celery  # noqa: E402 - after the extra check, for its clear message
from pydantic import TypeAdapter  # noqa: E402

from .._errors import OperationCanceled, RepollError  # noqa: E402
from ..core import _replies as replies  # noqa: E402
from ..core._model import Operation, StoredResponse, clamp_progress  # noqa: E402
from ..core._status import Event, OperationStatus, finish_event  # noqa: E402
from ..stores._store import Store, store_from_url, update_operation  # noqa: E402

if TYPE_CHECKING:
    from ..server._deferral import RunningOperation

logger = logging.getLogger("repoll")
T = TypeVar("T")

TASK = "repoll.run_operation"
RERUN_TASK = "repoll.run_operation_rerunnable"
DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"


class NotTransferable(RepollError):
    """An endpoint argument that cannot travel to a worker (a Request, a database session)."""


def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(Any if annotation is inspect.Parameter.empty else annotation)


def encode_arguments(endpoint: Callable[..., Any], args: Any, kwargs: Any) -> dict[str, Any]:
    """The call's arguments as JSON-ready values, named, from the endpoint's annotations."""
    signature = inspect.signature(endpoint, eval_str=True)
    bound = signature.bind(*args, **kwargs)
    encoded = {}
    for name, value in bound.arguments.items():
        annotation = signature.parameters[name].annotation
        try:
            encoded[name] = _adapter(annotation).dump_python(value, mode="json")
        except Exception as exc:
            msg = (
                f"argument {name!r} of {endpoint.__qualname__} cannot travel to a Celery "
                f"worker ({type(value).__name__}); pass data, not objects such as a Request"
            )
            raise NotTransferable(msg) from exc
    return encoded


def decode_arguments(endpoint: Callable[..., Any], encoded: dict[str, Any]) -> dict[str, Any]:
    signature = inspect.signature(endpoint, eval_str=True)
    return {
        name: _adapter(signature.parameters[name].annotation).validate_python(value)
        for name, value in encoded.items()
    }


class CeleryExecutor:
    """An executor that sends deferred work to Celery workers.

    ``repoll.install(app, store="redis://...", executor=repoll.CeleryExecutor(broker=...))``.
    The store must be shared (Redis or PostgreSQL): the workers write to it.
    """

    def __init__(
        self,
        app: celery.Celery | None = None,
        *,
        broker: str = DEFAULT_BROKER,
        queue: str = "repoll",
        concurrency: int = 64,
    ) -> None:
        self.app = app or make_celery(broker)
        self.queue = queue
        self._concurrency = concurrency  # for Retry-After estimates only

    @property
    def concurrency(self) -> int:
        return self._concurrency

    @property
    def waiting(self) -> int:
        return 0

    def has_free_slot(self) -> bool:
        return False  # operations wait queued until a worker starts them

    def slot(self, operation_id: str) -> AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    async def run_sync(self, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn)

    def track(self, operation_id: str, task: asyncio.Task[None]) -> None:
        return None

    def cancel(self, operation_id: str) -> bool:
        return False  # the worker hears cancellations through the store

    async def shutdown(self, grace: float) -> list[str]:
        return []  # the work is the workers'; nothing runs here

    async def hand_off(
        self,
        running: RunningOperation,
        name: str,
        endpoint: Callable[..., Any],
        args: Any,
        kwargs: Any,
        *,
        status_code: int,
        rerun: bool,
    ) -> None:
        server = running.server
        if not server.store.shared:
            msg = "a Celery executor needs a shared store (redis:// or postgresql://)"
            raise RepollError(msg)
        payload = {
            "operation": running.id,
            "endpoint": name,
            "arguments": encode_arguments(endpoint, args, kwargs),
            "status_code": status_code,
            "store": _store_url(server.store),
            "retention": server.retention,
            "owner_ttl": server.owner_ttl,
            "heartbeat_interval": server.heartbeat_interval,
        }

        # In the broker the work has no owner: no server may declare it lost
        # just because the instance that accepted it went away.
        def release(op: Operation) -> Operation | None:
            return dataclasses.replace(op, owner=None) if op.owner else None

        await update_operation(server.store, running.id, release)
        task = RERUN_TASK if rerun else TASK
        await asyncio.to_thread(
            self.app.send_task, task, args=[json.dumps(payload)], queue=self.queue
        )


def _store_url(store: Store) -> str:
    url = getattr(store, "url", None)
    if not isinstance(url, str):
        msg = "the store must say how workers reach it (a `url` attribute)"
        raise RepollError(msg)
    prefix = getattr(store, "prefix", None)
    if prefix and prefix != "repoll:" and url.startswith(("redis://", "rediss://")):
        url += ("&" if "?" in url else "?") + f"prefix={prefix}"
    return url


# --- the worker side ---------------------------------------------------------------


WORKER_ID = f"worker:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class WorkerOperation:
    """What deferred work sees of its operation on a worker (``repoll.current_operation()``)."""

    def __init__(self, store: Store, operation: Operation) -> None:
        self.id = operation.id
        self.url = None
        self.store = store
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._cancel = threading.Event()
        self.record = operation
        self._task: asyncio.Task[Any] | None = None

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def raise_if_canceled(self) -> None:
        if self._cancel.is_set():
            msg = "cancellation was requested"
            raise OperationCanceled(msg)

    def report_progress(self, progress: float | None = None, message: str | None = None) -> None:
        value = clamp_progress(progress)

        def write() -> None:
            self._loop.create_task(self._write_progress(value, message))

        if threading.get_ident() == self._loop_thread:
            write()
        else:
            self._loop.call_soon_threadsafe(write)

    async def _write_progress(self, progress: float | None, message: str | None) -> None:
        def change(op: Operation) -> Operation | None:
            return op.with_progress(progress, message, now=time.time())

        with contextlib.suppress(RepollError):
            await update_operation(self.store, self.id, change)

    def request_cancel(self) -> None:
        self._cancel.set()
        if self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)


def make_celery(broker: str = DEFAULT_BROKER) -> celery.Celery:
    """A Celery app with repoll's two tasks registered."""
    app = celery.Celery("repoll", broker=broker)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        worker_enable_remote_control=False,  # no pidbox queue: workers need no names
    )

    runtime: list[WorkerRuntime] = []  # made on the first task, in the worker only

    def runtime_of() -> WorkerRuntime:
        if not runtime:
            runtime.append(WorkerRuntime(threads=max(int(app.conf.worker_concurrency or 4), 4)))
        return runtime[0]

    @app.task(name=TASK)  # type: ignore[untyped-decorator]
    def run_operation(payload: str) -> None:
        runtime_of().run(json.loads(payload), rerun=False)

    @app.task(name=RERUN_TASK, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
    def run_operation_rerunnable(payload: str) -> None:
        runtime_of().run(json.loads(payload), rerun=True)

    return app


class WorkerRuntime:
    """One event loop per worker process, on its own thread, shared by every task.

    Celery runs tasks on its threads; each hands its operation to this loop and
    waits. So a worker keeps one store connection (pool) per store URL, one
    subscription for cancellations and one heartbeat, whatever its concurrency.
    """

    def __init__(self, threads: int = 16) -> None:
        self.loop = asyncio.new_event_loop()
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="repoll-sync")
        self.loop.set_default_executor(self._threads)
        self._stores: dict[str, Store] = {}
        self._lock: asyncio.Lock | None = None
        self.operations: dict[str, WorkerOperation] = {}
        threading.Thread(target=self.loop.run_forever, name="repoll-worker", daemon=True).start()

    def run(self, payload: dict[str, Any], *, rerun: bool) -> None:
        """Run one operation (blocking the calling thread until it ends)."""
        future = asyncio.run_coroutine_threadsafe(
            execute(payload, rerun=rerun, runtime=self), self.loop
        )
        future.result()

    async def store_for(self, payload: dict[str, Any]) -> Store:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            url = payload["store"]
            store = self._stores.get(url)
            if store is None:
                store = store_from_url(url)
                await store.open()
                await store.subscribe(self._on_event)
                ttl, interval = payload["owner_ttl"], payload["heartbeat_interval"]
                await store.heartbeat(WORKER_ID, ttl=ttl)
                self.loop.create_task(self._beat(store, ttl, interval))
                self._stores[url] = store
            return store

    def _on_event(self, kind: str, operation_id: str) -> None:
        operation = self.operations.get(operation_id)
        if kind == "cancel" and operation is not None:
            operation.request_cancel()
        elif kind == "resync":
            # The subscription dropped: cancellations sent meanwhile are lost,
            # but the records still say whether one was asked for.
            self.loop.create_task(self._catch_up())

    async def _catch_up(self) -> None:
        for operation in list(self.operations.values()):
            try:
                record = await operation.store.get(operation.id)
            except RepollError:
                return  # the store is down again; the next resync retries
            if record is not None and record.cancel_requested:
                operation.request_cancel()

    @staticmethod
    async def _beat(store: Store, ttl: float, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(RepollError):
                await store.heartbeat(WORKER_ID, ttl=ttl)


async def execute(
    payload: dict[str, Any], *, rerun: bool = False, runtime: WorkerRuntime | None = None
) -> None:
    """Run one operation on this worker and store its outcome."""
    from ..server._deferral import ENDPOINTS, _current_operation  # noqa: PLC0415 - avoid a cycle

    if runtime is not None:
        store = await runtime.store_for(payload)
    else:  # a one-off: its own connection, for tests and scripts
        store = store_from_url(payload["store"])
        await store.open()
        await store.heartbeat(WORKER_ID, ttl=payload["owner_ttl"])
    try:
        live = await store.live_owners()
        claimed = await _claim(store, payload["operation"], live, rerun=rerun)
        if claimed is None:
            return  # ended already (canceled, or declared lost): nothing to do
        operation = WorkerOperation(store, claimed)
        if runtime is not None:
            runtime.operations[operation.id] = operation
        try:
            if claimed.cancel_requested:
                operation.request_cancel()
            endpoint = ENDPOINTS.get(payload["endpoint"])
            response = await _call(endpoint, payload, operation, _current_operation)
            await _record(store, operation, response, payload["retention"])
        finally:
            if runtime is not None:
                runtime.operations.pop(operation.id, None)
    finally:
        if runtime is None:
            await store.close()


async def _claim(
    store: Store, operation_id: str, live: set[str], *, rerun: bool
) -> Operation | None:
    def change(op: Operation) -> Operation | None:
        if op.status is OperationStatus.QUEUED:
            started = op.apply(Event.START, now=time.time(), retention=0)
            return dataclasses.replace(started, owner=WORKER_ID)
        if (
            rerun
            and op.status is OperationStatus.RUNNING
            and op.owner not in live
            and op.owner != WORKER_ID
        ):
            # Redelivered after its worker died: take it over and run it again.
            return dataclasses.replace(
                op,
                owner=WORKER_ID,
                message="Re-run after a worker stopped.",
                updated_at=time.time(),
            )
        return None

    after = await update_operation(store, operation_id, change)
    if after is None or after.owner != WORKER_ID or after.status.is_terminal:
        return None
    return after


async def _call(
    endpoint: Callable[..., Any] | None,
    payload: dict[str, Any],
    operation: WorkerOperation,
    current: contextvars.ContextVar[Any],
) -> tuple[StoredResponse, BaseException | None]:
    """The endpoint's response (or the problem that replaces it) and what it raised."""
    if endpoint is None:
        msg = f"this worker does not know the endpoint {payload['endpoint']!r}"
        return replies.lost_response(msg), RepollError(msg)
    current.set(operation)
    try:
        arguments = decode_arguments(endpoint, payload["arguments"])
        if inspect.iscoroutinefunction(endpoint):
            task = asyncio.get_running_loop().create_task(endpoint(**arguments))
            operation._task = task
            result = await task
        else:
            context = contextvars.copy_context()
            call = functools.partial(context.run, functools.partial(endpoint, **arguments))
            result = await asyncio.get_running_loop().run_in_executor(None, call)
    except (asyncio.CancelledError, OperationCanceled) as exc:
        return replies.canceled_response(), exc
    except Exception as exc:
        http = _http_exception_response(exc)
        if http is not None:
            return http, None
        logger.error("operation %s: the endpoint raised", operation.id, exc_info=exc)
        return replies.handler_error_response(exc), exc
    return _response_of(endpoint, result, payload["status_code"]), None


def _http_exception_response(exc: Exception) -> StoredResponse | None:
    # Starlette's and FastAPI's HTTPException answer as their default handler would.
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int) or type(exc).__name__ != "HTTPException":
        return None
    body = json.dumps({"detail": getattr(exc, "detail", None)}).encode()
    headers = tuple((getattr(exc, "headers", None) or {}).items())
    return StoredResponse(status, (("content-type", "application/json"), *headers), body)


def _response_of(endpoint: Callable[..., Any], result: Any, status_code: int) -> StoredResponse:
    from starlette.responses import Response  # noqa: PLC0415 - server extra

    if isinstance(result, Response):
        headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in result.raw_headers)
        return StoredResponse(result.status_code, headers, bytes(result.body))
    annotation = inspect.signature(endpoint, eval_str=True).return_annotation
    body = _adapter(annotation).dump_json(result)
    return StoredResponse(
        status_code,
        (("content-type", "application/json"), ("content-length", str(len(body)))),
        body,
    )


async def _record(
    store: Store,
    operation: WorkerOperation,
    outcome: tuple[StoredResponse, BaseException | None],
    retention: float,
) -> None:
    response, raised = outcome
    if isinstance(raised, asyncio.CancelledError | OperationCanceled):
        event = Event.CANCEL
    elif raised is not None:
        event = Event.FINISH_ERROR
    else:
        event = finish_event(response.status)

    def change(op: Operation) -> Operation | None:
        if op.status.is_terminal or op.owner != WORKER_ID:
            return None  # someone else decided (declared lost, taken over)
        return op.apply(event, now=time.time(), retention=retention, response=response)

    await update_operation(store, operation.id, change)


def run_worker(broker: str, *, queue: str = "repoll", concurrency: int = 4) -> None:
    """Consume repoll's tasks in this process (threads, so SIGKILL stops the work too)."""
    app = make_celery(broker)
    app.worker_main(
        [
            "worker",
            "--queues",
            queue,
            "--pool",
            "threads",
            "--concurrency",
            str(concurrency),
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
