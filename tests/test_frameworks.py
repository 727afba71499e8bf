"""Other frameworks under their real servers: the example apps in examples/.

Litestar (ASGI): ``repoll.PollingMiddleware`` around the app, ``await
repoll.defer()`` in the handler, served by uvicorn in its own process. A
5-second job reaches curl -L, requests, httpx and the repoll client at
their defaults; progress shows in the status document; DELETE cancels;
another principal gets 404; ``repoll check`` passes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import requests
from tests.services import free_port

import repoll

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def litestar_url() -> Iterator[str]:
    pytest.importorskip("litestar")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.litestar_app:app", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/hello", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(process.stderr.read().decode() if process.stderr else "no start")
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def _curl(url: str) -> tuple[int, dict]:
    out = subprocess.run(
        ["curl", "-sS", "-L", "-d", "", "-w", "\n%{http_code}", url],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body)


def _requests(url: str) -> tuple[int, dict]:
    response = requests.post(url, timeout=None)
    return response.status_code, response.json()


def _httpx(url: str) -> tuple[int, dict]:
    response = httpx.post(url, follow_redirects=True)  # its 5 s read timeout
    return response.status_code, response.json()


def _repoll(url: str) -> tuple[int, dict]:
    with httpx.Client(transport=repoll.PollingTransport()) as client:
        response = client.post(url)
    return response.status_code, response.json()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_litestar_serves_a_5_second_job_to_every_client(litestar_url):
    url = f"{litestar_url}/reports?pages=10"  # 10 pages of 0.5 s
    calls = {"curl -L": _curl, "requests": _requests, "httpx": _httpx, "repoll": _repoll}
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = {name: pool.submit(call, url) for name, call in calls.items()}
        results = {name: f.result(timeout=60) for name, f in futures.items()}
    for name, (status, body) in results.items():
        assert (status, body) == (201, {"pages": 10}), name  # Litestar's POST answers 201


def test_litestar_validation_progress_cancel_and_ownership(litestar_url):
    bad = httpx.post(f"{litestar_url}/reports?pages=many")
    assert bad.status_code == 400  # Litestar's own answer, no operation
    assert "operation-status" not in bad.headers
    key = {"X-API-Key": "alice"}
    started = httpx.post(
        f"{litestar_url}/reports?pages=10", headers={**key, "prefer": "respond-async"}
    )
    assert started.status_code == 202
    operation = litestar_url + started.headers["location"]
    time.sleep(1.3)
    status = httpx.get(operation, headers={**key, "prefer": "wait=0"})
    assert status.headers["operation-status"] == "running"
    assert status.json()["progress"] > 0
    assert status.json()["message"].startswith("page ")
    assert httpx.get(operation, headers={"X-API-Key": "mallory"}).status_code == 404
    assert httpx.delete(operation, headers=key).status_code in (200, 202)
    ended = httpx.get(operation, headers={**key, "prefer": "wait=10"}, timeout=20)
    assert ended.headers["operation-status"] == "canceled"


def test_repoll_check_passes_against_litestar(litestar_url):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "repoll",
            "check",
            "--format",
            "json",
            f"{litestar_url}/reports?pages=12",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    clauses = {c["name"]: c["result"] for c in json.loads(result.stdout)}
    assert result.returncode == 0, clauses
    assert set(clauses.values()) == {"pass"}, clauses
