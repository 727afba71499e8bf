"""What an attacker or a bad day does to one server process, and what must hold.

Each test replays a failure found by trying to break the server (a frozen
event loop, leaked executor slots, unlimited starts, abandoned streams) and
checks the resource it took is given back on every path.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time

import httpx
import pytest
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from tests.faulty import FaultyStore

import repoll
from repoll import InProcessExecutor, MemoryStore, PacingPolicy, StoreUnavailable
from repoll.cli._main import running_server
from repoll.server._deferral import DeferrableRequest, RunningOperation

pytestmark = pytest.mark.anyio

FAST = PacingPolicy(min_interval=0.05, default_interval=0.1, min_hold=0.2, max_hold=5)


def build(store=None, **options):
    app = FastAPI()
    store = store if store is not None else FaultyStore(MemoryStore())
    executor = options.pop("executor", InProcessExecutor(concurrency=4))
    server = repoll.install(app, store=store, pacing=FAST, executor=executor, **options)
    gate = asyncio.Event()

    @app.post("/quick")
    @repoll.deferred
    async def quick() -> dict:
        return {"done": True}

    @app.post("/gated")
    @repoll.deferred
    async def gated() -> dict:
        repoll.report_progress(0.5, "waiting")
        await gate.wait()
        return {"gate": "opened"}

    @app.post("/stubborn")
    @repoll.deferred
    def stubborn() -> dict:
        time.sleep(2)  # sync work that never checks for cancellation
        return {"stubborn": True}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True}

    return app, server, store, gate


def client(app, address: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://t")


async def _assert_new_work_runs_at_once(c: httpx.AsyncClient) -> None:
    started = time.monotonic()
    final = await c.post("/quick", headers={"prefer": "wait=5"})
    assert final.status_code == 200, final.text
    assert time.monotonic() - started < 1.0


async def test_failed_starts_give_back_every_slot_and_admission():
    app, server, store, _ = build()
    async with client(app) as c:
        # 1,000 starts that fail after admission and after taking a slot, in
        # every way a start can fail: the store down, the store refusing, a
        # raced idempotency key, a principal function that raises.
        store.fail_create = StoreUnavailable
        for _ in range(300):
            assert (await c.post("/quick")).status_code == 503
        store.fail_create = None
        store.down = False
        store.fail_create = RuntimeError
        for _ in range(300):
            with pytest.raises(RuntimeError):
                await c.post("/quick")
        store.fail_create = None
        for round_ in range(10):
            key = {"idempotency-key": f'"race-{round_}"'}
            answers = await asyncio.gather(*(c.post("/gated", headers=key) for _ in range(40)))
            assert {a.status_code for a in answers} == {303}
            assert len({a.headers["location"] for a in answers}) == 1
        assert server.admission.operations == 10  # the ten gated ones, nothing leaked
        assert server.executor.has_free_slot() is False  # 4 slots, 10 gated operations
    app, server, store, _gate = build()
    async with client(app) as c:
        for _ in range(300):
            # 4,400 digits: past any budget; and a 400-digit wait that saturates.
            wait = {"prefer": "wait=" + "9" * 4400}
            assert (await c.post("/quick", headers=wait)).status_code in {200, 303}
        for _ in range(100):  # the last ones may still be writing their outcome
            if server.admission.operations == 0:
                break
            await asyncio.sleep(0.01)
        assert server.admission.operations == 0
        assert server.executor.has_free_slot()
        await _assert_new_work_runs_at_once(c)
    await server.close()


async def test_a_principal_function_that_raises_takes_nothing():
    def principal(_request):
        msg = "the identity provider is down"
        raise RuntimeError(msg)

    app, server, _, _ = build(principal=principal)
    async with client(app) as c:
        for _ in range(50):
            with pytest.raises(RuntimeError):
                await c.post("/quick")
    assert server.admission.operations == 0
    assert server.executor.has_free_slot()
    await server.close()


async def test_a_huge_prefer_is_answered_fast_and_the_server_stays_responsive():
    app, server, _, _ = build()
    async with client(app) as c:
        hostile = {"prefer": "a" * 100_000 + '"'}
        started = time.monotonic()
        answers = await asyncio.gather(
            c.post("/quick", headers=hostile), c.get("/healthz"), c.get("/operations/x" * 2)
        )
        assert time.monotonic() - started < 0.5
        # Deferred and answered: 303, or the outcome itself when the instant
        # work had ended before the answer was written (protocol 3.6).
        assert answers[0].status_code in {200, 303}
        assert answers[0].headers["operation-status"] in {"running", "succeeded"}
        assert answers[1].status_code == 200
        digits = await c.post("/quick", headers={"prefer": "wait=" + "9" * 10_000})
        assert digits.status_code in {200, 303}
    await server.close()


@pytest.fixture(params=["memory", "sqlite"])
def real_store(request, tmp_path):
    # SQLite answers from another thread, so every await really suspends:
    # that is where check-then-count races show.
    if request.param == "memory":
        return FaultyStore(MemoryStore())
    return FaultyStore(repoll.SQLiteStore(tmp_path / "ops.sqlite3"))


async def test_concurrent_starts_from_one_principal_admit_exactly_the_limit(real_store):
    app, server, _, gate = build(
        store=real_store, limits=repoll.Limits(max_operations_per_principal=100)
    )
    bearer = {"authorization": "Bearer mallory"}
    async with client(app) as c:
        answers = await asyncio.gather(
            *(c.post("/gated", headers={**bearer, "idempotency-key": str(i)}) for i in range(400))
        )
        statuses = [a.status_code for a in answers]
        assert statuses.count(303) == 100
        assert statuses.count(429) == 300
        assert len(await server.store.unfinished()) == 100
        gate.set()
    await server.close()


async def test_junk_cookies_do_not_mint_principals():
    app, server, _, gate = build(limits=repoll.Limits(max_operations_per_principal=100))
    async with client(app) as c:
        answers = await asyncio.gather(
            *(c.post("/gated", headers={"cookie": f"junk={i}; theme=x{i}"}) for i in range(300))
        )
        assert [a.status_code for a in answers].count(303) == 100
        # Anonymous clients are counted by address: another address has its own quota.
        async with client(app, "10.9.8.7") as other:
            assert (await other.post("/gated")).status_code == 303
        gate.set()
    await server.close()


async def test_held_polls_never_exceed_their_limit(real_store):
    app, server, _, gate = build(store=real_store, limits=repoll.Limits(max_held_polls=10))
    highest = 0

    async def watch():
        nonlocal highest
        while True:
            highest = max(highest, server.held_polls)
            await asyncio.sleep(0)

    async with client(app) as c:
        location = (await c.post("/gated")).headers["location"]
        watcher = asyncio.get_running_loop().create_task(watch())
        started = time.monotonic()
        polls = [
            asyncio.get_running_loop().create_task(c.get(location, headers={"prefer": "wait=3"}))
            for _ in range(40)
        ]
        # The 30 polls past the limit are answered at once; the 10 held wait.
        for _ in range(250):
            if sum(p.done() for p in polls) >= 30:
                break
            await asyncio.sleep(0.01)
        answered_early = sum(p.done() for p in polls)
        gate.set()
        await asyncio.gather(*polls)
        watcher.cancel()
        assert highest == 10
        assert answered_early == 30
        assert time.monotonic() - started < 3
        assert server.held_polls == 0
    await server.close()


async def test_bodies_over_the_limit_are_refused_before_the_app_reads_them():
    app, server, _, _ = build(limits=repoll.Limits(max_body_size=1024 * 1024))

    @app.post("/upload")
    @repoll.deferred
    async def upload(body: dict) -> dict:
        return {"keys": len(body)}

    sent = 0

    async def stream():
        nonlocal sent
        for _ in range(200):  # 200 MiB offered
            sent += 1
            yield b"x" * (1024 * 1024)

    async with client(app) as c:
        declared = await c.post(
            "/upload", content=b"{}", headers={"content-length": str(200 * 1024 * 1024)}
        )
        assert declared.status_code == 413
        streamed = await c.post("/upload", content=stream())
        assert streamed.status_code == 413
        assert streamed.json()["type"] == "urn:repoll:problem:body-too-large"
        assert sent <= 3  # refused at the limit, not after 200 MiB
        assert len(server.store) == 0
    await server.close()


@pytest.mark.parametrize("cors_inside", [True, False])
async def test_replays_have_one_allow_origin_with_the_apps_own_cors(cors_inside):
    app = FastAPI()
    if cors_inside:  # added before install: inside repoll, so its headers are captured
        app.add_middleware(CORSMiddleware, allow_origins=["https://app.example"])
    server = repoll.install(app, store=MemoryStore(), cors_origins=["https://app.example"])
    if not cors_inside:
        app.add_middleware(CORSMiddleware, allow_origins=["https://app.example"])

    @app.post("/quick")
    @repoll.deferred
    async def quick() -> dict:
        return {"done": True}

    origin = {"origin": "https://app.example"}
    async with client(app) as c:
        start = await c.post("/quick", headers={**origin, "prefer": "respond-async"})
        location = start.headers.get("location") or start.headers["content-location"]
        replay = await c.get(location, headers={**origin, "prefer": "wait=5"})
        assert replay.status_code == 200
        assert replay.headers.get_list("access-control-allow-origin") == ["https://app.example"]
        no_origin = await c.get(location)
        assert "access-control-allow-origin" not in no_origin.headers
    await server.close()


async def test_failed_progress_writes_are_logged_not_leaked(caplog):
    app, server, store, gate = build()
    store.fail_progress = StoreUnavailable
    with caplog.at_level(logging.WARNING, logger="repoll"):
        async with client(app) as c:
            location = (await c.post("/gated")).headers["location"]
            await asyncio.sleep(0.1)
            store.fail_progress = None
            gate.set()
            final = await c.get(location, headers={"prefer": "wait=5"})
            assert final.status_code == 200
    assert "progress not stored" in caplog.text
    await server.close()


async def test_an_outcome_waits_for_the_store_to_come_back():
    app, server, store, gate = build()
    async with client(app) as c:
        location = (await c.post("/gated")).headers["location"]
        store.down = True
        gate.set()
        await asyncio.sleep(1.5)  # the work ended; its outcome waits
        store.down = False
        final = await c.get(location, headers={"prefer": "wait=5"})
        assert final.status_code == 200
        assert final.json() == {"gate": "opened"}
        assert server.admission.operations == 0
    await server.close()


async def test_an_outcome_the_store_refuses_becomes_a_problem_not_a_hang():
    app, server, store, _ = build()
    store.refuse_outcomes = 1
    async with client(app) as c:
        final = await c.post("/quick", headers={"prefer": "wait=5"})
        assert final.status_code == 500
        assert final.headers["operation-status"] == "failed"
        assert final.json()["type"] == "urn:repoll:problem:outcome-not-stored"
    await server.close()


# --- with a real server: clients that leave --------------------------------------------


def _raw(url: str, request: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(request)
    return sock


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def real_server():
    app, server, store, gate = build(
        store=FaultyStore(MemoryStore()), limits=repoll.Limits(max_held_polls=1000)
    )
    with running_server(app) as url:
        try:
            yield url, server, store, gate
        finally:
            gate.set()


@pytest.mark.slow
def test_abandoned_event_streams_leave_nothing_behind(real_server):
    url, server, store, _ = real_server
    location = httpx.post(url + "/gated", timeout=10).headers["location"]
    request = f"GET {location} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n"
    sockets = [_raw(url, request.encode()) for _ in range(300)]
    for sock in sockets:
        assert b"text/event-stream" in sock.recv(4096)
    assert _wait_for(lambda: server.held_polls == 300, 5)
    for sock in sockets:
        sock.close()
    assert _wait_for(lambda: server.held_polls == 0, 5)
    reads = store.calls["get"]
    time.sleep(1.5)
    assert store.calls["get"] == reads  # nobody keeps reading for the streams that left
    # A poll is still held, not shed: nothing is left counting against the limit.
    started = time.monotonic()
    poll = httpx.get(url + location, headers={"prefer": "wait=1"}, timeout=10)
    assert poll.status_code == 303
    assert time.monotonic() - started > 0.9


@pytest.mark.slow
def test_a_start_waiting_with_prefer_wait_ends_when_its_client_leaves(real_server):
    url, server, _, _ = real_server
    sock = _raw(
        url,
        b"POST /gated HTTP/1.1\r\nHost: t\r\nPrefer: wait=30\r\nContent-Length: 0\r\n\r\n",
    )
    assert _wait_for(lambda: server.held_polls == 1, 5)
    sock.close()
    assert _wait_for(lambda: server.held_polls == 0, 2)


@pytest.mark.slow
def test_a_cancel_waiting_for_the_work_ends_when_its_client_leaves(real_server):
    url, server, _, _ = real_server
    location = httpx.post(url + "/stubborn", timeout=10).headers["location"]
    sock = _raw(url, f"DELETE {location} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    assert _wait_for(lambda: server.held_polls == 1, 2)  # waiting for the work to stop
    sock.close()
    assert _wait_for(lambda: server.held_polls == 0, 0.5)  # well before its 1 s


async def test_a_finished_operation_leaves_nothing_for_the_cycle_collector():
    # The request, its task and its context referenced each other through the
    # work's handle: every start left about thirty objects in a reference
    # cycle, and the collector's passes took a tenth of a busy server's time.
    app, server, _, _ = build(store=MemoryStore())
    async with client(app) as c:
        await c.post("/quick", headers={"prefer": "wait=5"})  # warm-up
        gc.collect()
        gc.disable()
        try:
            for _ in range(20):
                assert (await c.post("/quick", headers={"prefer": "wait=5"})).status_code == 200
            for _ in range(10):
                await asyncio.sleep(0)  # the last outcome is being recorded
            kinds = (DeferrableRequest, RunningOperation)
            left = [o for o in gc.get_objects() if isinstance(o, kinds)]
        finally:
            gc.enable()
        assert left == []
    await server.close()
