"""Apps for the throughput benchmark, served with ``repoll serve bench.apps:NAME``."""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import repoll


async def plain(_: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


@repoll.deferred
async def instant(_: Request) -> JSONResponse:
    return JSONResponse({"status": "done"})


@repoll.deferred
async def next_turn(_: Request) -> JSONResponse:
    # Ends one turn of the event loop after it starts: after the answer.
    await asyncio.sleep(0)
    return JSONResponse({"status": "done"})


class BenchWork(BaseModel):
    """The body of ``budgets_app``'s ``POST /bench/work``."""

    seconds: float = Field(ge=0, le=7200)
    progress: bool = True


def plain_app() -> Starlette:
    """A Starlette JSON endpoint, nothing else: the baseline."""
    return Starlette(routes=[Route("/healthz", plain), Route("/plain", plain)])


def repoll_app() -> Starlette:
    """The same endpoint plus a deferred one, with repoll installed."""
    app = Starlette(
        routes=[
            Route("/healthz", plain),
            Route("/plain", plain),
            Route("/start", instant, methods=["POST"]),
            Route("/start_next_turn", next_turn, methods=["POST"]),
        ]
    )
    store = os.environ.get("REPOLL_STORE", "memory://")
    repoll.install(app, store=store, executor=repoll.InProcessExecutor(concurrency=256))
    return app


def budgets_app() -> object:
    """The demo app plus ``POST /bench/work``, behind a counter of the requests it gets.

    For ``bench/budgets.py`` (``repoll serve bench.apps:budgets_app --factory``).
    ``POST /bench/work {"seconds": N, "progress": true|false}`` sleeps N
    seconds, reporting progress every quarter second (like the demo) or not
    at all, then answers ``200 {"result": "done", ...}``. ``GET /bench/requests``
    lists the requests seen so far (method, path, query, start and end times,
    status, Location); ``GET /bench/info`` says which repoll is running. Neither
    is counted, nor is ``/healthz``. Built on the demo's ``create_app``, so every
    option of ``repoll serve`` for the demo applies to it too.
    ``$REPOLL_BENCH_MAX_HOLD`` (for servers whose ``repoll serve`` has no
    ``--max-hold``) caps every hold at that many seconds.
    """
    import asyncio
    import json
    import time

    from repoll.cli._demo import create_app

    options: dict[str, object] = {}
    max_hold = os.environ.get("REPOLL_BENCH_MAX_HOLD")
    if max_hold:
        hold = float(max_hold)
        options["pacing"] = repoll.PacingPolicy(min_hold=min(1.0, hold), max_hold=hold)
    app = create_app(**options)

    @app.post("/bench/work")
    @repoll.deferred
    async def bench_work(work: BenchWork) -> dict[str, object]:
        started = time.monotonic()
        if work.progress:
            steps = max(1, min(int(work.seconds * 4), 200))
            for step in range(1, steps + 1):
                await asyncio.sleep(
                    max(0.0, started + work.seconds * step / steps - time.monotonic())
                )
                repoll.report_progress(step / steps, f"step {step} of {steps}")
        else:
            await asyncio.sleep(work.seconds)
        return {
            "result": "done",
            "seconds": work.seconds,
            "progress": work.progress,
            "finished_at": time.time(),
        }

    seen: list[dict[str, object]] = []
    uncounted = {"/healthz", "/bench/requests", "/bench/info"}

    async def reply(send: object, body: object) -> None:
        data = json.dumps(body).encode()
        await send(  # type: ignore[operator]
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": data})  # type: ignore[operator]

    async def counting(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http" or scope["path"] in uncounted:
            if scope["type"] == "http" and scope["path"] == "/bench/requests":
                await reply(send, seen)
                return
            if scope["type"] == "http" and scope["path"] == "/bench/info":
                await reply(send, {"repoll": repoll.__file__, "max_hold_env": max_hold})
                return
            await app(scope, receive, send)
            return
        record: dict[str, object] = {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope.get("query_string", b"").decode("latin-1"),
            "start": time.time(),
            "end": None,
            "status": None,
            "location": None,
            "user_agent": next(
                (v.decode("latin-1") for k, v in scope["headers"] if k == b"user-agent"), ""
            ),
        }
        seen.append(record)

        async def counted_send(message: dict) -> None:  # type: ignore[type-arg]
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"location":
                        record["location"] = value.decode("latin-1")
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                record["end"] = time.time()
            await send(message)  # type: ignore[operator]

        await app(scope, receive, counted_send)

    return counting
