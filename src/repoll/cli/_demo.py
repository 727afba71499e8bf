"""The demo app: one slow endpoint, deferred with repoll.

``repoll serve`` serves it; ``repoll demo`` drives it and shows every hop.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any
from urllib.parse import parse_qs

from .._errors import MissingExtraError
from ..core._headers import PROBLEM_JSON
from ..executors._in_process import InProcessExecutor

try:  # FastAPI brings pydantic
    from fastapi import FastAPI, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from pydantic import BaseModel, Field, ValidationError
except ModuleNotFoundError as exc:
    raise MissingExtraError("cli", "fastapi") from exc

from ..server._endpoints import defer, deferred, report_progress
from ..server._engine import PollingServer
from ..server._install import install
from ..server._routes import deferrable


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


async def simulate(work: WorkRequest) -> WorkResult:
    """``seconds`` of pretend work in steps, reporting progress; then the result (or a failure)."""
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


INDEX_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>repoll demo</title></head>
<body><main>
<h1>repoll demo</h1>
<h2>A form</h2>
<form method="post" action="/start_work_form">
  <label>Seconds of work <input id="seconds" name="seconds" value="3"></label>
  <label><input type="checkbox" name="fail"> fail at the end</label>
  <button id="submit" type="submit">Start</button>
</form>
<h2>A script, with the ES module</h2>
<button id="run-script" type="button">Run 2 s of work from a script</button>
<button id="watch-events" type="button">Watch its events</button>
<ol id="script-log"></ol>
<pre id="script-result"></pre>
<ol id="event-log"></ol>
<script type="module">
import { request, watch } from "/operations/client.js";
const log = (list, text) => {
  const item = document.createElement("li"); item.textContent = text;
  document.getElementById(list).append(item);
};
document.getElementById("run-script").addEventListener("click", async () => {
  const response = await request("/start_work", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ seconds: 2 }),
  }, { deadline: 60, longPoll: 1, onProgress: (hop) =>
         log("script-log", `${hop.status} ${hop.operationStatus} ${hop.progress}`) });
  const text = await response.text();
  document.getElementById("script-result").textContent = `${response.status} ${text}`;
});
document.getElementById("watch-events").addEventListener("click", async () => {
  const started = await fetch("/start_work", {
    method: "POST", headers: { "Content-Type": "application/json", Prefer: "respond-async" },
    body: JSON.stringify({ seconds: 2 }),
  });
  const outcome = await watch(started.headers.get("Location"),
    (event) => log("event-log", `${event.status} ${event.progress}`));
  log("event-log", `outcome ${outcome.status} ${outcome.response_status}`);
});
</script>
</main></body></html>
"""


def create_app(store: Any = None, **options: Any) -> FastAPI:
    """The demo app. ``store`` defaults to ``$REPOLL_STORE`` or ``sqlite:///repoll.sqlite3``."""
    app = FastAPI(
        title="repoll demo",
        description="A slow endpoint made pollable by repoll: see docs/protocol.md.",
    )
    concurrency = os.environ.get("REPOLL_CONCURRENCY")
    broker = os.environ.get("REPOLL_BROKER")
    if broker and "executor" not in options:
        from ..executors._celery import CeleryExecutor  # noqa: PLC0415 - the celery extra, when asked

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
        return await simulate(work)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        """A page to try it in a browser: a form, and the ES module from a script."""
        return HTMLResponse(INDEX_PAGE)

    @app.post("/start_work_form", response_class=HTMLResponse, include_in_schema=False)
    @deferrable  # it calls defer() itself, after its own validation
    async def start_work_form(request: Request) -> HTMLResponse:
        """The same work from an HTML form; the answer is a page."""
        fields = parse_qs((await request.body()).decode("utf-8", "replace"))
        try:
            work = WorkRequest(
                seconds=float(fields.get("seconds", ["0"])[0]),
                fail=fields.get("fail", [""])[0] in {"on", "true", "1"},
            )
        except (ValueError, ValidationError):
            return HTMLResponse("<p>seconds must be a number from 0 to 3600</p>", status_code=422)
        await defer()  # validated: from here on, an operation
        result = await simulate(work)
        return HTMLResponse(
            f"<!doctype html><title>Done</title><main><h1 id='result'>Result: {result.result}</h1>"
            f"<p>{result.seconds:g} s of work in {result.steps} steps.</p></main>"
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: answers at once, never deferred."""
        return {"status": "ok"}

    return app
