"""`repoll check`: every clause passes against the demo; the right ones fail elsewhere."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route

from repoll.cli._main import running_server

pytestmark = pytest.mark.slow
CLAUSE_NAMES = {"start-answer", "retry-after", "retry-after-ms", "pacing", "final-replay"}


def check(url: str, *args: str) -> tuple[int, dict[str, dict]]:
    result = subprocess.run(
        [sys.executable, "-m", "repoll", "check", "--format", "json", *args, url],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    clauses = {c["name"]: c for c in json.loads(result.stdout)}
    return result.returncode, clauses


def test_every_clause_passes_against_the_demo(live):
    # With an API key in a custom header, the operation is that key's: every
    # poll must carry it too, or the operation URL is another principal's 404.
    # 6 s of work outlast the 4 s hold before the graceful 202.
    code, clauses = check(
        f"{live.url}/start_work", "-H", "X-API-Key: check-key", "--json", '{"seconds": 6}'
    )
    assert {name: c["result"] for name, c in clauses.items()} == dict.fromkeys(clauses, "pass")
    assert len(clauses) == 18
    assert code == 0


def seed_server(**pending_headers: str) -> Starlette:
    """The seed's protocol, literally: 303 to itself with Retry-After: 1, no holds, no markers.

    ``pending_headers`` replace or add to the fields of the pending answers.
    """
    jobs: dict[str, float] = {}
    headers = {"retry-after": "1", **pending_headers}

    async def start(request: Request) -> RedirectResponse:
        job = str(len(jobs) + 1)
        jobs[job] = time.monotonic() + 2
        return RedirectResponse(f"/work/{job}", status_code=303, headers=headers)

    async def work(request: Request) -> JSONResponse | RedirectResponse:
        job = request.path_params["job"]
        if job not in jobs:
            return JSONResponse({"error": "unknown"}, status_code=404)
        if request.method == "DELETE":
            return JSONResponse({"error": "no"}, status_code=405)
        if time.monotonic() < jobs[job]:
            await asyncio.sleep(0)
            return RedirectResponse(f"/work/{job}", status_code=303, headers=headers)
        return JSONResponse({"result": "done"})

    return Starlette(
        routes=[
            Route("/start_work", start, methods=["POST"]),
            Route("/work/{job}", work, methods=["GET", "DELETE", "POST"]),
        ]
    )


def test_a_seed_style_server_fails_the_right_clauses():
    with running_server(seed_server()) as url:
        code, clauses = check(f"{url}/start_work", "--timeout", "10")
    results = {name: c["result"] for name, c in clauses.items()}
    assert code == 1
    for failing in ("operation-status", "no-store", "respond-async", "pacing", "unknown-404"):
        assert results[failing] == "fail", (failing, clauses[failing])
    for passing in ("start-answer", "location-same-origin", "retry-after", "wait-zero"):
        assert results[passing] == "pass", (passing, clauses[passing])
    assert results["final-replay"] == "fail"  # no Operation-Status, no Content-Location
    assert results["hop-urls"] == "fail"  # every poll redirected to the same URL
    assert results["graceful-202"] == "fail"  # a 303 at the client's last redirect


def test_a_malformed_retry_after_is_a_failed_clause_not_a_crash():
    # "¹".isdigit() is True but int("¹") raises: the checker must not trust isdigit.
    server = seed_server(**{"retry-after": "\u00b9", "retry-after-ms": "1000"})
    with running_server(server) as url:
        result = subprocess.run(
            [sys.executable, "-m", "repoll", "check", "--timeout", "10", f"{url}/start_work"],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1
    # A table whose "saw" column wraps: a clause's row starts with its name.
    lines = [line.split() for line in result.stdout.splitlines() if line.strip()]
    rows = {words[0]: words[1:3] for words in lines if words[0] in CLAUSE_NAMES}
    assert rows["retry-after"] == ["MUST", "FAIL"]
    assert rows["retry-after-ms"] == ["SHOULD", "FAIL"]
    assert rows["start-answer"] == ["MUST", "PASS"]
