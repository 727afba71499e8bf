"""Starts on SQLite: the work starts while its record's insert is queued.

The server answers only once the insert is stored, so every id it gives out
is stored; work that ends in the same turn of the event loop is stored with
one write, its outcome, and answered with its final response at once
(protocol 3.6). These tests use a real SQLite file, read from another
connection as another process would, a lock held by another connection for
the store failing, and, for many clients at once, a real server over sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from bench._common import server_process
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import repoll
from repoll import SQLiteStore

pytestmark = pytest.mark.anyio


def record_in_file(path: Path, operation_id: str) -> str | None:
    """The operation's status as another process reads it from the file."""
    with sqlite3.connect(path) as connection:
        row = connection.execute(
            "SELECT status FROM repoll_operations WHERE id = ?", (operation_id,)
        ).fetchone()
    return None if row is None else str(row[0])


def build(path: Path, *, timeout: float = 5.0) -> tuple[Starlette, repoll.PollingServer, dict]:
    seen: dict = {"canceled": False, "gate": asyncio.Event()}

    @repoll.deferred
    async def instant(_: Request) -> JSONResponse:
        return JSONResponse({"status": "done"}, headers={"x-work": "instant"})

    @repoll.deferred
    async def gated(_: Request) -> JSONResponse:
        try:
            await seen["gate"].wait()
        except asyncio.CancelledError:
            seen["canceled"] = True
            raise
        return JSONResponse({"status": "opened"})

    app = Starlette(
        routes=[
            Route("/instant", instant, methods=["POST"]),
            Route("/gated", gated, methods=["POST"]),
        ]
    )
    server = repoll.install(app, store=SQLiteStore(path, timeout=timeout))
    return app, server, seen


@contextlib.asynccontextmanager
async def serving(
    path: Path, *, store_timeout: float = 5.0
) -> AsyncIterator[tuple[httpx.AsyncClient, repoll.PollingServer, dict]]:
    """The app's server opened on ``path``, and a client through ASGI."""
    app, server, seen = build(path, timeout=store_timeout)
    await server.open()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, server, seen
    finally:
        seen["gate"].set()
        await server.close()


async def test_work_that_ends_at_once_is_one_write_and_answered_200(tmp_path):
    path = tmp_path / "ops.db"
    async with serving(path) as (client, server, _):
        writer = server.store._loop_writer  # type: ignore[attr-defined]
        commits = writer._commits
        response = await client.post("/instant")
        assert writer._commits == commits + 1  # the outcome, inserted once
        assert response.status_code == 200
        assert response.json() == {"status": "done"}
        assert response.headers["x-work"] == "instant"
        assert response.headers["operation-status"] == "succeeded"
        url = response.headers["content-location"]
        assert record_in_file(path, url.rsplit("/", 1)[1]) == "succeeded"
        replay = await client.get(url)
        assert replay.status_code == 200
        assert replay.json() == {"status": "done"}


async def test_work_that_outlasts_the_turn_is_stored_before_its_303(tmp_path):
    path = tmp_path / "ops.db"
    async with serving(path) as (client, _, seen):
        response = await client.post("/gated")
        assert response.status_code == 303
        operation_id = response.json()["id"]
        assert record_in_file(path, operation_id) == "running"
        seen["gate"].set()
        final = await client.get(response.headers["location"], headers={"prefer": "wait=5"})
        assert final.status_code == 200
        assert record_in_file(path, operation_id) == "succeeded"


async def test_a_start_with_an_idempotency_key_waits_for_its_record(tmp_path):
    # A duplicate must be found before any work starts: create, then work.
    async with serving(tmp_path / "ops.db") as (client, server, _):
        writer = server.store._loop_writer  # type: ignore[attr-defined]
        commits = writer._commits
        first = await client.post("/instant", headers={"idempotency-key": "k1"})
        await asyncio.sleep(0.05)
        assert writer._commits == commits + 2  # the record, then the outcome
        again = await client.post("/instant", headers={"idempotency-key": "k1"})
        assert first.status_code in (200, 303)
        assert again.status_code == 200
        assert again.json() == {"status": "done"}


async def test_a_record_that_cannot_be_stored_gives_the_work_back_or_stops_it(tmp_path):
    """Another connection holds the write lock past the store's timeout."""
    path = tmp_path / "ops.db"
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        async with serving(path, store_timeout=0.2) as (client, server, seen):
            blocker.execute("BEGIN IMMEDIATE")
            # Work that has ended: its own response, as if never deferred.
            ended = await client.post("/instant")
            assert ended.status_code == 200
            assert ended.json() == {"status": "done"}
            assert "content-location" not in ended.headers
            assert "operation-status" not in ended.headers
            # Work still running: stopped, and the client told to try again.
            started = await client.post("/gated")
            assert started.status_code == 503
            assert started.headers["content-type"] == "application/problem+json"
            assert "retry-after" in started.headers
            blocker.execute("COMMIT")
            for _ in range(100):
                if seen["canceled"] and server.admission.operations == 0:
                    break
                await asyncio.sleep(0.02)
            assert seen["canceled"]
            # Nothing stored, nothing held.
            with sqlite3.connect(path) as connection:
                count = connection.execute("SELECT count(*) FROM repoll_operations").fetchone()[0]
            assert count == 0
            assert server.admission.operations == 0
            assert server.executor.running == 0  # type: ignore[attr-defined]
            assert server.executor.has_free_slot()
            # And the store serves the next start as usual.
            again = await client.post("/instant")
            assert again.status_code == 200
            assert again.headers["operation-status"] == "succeeded"
    finally:
        blocker.close()


def test_every_id_a_real_server_gives_out_is_stored_already(tmp_path):
    """Two hundred clients at once against ``repoll serve``; each id read as soon as it arrives."""
    path = tmp_path / "ops.db"
    argv = ["--store", f"sqlite:///{path}", "bench.apps:repoll_app", "--factory"]
    with server_process(argv) as (base, _):

        async def starts() -> list[tuple[int, str | None]]:
            async with httpx.AsyncClient(base_url=base) as client:  # httpx's defaults

                async def one() -> tuple[int, str | None]:
                    response = await client.post("/start", follow_redirects=False)
                    url = response.headers.get("content-location") or response.headers["location"]
                    operation_id = url.split("?")[0].rsplit("/", 1)[1]
                    return response.status_code, record_in_file(path, operation_id)

                return await asyncio.gather(*(one() for _ in range(200)))

        results = asyncio.run(starts())
    assert {status for status, _ in results} <= {200, 303}
    assert all(stored is not None for _, stored in results), results
