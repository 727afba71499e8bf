"""Apps for the throughput benchmark, served with ``repoll serve bench.apps:NAME``."""

from __future__ import annotations

import os

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
        ]
    )
    store = os.environ.get("REPOLL_STORE", "memory://")
    repoll.install(app, store=store, executor=repoll.InProcessExecutor(concurrency=256))
    return app
