"""Scale, in one process, through the ASGI interface (no sockets):

* N operations held in long-poll at once: memory per held poll (tracemalloc:
  Python allocations of the held requests and their operations' waits), and
  the time from their work finishing to every held poll being answered;
* status-lookup latency with M operations stored in SQLite.

Sockets are left out on purpose: their cost is the server's (uvicorn's) and the
kernel's, the same for any long-poll, and 10,000 loopback connections would
measure the machine's limits rather than repoll's.
"""

from __future__ import annotations

import asyncio
import gc
import random
import tempfile
import time
import tracemalloc
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import repoll
from repoll import OperationStatus
from repoll.core._headers import new_operation_id
from repoll.core._model import Operation, StoredResponse

from ._common import percentile


async def _call(
    app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    start: dict[str, Any] = {}
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received:  # as ASGI servers do: block once the body is read
            await asyncio.get_running_loop().create_future()
        received = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)

    path, _, query = path.partition("?")  # a Location may carry ?hop=N
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "headers": headers or [],
        "query_string": query.encode(),
        "scheme": "http",
        "server": ("bench", 80),
        "client": ("bench", 1),
        "http_version": "1.1",
        "asgi": {"version": "3.0"},
    }
    await app(scope, receive, send)
    return start


def _location(start: dict[str, Any]) -> str:
    return dict(start["headers"])[b"location"].decode()


async def held_polls(count: int, store: str) -> dict[str, object]:
    gate = asyncio.Event()
    finished_at: list[float] = []

    @repoll.deferred
    async def gated(_: Request) -> JSONResponse:
        await gate.wait()
        finished_at.append(time.perf_counter())
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/gated", gated, methods=["POST"])])
    server = repoll.install(
        app,
        store=store,
        executor=repoll.InProcessExecutor(concurrency=count),
        limits=repoll.Limits(
            max_held_polls=count,
            max_operations=count,
            max_operations_per_principal=count,
        ),
    )
    locations = [_location(await _call(app, "POST", "/gated")) for _ in range(count)]

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    answered_at: list[float] = []

    async def poll(location: str) -> int:
        start = await _call(app, "GET", location, [(b"prefer", b"wait=60")])
        answered_at.append(time.perf_counter())
        return int(start["status"])

    polls = [asyncio.create_task(poll(loc)) for loc in locations]
    deadline = time.monotonic() + 60
    while server.held_polls < count:
        if time.monotonic() > deadline or any(task.done() for task in polls):
            msg = f"only {server.held_polls} of {count} polls were held"
            raise RuntimeError(msg)
        await asyncio.sleep(0.01)
    # A hold is counted before its first read of the record: let the reads
    # queued before this one finish (the store answers in order), so that
    # every poll is really waiting when the work is released.
    await server.store.get("x" * 22)
    await asyncio.sleep(0.1)
    gc.collect()
    held_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()

    released = time.perf_counter()
    gate.set()
    statuses = await asyncio.gather(*polls)
    done = time.perf_counter()
    await server.close()
    return {
        "store": store.split(":")[0],
        "held": count,
        "all_200": all(s == 200 for s in statuses),
        "bytes_per_held_poll": held_bytes / count,
        "release_all_s": done - released,
        "last_work_to_last_answer_s": max(answered_at) - max(finished_at),
    }


async def lookup_latency(stored: int, samples: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        store = repoll.SQLiteStore(f"{tmp}/ops.sqlite3")
        await store.open()
        now = time.time()
        ids = []
        response = StoredResponse(200, (("content-type", "application/json"),), b'{"ok":true}')
        for chunk in range(0, stored, 1000):
            batch = []
            for _ in range(min(1000, stored - chunk)):
                op = Operation(
                    id=new_operation_id(),
                    principal="",
                    endpoint="POST /x",
                    status=OperationStatus.SUCCEEDED,
                    created_at=now,
                    updated_at=now,
                    finished_at=now,
                    expires_at=now + 3600,
                    response=response,
                )
                ids.append(op.id)
                batch.append(store.create(op))
            await asyncio.gather(*batch)
        await store.close()

        app = Starlette()
        server = repoll.install(app, store=f"sqlite:///{tmp}/ops.sqlite3")
        server.store._cache_size = 0  # measure the database, not the cache
        rng = random.Random(7)
        latencies = []
        for op_id in rng.sample(ids, samples):
            started = time.perf_counter()
            start = await _call(app, "GET", f"/operations/{op_id}")
            latencies.append((time.perf_counter() - started) * 1000)
            assert start["status"] == 200
        await server.close()
    return {
        "stored": stored,
        "samples": samples,
        "lookup_p50_ms": percentile(latencies, 50),
        "lookup_p95_ms": percentile(latencies, 95),
        "lookup_max_ms": max(latencies),
    }


def run(held: int, stored: int) -> tuple[list[dict[str, object]], dict[str, object]]:
    rows = []
    for store in ("memory://", "sqlite://"):
        rows.append(asyncio.run(held_polls(held, store)))
    lookup = asyncio.run(lookup_latency(stored, samples=min(1000, stored)))
    return rows, lookup


HELD_COLUMNS = [
    ("store", "store", ""),
    ("held", "held polls", "d"),
    ("all_200", "all answered 200", ""),
    ("bytes_per_held_poll", "bytes/held poll", ".0f"),
    ("release_all_s", "release all s", ".3f"),
    ("last_work_to_last_answer_s", "last work->answer s", ".3f"),
]
LOOKUP_COLUMNS = [
    ("stored", "stored", "d"),
    ("samples", "samples", "d"),
    ("lookup_p50_ms", "p50 ms", ".3f"),
    ("lookup_p95_ms", "p95 ms", ".3f"),
    ("lookup_max_ms", "max ms", ".3f"),
]
