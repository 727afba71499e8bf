"""Deferred work on Celery workers: the worker's side (``repoll worker MODULE:APP``).

A server's :class:`~repoll.executors._celery.CeleryExecutor` sends one task
per operation; here a worker claims the operation in the store, decodes the
arguments, calls the same endpoint function the server would have called,
and writes progress and the outcome to the store, where every server
instance's held polls see it.

The work must not be able to tell where it runs. So it gets the same handle
as in the server's process (:class:`~repoll.executors._work.WorkHandle`:
the cancel flag, ``raise_if_canceled`` with the operation URL, coalesced
progress), and how it ended is decided by the same core function
(``_replies.interrupted_outcome``): ``canceled`` only when a client asked
for cancellation, ``failed``/``operation-lost`` for a cancellation nobody
asked for.

Claiming goes through the state table (``core/_status``): a queued operation
is started (``START``), and a running one whose worker died is taken over
(``TAKE_OVER``) only when its endpoint was declared safe to run again. The
owner is not a state: it says which process answers for the work, and is
set beside the event.

Worker death: a worker says it is alive through the store (owner
heartbeats). If it dies mid-operation, the servers declare the operation
lost once its heartbeat is ``owner_ttl`` old, unless the endpoint was
declared ``@repoll.deferred(rerun=True)``: such tasks are acknowledged only
when done, so the broker hands them to another worker, which takes the
operation over.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
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
from typing import Any

from .._errors import MissingExtraError, RepollError
from ..core import _replies as replies
from ..core._model import Operation, StoredResponse
from ..core._status import Event, OperationStatus, finish_event
from ..stores._store import SharedStore, Store, shared_store_from_url, update_operation
from ._work import WorkHandle, outcome_of_raised

try:
    import celery
except ModuleNotFoundError as exc:
    raise MissingExtraError("celery", "celery") from exc

from ._celery import (
    DEFAULT_BROKER,
    RERUN_TASK,
    TASK,
    decode_arguments,
    type_adapter,
)

logger = logging.getLogger("repoll")

WORKER_ID = f"worker:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class WorkerOperation(WorkHandle):
    """What deferred work sees of its operation on a worker (``repoll.current_operation()``).

    The handle work has in the server's process too; on a worker, progress
    is written to the store directly.
    """

    def __init__(self, store: Store, operation: Operation, url: str | None = None) -> None:
        super().__init__(operation, url, None)  # the task is set once the work starts
        self.store = store

    async def _store_progress(self, progress: float | None, message: str | None) -> None:
        def change(op: Operation) -> Operation | None:
            return op.with_progress(progress, message, now=time.time())

        after = await update_operation(self.store, self.id, change, known=self.record)
        if after is not None:
            self.record = after


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
        self._stores: dict[str, SharedStore] = {}
        self._lock: asyncio.Lock | None = None
        self.operations: dict[str, WorkerOperation] = {}
        threading.Thread(target=self.loop.run_forever, name="repoll-worker", daemon=True).start()

    def run(self, payload: dict[str, Any], *, rerun: bool) -> None:
        """Run one operation (blocking the calling thread until it ends)."""
        future = asyncio.run_coroutine_threadsafe(
            execute(payload, rerun=rerun, runtime=self), self.loop
        )
        future.result()

    async def store_for(self, payload: dict[str, Any]) -> SharedStore:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            url = payload["store"]
            store = self._stores.get(url)
            if store is None:
                store = shared_store_from_url(url)
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
    async def _beat(store: SharedStore, ttl: float, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(RepollError):
                await store.heartbeat(WORKER_ID, ttl=ttl)


async def execute(
    payload: dict[str, Any], *, rerun: bool = False, runtime: WorkerRuntime | None = None
) -> None:
    """Run one operation on this worker and store its outcome."""
    from ..server._deferral import _current_operation  # noqa: PLC0415 - avoid a cycle
    from ..server._endpoints import ENDPOINTS  # noqa: PLC0415

    if runtime is not None:
        store = await runtime.store_for(payload)
    else:  # a one-off: its own connection, for tests and scripts
        store = shared_store_from_url(payload["store"])
        await store.open()
        await store.heartbeat(WORKER_ID, ttl=payload["owner_ttl"])
    try:
        live = await store.live_owners()
        claimed = await _claim(store, payload["operation"], live, rerun=rerun)
        if claimed is None:
            return  # ended already (canceled, or declared lost): nothing to do
        operation = WorkerOperation(store, claimed, payload.get("operation_url"))
        if runtime is not None:
            runtime.operations[operation.id] = operation
        try:
            if claimed.cancel_requested:
                operation.request_cancel()
            endpoint = ENDPOINTS.get(payload["endpoint"])
            outcome = await _call(endpoint, payload, operation, _current_operation)
            await _record(store, operation, outcome, payload["retention"])
        finally:
            if runtime is not None:
                runtime.operations.pop(operation.id, None)
    finally:
        if runtime is None:
            await store.close()


async def _claim(
    store: Store, operation_id: str, live: set[str], *, rerun: bool
) -> Operation | None:
    """Make this worker the operation's owner, or None if it is not this worker's to run."""

    def change(op: Operation) -> Operation | None:
        now = time.time()
        if op.status is OperationStatus.QUEUED:
            return op.apply(Event.START, now=now, retention=0).evolve(owner=WORKER_ID)
        if (
            rerun
            and op.status is OperationStatus.RUNNING
            and op.owner not in live
            and op.owner != WORKER_ID
        ):
            # Redelivered after its worker died: take it over and run it again.
            taken = op.apply(
                Event.TAKE_OVER, now=now, retention=0, message="Re-run after a worker stopped."
            )
            return taken.evolve(owner=WORKER_ID)
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
) -> tuple[StoredResponse | None, BaseException | None]:
    """The endpoint's response, or None and what it raised instead."""
    if endpoint is None:
        msg = f"this worker does not know the endpoint {payload['endpoint']!r}"
        logger.error("operation %s: %s", operation.id, msg)
        return replies.lost_response(msg), None
    current.set(operation)
    loop = asyncio.get_running_loop()
    try:
        arguments = decode_arguments(endpoint, payload["arguments"])
        if inspect.iscoroutinefunction(endpoint):
            task = loop.create_task(endpoint(**arguments))
            operation._task = task
            if operation.cancel_requested:
                # Asked before it started: stop it at its first await, as the
                # server does with work canceled while waiting for a slot.
                task.cancel()
            try:
                result = await task
            except asyncio.CancelledError:
                task.cancel()  # if this worker's own task was cancelled, stop the work too
                raise
        else:
            context = contextvars.copy_context()
            call = functools.partial(context.run, functools.partial(endpoint, **arguments))
            operation._in_thread = True
            result = await loop.run_in_executor(None, call)
    except (asyncio.CancelledError, Exception) as exc:
        http = _http_exception_response(exc)
        if http is not None:
            return http, None
        return None, exc
    finally:
        operation.work_done = True
        operation._task = None
    return _response_of(endpoint, result, payload["status_code"]), None


def _http_exception_response(exc: BaseException) -> StoredResponse | None:
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
    body = type_adapter(annotation).dump_json(result)
    return StoredResponse(
        status_code,
        (("content-type", "application/json"), ("content-length", str(len(body)))),
        body,
    )


async def _record(
    store: Store,
    operation: WorkerOperation,
    outcome: tuple[StoredResponse | None, BaseException | None],
    retention: float,
) -> None:
    """Write how the work ended, decided as the server decides it for its own work."""
    response, raised = outcome
    message = None
    if response is not None:
        event = finish_event(response.status)
    else:
        event, response, message = outcome_of_raised(
            raised, cancel_requested=operation.cancel_requested
        )
        if event is Event.FINISH_ERROR:
            logger.error("operation %s: the endpoint raised", operation.id, exc_info=raised)

    def change(op: Operation) -> Operation | None:
        if op.status.is_terminal or op.owner != WORKER_ID:
            return None  # someone else decided (declared lost, taken over)
        return op.apply(
            event, now=time.time(), retention=retention, response=response, message=message
        )

    await update_operation(store, operation.id, change, known=operation.record)


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
