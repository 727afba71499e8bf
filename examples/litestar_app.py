"""repoll on Litestar: the ASGI middleware around the app, ``await repoll.defer()`` in a handler.

Run it: ``uvicorn examples.litestar_app:app``. Litestar validates the request
(``pages`` must be an int, else its own 400), then the handler defers: the
client gets ``303`` and the operation URL, and the rest of the handler is the
operation's work. repoll needs no Litestar-specific code: every request goes
through the middleware, which runs the app and turns the request into an
operation when the handler calls ``defer()``.
"""

from __future__ import annotations

import asyncio
import os

from litestar import Litestar, get, post

import repoll


@post("/reports")
async def make_report(pages: int) -> dict[str, int]:
    await repoll.defer()  # after Litestar has validated the request
    for page in range(pages):
        await asyncio.sleep(0.5)
        repoll.report_progress((page + 1) / pages, f"page {page + 1} of {pages}")
    return {"pages": pages}


@get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}  # an ordinary handler: passes through untouched


app = repoll.PollingMiddleware(
    Litestar(route_handlers=[make_report, hello]),
    store=os.environ.get("REPOLL_STORE", "memory://"),
)
