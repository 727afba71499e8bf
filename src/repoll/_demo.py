"""The demo app: one slow endpoint, deferred with repoll.

``repoll serve`` serves it; ``repoll demo`` drives it and shows every hop.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from ._errors import require

require("fastapi", "cli")

from fastapi import FastAPI, Request  # noqa: E402 - after the extra check, for its clear message
from fastapi.encoders import jsonable_encoder  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from ._executor import InProcessExecutor  # noqa: E402
from ._headers import PROBLEM_JSON  # noqa: E402
from ._install import install  # noqa: E402
from ._server import PollingServer, deferred, report_progress  # noqa: E402


class WorkRequest(BaseModel):
    """How long the simulated work takes, and whether it should fail."""

    seconds: float = Field(ge=0, le=3600, description="Duration of the simulated work.")
    fail: bool = Field(default=False, description="Raise at the end instead of answering.")


class WorkResult(BaseModel):
    result: str
    seconds: float
    steps: int
    finished_at: float = Field(description="Unix time when the work finished.")


class DemoFailure(RuntimeError):
    """The demo work failing on request."""


def create_app(store: Any = None, **options: Any) -> FastAPI:
    """The demo app. ``store`` defaults to ``$REPOLL_STORE`` or ``sqlite:///repoll.sqlite3``."""
    app = FastAPI(
        title="repoll demo",
        description="A slow endpoint made pollable by repoll: see docs/protocol.md.",
    )
    concurrency = os.environ.get("REPOLL_CONCURRENCY")
    broker = os.environ.get("REPOLL_BROKER")
    if broker and "executor" not in options:
        from ._celery import CeleryExecutor  # noqa: PLC0415 - the celery extra, when asked

        options["executor"] = CeleryExecutor(
            broker=broker, queue=os.environ.get("REPOLL_QUEUE", "repoll")
        )
    elif concurrency and "executor" not in options:
        options["executor"] = InProcessExecutor(concurrency=int(concurrency))
    server: PollingServer = install(
        app, store=store or os.environ.get("REPOLL_STORE") or None, **options
    )
    app.state.repoll = server

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # The demo answers bad input with RFC 9457 problem details, like repoll itself.
        problem = {
            "type": "urn:repoll:problem:invalid-request",
            "title": "Invalid request",
            "status": 422,
            "detail": "The request body does not match the endpoint's schema.",
            # A body that is not UTF-8 comes back in the errors as bytes.
            "errors": jsonable_encoder(
                exc.errors(), custom_encoder={bytes: lambda b: b.decode("utf-8", "replace")}
            ),
        }
        return JSONResponse(problem, status_code=422, media_type=PROBLEM_JSON)

    @app.post("/start_work", response_model=WorkResult)
    @deferred
    async def start_work(work: WorkRequest) -> WorkResult:
        """Simulate `seconds` of work, reporting progress; then answer (or fail)."""
        steps = max(1, min(int(work.seconds * 4), 200))
        started = time.monotonic()
        for step in range(1, steps + 1):
            # Sleep to the step's deadline, so that reports don't drift.
            await asyncio.sleep(max(0.0, started + work.seconds * step / steps - time.monotonic()))
            report_progress(step / steps, f"step {step} of {steps}")
        if work.fail:
            msg = "the demo work failed, as requested"
            raise DemoFailure(msg)
        return WorkResult(result="done", seconds=work.seconds, steps=steps, finished_at=time.time())

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: answers at once, never deferred."""
        return {"status": "ok"}

    return app
