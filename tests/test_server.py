"""The server through httpx.ASGITransport: every clause of the protocol, in-process."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse as StarletteJSON
from starlette.routing import Route

import repoll
from repoll import MemoryStore, PacingPolicy

pytestmark = pytest.mark.anyio

FAST = PacingPolicy(min_interval=0.05, default_interval=0.1, min_hold=0.2, max_hold=5)


class Job(BaseModel):
    seconds: float = Field(ge=0, le=60)


def build_app(**options) -> tuple[FastAPI, repoll.PollingServer, dict]:
    app = FastAPI()
    options.setdefault("store", MemoryStore())
    options.setdefault("pacing", FAST)
    server = repoll.install(app, **options)
    seen: dict = {"sync_thread": None, "release": asyncio.Event()}

    @app.post("/jobs", status_code=201)
    @repoll.deferred
    async def job(body: Job) -> JSONResponse:
        repoll.report_progress(0.5, "halfway")
        await asyncio.sleep(body.seconds)
        return JSONResponse({"slept": body.seconds}, status_code=201, headers={"x-job": "yes"})

    @app.post("/gated")
    @repoll.deferred
    async def gated() -> dict:
        repoll.report_progress(0.25, "waiting for the gate")
        await seen["release"].wait()
        return {"gate": "opened"}

    @app.post("/sync")
    @repoll.deferred
    def sync_job(body: Job) -> dict:
        seen["sync_thread"] = threading.current_thread().name
        operation = repoll.current_operation()
        for _ in range(int(body.seconds * 100)):
            operation.raise_if_canceled()
            threading.Event().wait(0.01)
        repoll.report_progress(1.0, "sync done")
        return {"thread": threading.current_thread().name}

    @app.post("/boom")
    @repoll.deferred
    async def boom() -> dict:
        msg = "secret internal detail"
        raise RuntimeError(msg)

    @app.post("/missing")
    @repoll.deferred
    async def missing() -> dict:
        raise HTTPException(status_code=404, detail="no such thing")

    @app.get("/plain")
    async def plain() -> dict:
        return {"plain": True}

    return app, server, seen


@pytest.fixture
async def setup():
    app, server, seen = build_app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client, server, seen
    seen["release"].set()
    await server.close()


async def test_start_answers_303_with_the_protocol_headers(setup):
    client, _server, _ = setup
    response = await client.post("/jobs", json={"seconds": 0.2})
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("/operations/")  # a path: right behind any proxy
    # A client following redirects goes to its first hop URL (protocol.md 5.6).
    operation_id, hop = location.rsplit("/", 1)[1].split("?")
    assert len(operation_id) == 29  # creation time, then 128 random bits
    assert hop == "hop=1"
    assert int(response.headers["retry-after"]) >= 1
    assert int(response.headers["retry-after-ms"]) > 0
    assert response.headers["operation-status"] in {"queued", "running"}
    assert response.headers["cache-control"] == "no-store"
    document = response.json()
    assert document["id"] == operation_id
    assert document["status"] in {"queued", "running"}


async def test_respond_async_answers_202(setup):
    client, _, _ = setup
    response = await client.post(
        "/jobs", json={"seconds": 0.2}, headers={"prefer": "respond-async"}
    )
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "respond-async"
    assert response.headers["location"].startswith("/operations/")
    poll = await client.get(
        response.headers["location"], headers={"prefer": "respond-async, wait=0"}
    )
    assert poll.status_code == 202
    assert poll.headers["operation-status"] in {"queued", "running"}


async def test_poll_while_running_redirects_to_itself(setup):
    client, _, seen = setup
    start = await client.post("/gated")
    location = start.headers["location"]
    await asyncio.sleep(0.05)  # progress is written in the background
    poll = await client.get(location, headers={"prefer": "wait=0"})
    assert poll.status_code == 303
    # The same operation, one hop further (protocol.md 5.6).
    assert poll.headers["location"] == location.replace("?hop=1", "?hop=2")
    assert poll.headers["operation-status"] == "running"
    assert poll.json()["progress"] == 0.25
    assert poll.json()["message"] == "waiting for the gate"
    seen["release"].set()


async def test_final_response_is_the_endpoints_own_replayed(setup):
    client, _, _ = setup
    start = await client.post("/jobs", json={"seconds": 0.1})
    location = start.headers["location"]
    final = await client.get(location, headers={"prefer": "wait=5"})
    assert final.status_code == 201
    assert final.json() == {"slept": 0.1}
    assert final.headers["x-job"] == "yes"
    assert final.headers["content-type"] == "application/json"
    assert final.headers["operation-status"] == "succeeded"
    assert final.headers["content-location"] == location.split("?")[0]  # the canonical URL
    assert final.headers["cache-control"] == "no-store"
    again = await client.get(location)
    assert (again.status_code, again.content) == (201, final.content)


async def test_held_poll_returns_the_moment_work_finishes(setup):
    client, _, seen = setup
    location = (await client.post("/gated")).headers["location"]
    poll = asyncio.create_task(client.get(location, headers={"prefer": "wait=5"}))
    await asyncio.sleep(0.2)
    assert not poll.done()  # held
    seen["release"].set()
    response = await asyncio.wait_for(poll, timeout=2)
    assert response.status_code == 200
    assert response.json() == {"gate": "opened"}


async def test_prefer_wait_on_start_returns_the_final_response(setup):
    client, _, _ = setup
    response = await client.post("/jobs", json={"seconds": 0.05}, headers={"prefer": "wait=5"})
    assert response.status_code == 201
    assert response.json() == {"slept": 0.05}
    assert response.headers["operation-status"] == "succeeded"
    assert response.headers["content-location"].startswith("/operations/")


async def test_prefer_wait_on_start_that_runs_out_redirects(setup):
    client, _, seen = setup
    response = await client.post("/gated", headers={"prefer": "wait=1"})
    assert response.status_code == 303
    seen["release"].set()


async def test_invalid_input_gets_422_and_creates_no_operation(setup):
    client, server, _ = setup
    response = await client.post("/jobs", json={"seconds": -1})
    assert response.status_code == 422
    assert "location" not in response.headers
    assert len(server.store) == 0


async def test_non_deferred_endpoints_pass_through(setup):
    client, server, _ = setup
    response = await client.get("/plain")
    assert response.status_code == 200
    assert response.json() == {"plain": True}
    assert "operation-status" not in response.headers
    assert len(server.store) == 0


async def test_a_handler_that_raises_is_replayed_as_a_500_problem(setup, caplog):
    client, _, _ = setup
    response = await client.post("/boom", headers={"prefer": "wait=5"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["operation-status"] == "failed"
    problem = response.json()
    assert problem["status"] == 500
    assert "RuntimeError" in problem["detail"]
    assert "secret internal detail" not in response.text
    assert "secret internal detail" in caplog.text  # the server log has it


async def test_an_endpoints_own_404_is_replayed_and_marked_failed(setup):
    client, _, _ = setup
    response = await client.post("/missing", headers={"prefer": "wait=5"})
    assert response.status_code == 404
    assert response.json() == {"detail": "no such thing"}
    assert response.headers["operation-status"] == "failed"


@pytest.mark.parametrize(
    "path", ["/operations/" + "A" * 22, "/operations/short", "/operations/a/b"]
)
async def test_unknown_or_malformed_ids_get_404_problem(setup, path):
    client, _, _ = setup
    response = await client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert "operation-status" not in response.headers
    assert response.json()["type"] == "urn:repoll:problem:operation-not-found"
    assert (await client.delete(path)).status_code == 404


async def test_other_methods_on_operations_get_405(setup):
    client, _, _ = setup
    response = await client.post("/operations/" + "A" * 22)
    assert response.status_code == 405
    assert "DELETE" in response.headers["allow"]
    assert response.json()["detail"] == "Use GET or DELETE."  # no redirect led here
    hop = await client.post("/operations/" + "A" * 22 + "?hop=2")
    assert hop.status_code == 405
    assert "leave out -X POST" in hop.json()["detail"]


async def test_head_on_an_operation(setup):
    client, _, _ = setup
    start = await client.post("/jobs", json={"seconds": 0}, headers={"prefer": "wait=5"})
    response = await client.head(start.headers["content-location"])
    assert response.status_code == 201
    assert response.content == b""
    assert response.headers["operation-status"] == "succeeded"


async def test_expired_operations_get_410():
    app, server, _ = build_app(lifetimes=repoll.Lifetimes(retention=0.1))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post("/jobs", json={"seconds": 0}, headers={"prefer": "wait=5"})
        assert response.status_code == 201
        await asyncio.sleep(0.2)
        gone = await c.get(response.headers["content-location"])
        assert gone.status_code == 410
        assert gone.json()["type"] == "urn:repoll:problem:operation-expired"
    await server.close()


async def test_bodies_over_the_limit_get_413_and_no_operation():
    app, server, _ = build_app(limits=repoll.Limits(max_body_size=100))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post("/gated", content=b"x" * 101)
        assert response.status_code == 413
        assert response.headers["content-type"] == "application/problem+json"
        assert len(server.store) == 0
    await server.close()


async def test_cancel_a_running_async_operation(setup):
    client, _, _ = setup
    location = (await client.post("/gated")).headers["location"]
    await asyncio.sleep(0.05)
    canceled = await client.delete(location)
    assert canceled.status_code == 200
    assert canceled.headers["operation-status"] == "canceled"
    assert canceled.json()["status"] == "canceled"
    response = await client.get(location)
    assert response.status_code == 409
    assert response.headers["operation-status"] == "canceled"
    assert response.json()["type"] == "urn:repoll:problem:operation-canceled"
    # Cancelling again changes nothing.
    assert (await client.delete(location)).json()["status"] == "canceled"


async def test_cancel_after_completion_keeps_the_result(setup):
    client, _, _ = setup
    response = await client.post("/jobs", json={"seconds": 0}, headers={"prefer": "wait=5"})
    location = response.headers["content-location"]
    after = await client.delete(location)
    assert after.status_code == 200
    assert after.json()["status"] == "succeeded"
    assert (await client.get(location)).status_code == 201


async def test_sync_handlers_run_in_threads_and_cancel_cooperatively(setup):
    client, _, _seen = setup
    done = await client.post("/sync", json={"seconds": 0.05}, headers={"prefer": "wait=5"})
    assert done.status_code == 200
    assert done.json()["thread"].startswith("repoll-work")
    location = (await client.post("/sync", json={"seconds": 30})).headers["location"]
    await asyncio.sleep(0.1)
    canceled = await client.delete(location)
    assert canceled.json()["status"] == "canceled"
    assert (await client.get(location)).status_code == 409


async def test_a_cancel_waits_only_as_long_as_the_policy_says():
    # cancel_hold=0: the DELETE answers 202 at once, while the work stops.
    policy = PacingPolicy(
        min_interval=0.05, default_interval=0.1, min_hold=0.2, max_hold=5, cancel_hold=0
    )
    app, server, _ = build_app(pacing=policy)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        location = (await c.post("/sync", json={"seconds": 30})).headers["location"]
        await asyncio.sleep(0.05)
        stopping = await c.delete(location)
        assert stopping.status_code == 202
        assert stopping.json()["status"] == "running"
        assert stopping.json()["cancel_requested"] is True
        assert (await c.get(location, headers={"prefer": "wait=5"})).status_code == 409
    await server.close()


async def test_queued_operations_wait_for_a_slot_and_can_be_canceled():
    app, server, seen = build_app(executor=repoll.InProcessExecutor(concurrency=1))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        first = (await c.post("/gated")).headers["location"]
        second = (await c.post("/gated")).headers["location"]
        status = await c.get(second, headers={"prefer": "wait=0"})
        assert status.headers["operation-status"] == "queued"
        assert (await c.delete(second)).json()["status"] == "canceled"
        seen["release"].set()
        assert (await c.get(first, headers={"prefer": "wait=5"})).status_code == 200
        assert (await c.get(second)).status_code == 409
    await server.close()


async def test_operations_are_invisible_to_other_principals(setup):
    client, _, seen = setup
    alice = {"authorization": "Bearer alice"}
    bob = {"authorization": "Bearer bob"}
    location = (await client.post("/gated", headers=alice)).headers["location"]
    assert (await client.get(location, headers={**bob, "prefer": "wait=0"})).status_code == 404
    assert (await client.get(location, headers={"prefer": "wait=0"})).status_code == 404
    assert (await client.delete(location, headers=bob)).status_code == 404
    own = await client.get(location, headers={**alice, "prefer": "wait=0"})
    assert own.status_code == 303
    seen["release"].set()
    assert (await client.get(location, headers={**alice, "prefer": "wait=5"})).status_code == 200


async def test_the_store_keeps_a_digest_not_the_credential(setup):
    client, server, seen = setup
    location = (await client.post("/gated", headers={"authorization": "Bearer s3cret"})).headers[
        "location"
    ]
    op = await server.store.get(location.rsplit("/", 1)[1].split("?")[0])
    assert "s3cret" not in repr(op)
    assert len(op.principal) == 64
    seen["release"].set()


async def test_the_polling_transport_turns_it_into_one_call(setup):
    client, _, _ = setup
    transport = repoll.AsyncPollingTransport(client._transport)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as polling:
        response = await polling.post("/jobs", json={"seconds": 0.1})
    assert response.status_code == 201
    assert response.json() == {"slept": 0.1}
    hops = response.extensions["repoll.hops"]
    assert [hop.method for hop in hops][:1] == ["POST"]
    assert hops[-1].operation_status == "succeeded"


async def test_openapi_documents_the_protocol(setup):
    client, _, _ = setup
    schema = (await client.get("/openapi.json")).json()
    assert "/operations/{operation_id}" in schema["paths"]
    operation = schema["paths"]["/operations/{operation_id}"]
    assert {"get", "delete"} <= operation.keys()
    assert {"303", "202"} <= schema["paths"]["/jobs"]["post"]["responses"].keys()
    assert "303" not in schema["paths"]["/plain"]["get"]["responses"]


async def test_starlette_endpoints_defer_after_their_own_validation():
    @repoll.deferrable
    async def create(request: Request) -> StarletteJSON:
        body = await request.json()
        if not isinstance(body.get("n"), int):
            return StarletteJSON({"error": "n must be an integer"}, status_code=422)
        await repoll.defer()
        await asyncio.sleep(0.05)
        return StarletteJSON({"n": body["n"] * 2})

    app = Starlette(routes=[Route("/double", create, methods=["POST"])])
    server = repoll.install(app, store=MemoryStore(), pacing=FAST)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        bad = await c.post("/double", json={"n": "x"})
        assert bad.status_code == 422
        assert len(server.store) == 0
        start = await c.post("/double", json={"n": 21})
        assert start.status_code == 303
        final = await c.get(start.headers["location"], headers={"prefer": "wait=5"})
        assert final.json() == {"n": 42}
    await server.close()


async def test_defer_outside_the_middleware_is_a_clear_error():
    with pytest.raises(repoll.NotDeferrableError, match="install"):
        await repoll.defer()


async def test_an_unmarked_endpoint_that_calls_defer_is_told_to_mark_itself():
    async def create(request: Request) -> StarletteJSON:
        await repoll.defer()
        return StarletteJSON({})

    app = Starlette(routes=[Route("/create", create, methods=["POST"])])
    server = repoll.install(app, store=MemoryStore(), pacing=FAST)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        with pytest.raises(repoll.NotDeferrableError, match=r"@repoll\.deferrable"):
            await c.post("/create")
    await server.close()


async def test_restart_marks_unfinished_work_failed(tmp_path):
    store_url = f"sqlite:///{tmp_path}/ops.db"
    app, server, seen = build_app(store=store_url)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        running = (await c.post("/gated")).headers["location"]
        done = await c.post("/jobs", json={"seconds": 0}, headers={"prefer": "wait=5"})
    # Simulate a crash: the process's hold on the store goes, nothing is settled.
    server.closing = True
    await server.store.close()
    app2, server2, _ = build_app(store=store_url)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app2), base_url="http://t") as c:
        lost = await c.get(running)
        assert lost.status_code == 500
        assert lost.headers["operation-status"] == "failed"
        assert lost.json()["type"] == "urn:repoll:problem:operation-lost"
        kept = await c.get(done.headers["content-location"])
        assert kept.status_code == 201
        assert kept.json() == {"slept": 0}
    seen["release"].set()
    await server2.close()


async def test_held_polls_are_shed_past_the_limit():
    app, server, seen = build_app(limits=repoll.Limits(max_held_polls=2))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        location = (await c.post("/gated")).headers["location"]
        held = [
            asyncio.create_task(c.get(location, headers={"prefer": "wait=5"})) for _ in range(2)
        ]
        await asyncio.sleep(0.1)
        assert server.held_polls == 2
        idle_interval = int((await c.post("/gated")).headers["retry-after-ms"])
        shed = await asyncio.wait_for(c.get(location, headers={"prefer": "wait=5"}), timeout=1)
        assert shed.status_code == 303  # answered at once, not held
        assert int(shed.headers["retry-after-ms"]) >= idle_interval
        seen["release"].set()
        assert [(await t).status_code for t in held] == [200, 200]
        assert server.held_polls == 0
    await server.close()


async def test_a_locked_store_answers_503_and_loses_nothing(tmp_path):
    import sqlite3

    path = tmp_path / "ops.sqlite3"
    app, server, seen = build_app(store=repoll.SQLiteStore(path, timeout=0.1))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        location = (await c.post("/gated")).headers["location"]
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            busy = await c.post("/gated")
            assert busy.status_code == 503
            assert busy.headers["retry-after"] == "1"
            assert busy.json()["type"] == "urn:repoll:problem:store-unavailable"
            seen["release"].set()  # the first operation ends while the store is locked
            await asyncio.sleep(0.5)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        final = await c.get(location, headers={"prefer": "wait=10"})
        assert final.status_code == 200
        assert final.json() == {"gate": "opened"}
        assert len(await server.store.unfinished()) == 0
    await server.close()


async def test_too_many_operations_get_429_with_retry_after():
    app, server, seen = build_app(
        limits=repoll.Limits(max_operations_per_principal=2, max_operations=3)
    )
    alice = {"authorization": "Bearer alice"}
    bob = {"authorization": "Bearer bob"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for _ in range(2):
            assert (await c.post("/gated", headers=alice)).status_code == 303
        refused = await c.post("/gated", headers=alice)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["type"] == "urn:repoll:problem:too-many-operations"
        assert (await c.post("/gated", headers=bob)).status_code == 303
        overall = await c.post("/gated", headers={"authorization": "Bearer carol"})
        assert overall.status_code == 429
        assert len(server.store) == 3  # refused requests created nothing
        seen["release"].set()
        await asyncio.sleep(0.2)
        again = await c.post("/gated", headers=alice)
        assert again.status_code in {200, 303}
    await server.close()


async def test_a_response_over_the_stored_limit_fails_cleanly():
    app, server, _ = build_app(limits=repoll.Limits(max_response_size=1000))

    @app.post("/big")
    @repoll.deferred
    async def big() -> dict:
        return {"blob": "x" * 5000}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post("/big", headers={"prefer": "wait=5"})
        assert response.status_code == 500
        assert response.headers["operation-status"] == "failed"
        assert response.json()["type"] == "urn:repoll:problem:response-too-large"
        small = await c.post("/jobs", json={"seconds": 0}, headers={"prefer": "wait=5"})
        assert small.status_code == 201  # the server is fine
    await server.close()


async def test_no_principal_can_reach_another_principals_operations():
    app, server, seen = build_app(limits=repoll.Limits(max_operations_per_principal=1000))
    principals = [
        {},
        {"authorization": "Bearer alice"},
        {"authorization": "Bearer bob"},
        {"cookie": "session=alice"},
        {"cookie": "session=bob"},
        {"authorization": "Bearer alice", "cookie": "session=bob"},
    ]
    attempts = leaks = 0
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        owned = [(await c.post("/gated", headers=p)).headers["location"] for p in principals]
        for owner, location in enumerate(owned):
            for other, headers in enumerate(principals):
                if other == owner:
                    continue
                for method, extra in (
                    ("GET", {"prefer": "wait=0"}),
                    ("GET", {"prefer": "respond-async, wait=1"}),
                    ("HEAD", {}),
                    ("DELETE", {}),
                ):
                    response = await c.request(method, location, headers={**headers, **extra})
                    attempts += 1
                    leaks += response.status_code != 404 or "operation-status" in response.headers
        # Nothing was canceled by the intruders' DELETEs.
        for owner, location in enumerate(owned):
            own = await c.get(location, headers={**principals[owner], "prefer": "wait=0"})
            assert own.headers["operation-status"] == "running"
        seen["release"].set()
    await server.close()
    assert attempts == 6 * 5 * 4
    assert leaks == 0


async def test_cookie_sessions_and_custom_principal_functions():
    app, server, seen = build_app(principal=repoll.cookie_principal("session"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        location = (await c.post("/gated", headers={"cookie": "session=s1; theme=dark"})).headers[
            "location"
        ]
        # Another cookie changed: still the same session, still visible.
        same = await c.get(
            location, headers={"cookie": "theme=light; session=s1", "prefer": "wait=0"}
        )
        assert same.status_code == 303
        other = await c.get(location, headers={"cookie": "session=s2", "prefer": "wait=0"})
        assert other.status_code == 404
        seen["release"].set()
    await server.close()

    async def tenant(request) -> str:  # an async principal function reading a header
        return request.headers.get("x-tenant", "")

    app, server, seen = build_app(principal=tenant)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        location = (await c.post("/gated", headers={"x-tenant": "acme"})).headers["location"]
        op = await server.store.get(location.rsplit("/", 1)[1].split("?")[0])
        assert "acme" not in op.principal  # stored as a digest
        assert (
            await c.get(location, headers={"x-tenant": "acme", "prefer": "wait=0"})
        ).status_code == 303
        assert (
            await c.get(location, headers={"x-tenant": "other", "prefer": "wait=0"})
        ).status_code == 404
        seen["release"].set()
    await server.close()


async def test_operation_urls_are_paths_unless_an_absolute_one_is_needed():
    app, server, seen = build_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        # Behind a proxy that rewrites Host, a path is still right.
        plain = await c.post("/gated", headers={"host": "backend:8000"})
        assert plain.headers["location"].startswith("/operations/")
        # Azure SDK pollers do not resolve relative references: absolute for them.
        azure = await c.post(
            "/gated", headers={"host": "api.example:8443", "user-agent": "azsdk-python-core/1.3"}
        )
        assert azure.headers["location"].startswith("http://api.example:8443/operations/")
        odd = await c.post("/gated", headers={"host": "evil.example/x?", "user-agent": "azsdk-x"})
        assert odd.headers["location"].startswith("/operations/")
        seen["release"].set()
    await server.close()
    app, server, seen = build_app(urls=repoll.UrlPolicy(absolute_urls=True))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.post("/gated")).headers["location"].startswith("http://t/operations/")
        seen["release"].set()
    await server.close()
    app, server, seen = build_app(urls=repoll.UrlPolicy(public_url="https://api.example.com/v1/"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        location = (await c.post("/gated")).headers["location"]
        assert location.startswith("https://api.example.com/v1/operations/")
        seen["release"].set()
    await server.close()
