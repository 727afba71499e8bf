"""How work ended, decided once: in the server's process and on a Celery worker alike.

The same endpoint, ending the same way, must end its operation the same way
wherever it ran (docs/protocol.md 7.1 and 8.2): ``canceled`` only when a
client asked for cancellation; a cancellation nobody asked for means the work
was lost; ``OperationCanceled`` raised by work that was not asked to stop is
a failure like any other exception. The worker side runs through
:func:`execute` against Redis, as a worker would; the in-process side through
the middleware.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
from fastapi import FastAPI

import repoll
from repoll import InProcessExecutor, MemoryStore, OperationCanceled, OperationStatus, PacingPolicy
from repoll.core._headers import new_operation_id
from repoll.core._model import Operation
from repoll.executors._celery_worker import execute
from repoll.server._endpoints import endpoint_name

pytestmark = pytest.mark.anyio

FAST = PacingPolicy(min_interval=0.05, default_interval=0.1, min_hold=0.2, max_hold=5)
SEEN: dict[str, object] = {}


@repoll.deferred
async def cancels_itself() -> dict:
    # A cancellation of the task doing the work that no client asked for: what
    # a shutdown, or a library cancelling its caller, looks like to the work.
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    await asyncio.sleep(0)
    return {"unreachable": True}


@repoll.deferred
async def gives_up() -> dict:
    raise OperationCanceled("the work stopped by itself")  # nobody asked it to


@repoll.deferred
def stops_when_asked() -> dict:
    operation = repoll.current_operation()
    assert operation is not None
    deadline = time.monotonic() + 5
    while not operation.cancel_requested and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        operation.raise_if_canceled()
    except OperationCanceled as exc:
        SEEN["operation_url"] = exc.operation_url
        raise
    return {"not": "canceled"}


@repoll.deferred
async def chatty() -> dict:
    for step in range(200):
        repoll.report_progress(step / 200, f"step {step}")
    await asyncio.sleep(0.2)  # the reports are written while the work goes on
    return {"steps": 200}


def _problem_type(body: bytes) -> str:
    return json.loads(body)["type"]


# --- in the server's process --------------------------------------------------------


async def _in_process(endpoint, *, cancel: bool = False) -> tuple[OperationStatus, str]:
    app = FastAPI()
    server = repoll.install(
        app, store=MemoryStore(), pacing=FAST, executor=InProcessExecutor(concurrency=2)
    )
    app.post("/work")(endpoint)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        final = await c.post("/work", follow_redirects=False)
        if final.status_code == 303:  # else the work ended before the answer: that is it
            url = final.headers["location"]
            if cancel:
                await c.delete(url)
            final = await c.get(url, headers={"prefer": "wait=5"})
        status = OperationStatus(final.headers["operation-status"])
    await server.close()
    return status, _problem_type(final.content)


# --- on a worker ----------------------------------------------------------------------


@pytest.fixture
async def store(redis_url, redis_prefix):
    from repoll.stores._redis import RedisStore

    backend = RedisStore(redis_url, prefix=redis_prefix)
    await backend.open()
    yield backend
    await backend.close()


def _operation(**changes) -> Operation:
    now = time.time()
    base = {
        "id": new_operation_id(),
        "principal": "",
        "endpoint": "POST /work",
        "status": OperationStatus.QUEUED,
        "created_at": now,
        "updated_at": now,
    }
    return Operation(**{**base, **changes})


def _payload(store, op: Operation, endpoint) -> dict:
    return {
        "operation": op.id,
        "operation_url": f"/operations/{op.id}",
        "endpoint": endpoint_name(endpoint.__wrapped__),
        "arguments": {},
        "status_code": 200,
        "store": f"{store.url}?prefix={store.prefix}",
        "retention": 60,
        "owner_ttl": 10,
        "heartbeat_interval": 1,
    }


async def _on_worker(store, endpoint, *, cancel: bool = False) -> tuple[OperationStatus, str]:
    op = _operation(cancel_requested=cancel)
    await store.create(op)
    await execute(_payload(store, op, endpoint))
    done = await store.get(op.id)
    assert done is not None
    assert done.response is not None
    return done.status, _problem_type(done.response.body)


# --- the same ending, wherever the work ran -------------------------------------------


async def test_a_bare_cancellation_means_lost_in_process_and_on_a_worker(store):
    expected = (OperationStatus.FAILED, "urn:repoll:problem:operation-lost")
    assert await _in_process(cancels_itself) == expected
    assert await _on_worker(store, cancels_itself) == expected


async def test_operation_canceled_nobody_asked_for_is_a_failure_everywhere(store):
    expected = (OperationStatus.FAILED, "urn:repoll:problem:operation-failed")
    assert await _in_process(gives_up) == expected
    assert await _on_worker(store, gives_up) == expected


async def test_a_requested_cancellation_is_canceled_everywhere(store):
    expected = (OperationStatus.CANCELED, "urn:repoll:problem:operation-canceled")
    assert await _in_process(stops_when_asked, cancel=True) == expected
    assert await _on_worker(store, stops_when_asked, cancel=True) == expected


async def test_operation_canceled_on_a_worker_carries_the_operation_url(store):
    SEEN.clear()
    op = _operation(cancel_requested=True)
    await store.create(op)
    await execute(_payload(store, op, stops_when_asked))
    assert SEEN["operation_url"] == f"/operations/{op.id}"


async def test_progress_reports_on_a_worker_are_coalesced(store, monkeypatch):
    writes: list[Operation] = []
    lock = threading.Lock()
    original = type(store).compare_and_set

    async def counting(self, operation, *, expected_version):
        with lock:
            writes.append(operation)
        return await original(self, operation, expected_version=expected_version)

    monkeypatch.setattr(type(store), "compare_and_set", counting)
    op = _operation()
    await store.create(op)
    await execute(_payload(store, op, chatty))
    done = await store.get(op.id)
    assert done is not None
    assert done.status is OperationStatus.SUCCEEDED
    assert done.message == "step 199"  # the newest report wins
    mine = [w for w in writes if w.id == op.id]
    # The claim, the outcome, and a handful of progress writes; not 200.
    assert len(mine) <= 6, len(mine)


@repoll.deferred
async def waits_long() -> dict:
    await asyncio.sleep(30)
    return {"waited": True}


async def test_a_cancel_announced_through_the_store_stops_async_work_on_a_worker(store):
    from repoll.executors._celery_worker import WorkerRuntime

    op = _operation()
    await store.create(op)
    runtime = WorkerRuntime(threads=2)
    running = asyncio.create_task(
        asyncio.to_thread(runtime.run, _payload(store, op, waits_long), rerun=False)
    )
    try:
        deadline = time.monotonic() + 10
        while (await store.get(op.id)).status is not OperationStatus.RUNNING:
            assert time.monotonic() < deadline, "the worker never started the work"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # the endpoint's task is waiting in its sleep
        # What a server does on DELETE for work it does not run itself.
        current = await store.get(op.id)
        await store.compare_and_set(
            current.evolve(cancel_requested=True, version=current.version + 1),
            expected_version=current.version,
        )
        await store.announce_cancel(op.id)
        await asyncio.wait_for(running, 10)
    finally:
        for backend in list(runtime._stores.values()):
            asyncio.run_coroutine_threadsafe(backend.close(), runtime.loop).result(5)
        runtime.loop.call_soon_threadsafe(runtime.loop.stop)
    done = await store.get(op.id)
    assert done.status is OperationStatus.CANCELED
    assert _problem_type(done.response.body) == "urn:repoll:problem:operation-canceled"


# --- the core's decision, and the executor abilities ---------------------------------


def test_the_core_decides_how_interrupted_work_ends_from_plain_values():
    from repoll.core._replies import interrupted_outcome
    from repoll.core._status import Ending, Event

    def event(ending, requested, raised=None):
        return interrupted_outcome(ending, cancel_requested=requested, raised=raised)[0]

    failure = RuntimeError("boom")
    assert event(Ending.CANCELLED, True) is Event.CANCEL
    assert event(Ending.STOPPED, True, OperationCanceled("x")) is Event.CANCEL
    assert event(Ending.CANCELLED, False) is Event.LOSE
    assert event(Ending.STOPPED, False, OperationCanceled("x")) is Event.FINISH_ERROR
    assert event(Ending.RAISED, True, failure) is Event.FINISH_ERROR  # its own outcome
    assert event(Ending.RAISED, False, failure) is Event.FINISH_ERROR
    assert event(Ending.NO_RESPONSE, False) is Event.FINISH_ERROR


def test_the_shell_translates_what_the_work_raised():
    from repoll.core._status import Ending
    from repoll.executors._work import ending_of

    assert ending_of(asyncio.CancelledError()) is Ending.CANCELLED
    assert ending_of(OperationCanceled("x")) is Ending.STOPPED
    assert ending_of(ValueError()) is Ending.RAISED
    assert ending_of(None) is Ending.NO_RESPONSE


def test_a_take_over_goes_through_the_state_table():
    from repoll._errors import InvalidTransition
    from repoll.core._status import Event, transition

    assert transition(OperationStatus.RUNNING, Event.TAKE_OVER) is OperationStatus.RUNNING
    for status in OperationStatus:
        if status is not OperationStatus.RUNNING:
            with pytest.raises(InvalidTransition):
                transition(status, Event.TAKE_OVER)


def test_remote_executors_are_known_by_their_protocol():
    from repoll import CeleryExecutor
    from repoll.executors._in_process import RemoteExecutor, remote_executor

    celery_executor = CeleryExecutor()
    assert remote_executor(celery_executor) is celery_executor
    assert isinstance(celery_executor, RemoteExecutor)
    assert remote_executor(InProcessExecutor()) is None

    class ElsewhereExecutor(InProcessExecutor):  # structural: no base class needed
        async def hand_off(self, running, call):
            return None

    elsewhere = ElsewhereExecutor()
    assert remote_executor(elsewhere) is elsewhere


async def test_a_view_that_defers_itself_runs_here_even_with_a_remote_executor():
    # The rest of a view cannot be sent to a Celery worker: it runs here, and
    # the operation is started here (not left "queued" for a worker that
    # never hears of it). Nothing is sent to the broker.
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from repoll import CeleryExecutor

    async def view(request):
        running = await repoll.defer()
        await asyncio.sleep(0.2)
        return JSONResponse({"id": running.id})

    app = Starlette(routes=[Route("/work", view, methods=["POST"])])
    executor = CeleryExecutor(broker="memory://")
    middleware = repoll.PollingMiddleware(app, store=repoll.MemoryStore(), executor=executor)
    transport = httpx.ASGITransport(app=middleware)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        started = await client.post("/work", headers={"prefer": "respond-async"})
        operation = started.headers["location"]
        status = await client.get(operation, headers={"prefer": "wait=0"})
        assert status.headers["operation-status"] == "running"
        final = await client.get(operation, headers={"prefer": "wait=5"})
        assert final.status_code == 200
        assert final.headers["operation-status"] == "succeeded"
    await middleware.server.close()
