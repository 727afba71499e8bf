"""repoll on Litestar: ``repoll.litestar_app`` around the app, ``await repoll.defer()`` inside.

Run it: ``uvicorn examples.litestar_app:app``. Litestar validates the request
(``pages`` must be an int, else its own 400) and injects the handler's
dependencies, then the handler defers: the client gets ``303`` and the
operation URL, and the rest of the handler is the operation's work. The
OpenAPI document (``/schema/openapi.json``) shows the deferred handlers'
303/202 answers and the operation routes.
"""

from __future__ import annotations

import asyncio
import os

from litestar import Litestar, get, post
from litestar.di import Provide

import repoll


async def page_seconds() -> float:
    return 0.5  # a dependency, injected by Litestar before the handler defers


@post("/reports", dependencies={"seconds": Provide(page_seconds)})
@repoll.deferrable  # it calls repoll.defer(): documented as deferred
async def make_report(pages: int, seconds: float) -> dict[str, int]:
    await repoll.defer()  # after Litestar has validated the request
    for page in range(pages):
        await asyncio.sleep(seconds)
        repoll.report_progress((page + 1) / pages, f"page {page + 1} of {pages}")
    return {"pages": pages}


@post("/quick-reports")
@repoll.deferred  # all of it is the work, after Litestar's validation
async def quick_report(pages: int) -> dict[str, int]:
    return {"pages": pages}


@get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}  # an ordinary handler: passes through untouched


app = repoll.litestar_app(
    Litestar(route_handlers=[make_report, quick_report, hello]),
    store=os.environ.get("REPOLL_STORE", "memory://"),
)
