"""Real clients at their defaults against a real server, time compressed (protocol.md 5.6-5.8).

With a small ``max_hold`` every client runs out of redirects within a job of
a few seconds: each must end with the endpoint's answer or with the graceful
202 naming the operation URL, never with an exception, and that URL must
then give the outcome.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from urllib.parse import urljoin

import httpx
import pytest
import requests

from repoll import PacingPolicy
from repoll.cli._demo import create_app
from repoll.cli._main import running_server

JOB = {"seconds": 6.0}
BODY = json.dumps(JOB).encode()
HEADERS = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def compressed() -> Iterator[str]:
    """A server whose holds last 0.1 s: every client's redirects run out in a 6 s job."""
    app = create_app(store="memory://", pacing=PacingPolicy(max_hold=0.1, min_hold=0.1))
    with running_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def default() -> Iterator[str]:
    """A server at the default pacing (max_hold 25 s)."""
    with running_server(create_app(store="memory://")) as url:
        yield url


def _outcome_of(base: str, status: int, headers: dict[str, str], body: bytes) -> None:
    """The graceful 202: its operation URL gives the outcome afterwards."""
    assert status == 202, body
    location = headers["location"]
    assert headers["content-location"] == location
    assert "?" not in location  # the canonical operation URL
    assert headers["operation-status"] in {"queued", "running"}
    assert int(headers["retry-after"]) >= 0
    assert headers["cache-control"] == "no-store"
    document = json.loads(body)
    assert document["status"] in {"queued", "running"}
    assert f"GET {location} for its outcome" in document["detail"]
    url = urljoin(base + "/", location)
    deadline = time.monotonic() + 30
    while True:
        final = httpx.get(url, headers={"prefer": "wait=5"}, timeout=30)
        if final.status_code not in {202, 303} or time.monotonic() > deadline:
            break
    assert final.status_code == 200, final.text
    assert final.json()["seconds"] == JOB["seconds"]


def _lower(headers: object) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}  # type: ignore[attr-defined]


def test_httpx_runs_out_gracefully(compressed):
    response = httpx.post(f"{compressed}/start_work", json=JOB, follow_redirects=True)
    assert 10 <= len(response.history) <= 19  # 20 allowed, one kept spare
    hops = [r.headers["location"] for r in response.history]
    assert hops[0].endswith("?hop=1")
    assert len(set(hops)) == len(hops)  # each hop its own URL
    _outcome_of(compressed, response.status_code, _lower(response.headers), response.content)


def test_requests_runs_out_gracefully(compressed):
    response = requests.post(f"{compressed}/start_work", json=JOB, timeout=60)
    assert len(response.history) <= 29
    _outcome_of(compressed, response.status_code, _lower(response.headers), response.content)


def test_urllib_runs_out_gracefully(compressed):
    request = urllib.request.Request(
        f"{compressed}/start_work", data=BODY, headers=HEADERS, method="POST"
    )
    with urllib.request.urlopen(request) as response:  # raises on a loop or too many
        status, headers, body = response.status, _lower(response.headers), response.read()
    _outcome_of(compressed, status, headers, body)


def test_curl_runs_out_gracefully(compressed):
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "-L",
            "-i",
            "-H",
            "content-type: application/json",
            "--data",
            BODY.decode(),
            f"{compressed}/start_work",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # (--data makes it a POST; -X POST would make curl repeat the POST after the 303.)
    # -i prints every response's head; the last one is the answer.
    last = done.stdout.rsplit("HTTP/1.1 ", 1)[1]
    head, body = last.split("\n\n", 1)  # text mode turned CRLF into newlines
    status = int(head.split()[0])
    headers = {
        name.strip().lower(): value.strip()
        for name, value in (line.split(":", 1) for line in head.split("\n")[1:])
    }
    assert done.stdout.count("HTTP/1.1 303") <= 49
    _outcome_of(compressed, status, headers, body.encode())


def test_aiohttp_runs_out_gracefully(compressed):
    aiohttp = pytest.importorskip("aiohttp")

    async def run() -> tuple[int, dict[str, str], bytes]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{compressed}/start_work", json=JOB) as response,
        ):
            return response.status, _lower(response.headers), await response.read()

    _outcome_of(compressed, *asyncio.run(run()))


@pytest.mark.parametrize("client", ["httpx", "requests", "urllib", "curl"])
def test_a_short_job_ends_with_the_endpoints_answer(compressed, client):
    url = f"{compressed}/start_work"
    job = {"seconds": 0.5}
    if client == "httpx":
        response = httpx.post(url, json=job, follow_redirects=True)
        status, text = response.status_code, response.text
    elif client == "requests":
        answer = requests.post(url, json=job, timeout=30)
        status, text = answer.status_code, answer.text
    elif client == "urllib":
        request = urllib.request.Request(
            url, data=json.dumps(job).encode(), headers=HEADERS, method="POST"
        )
        with urllib.request.urlopen(request) as opened:
            status, text = opened.status, opened.read().decode()
    else:
        done = subprocess.run(
            [
                "curl",
                "-sS",
                "-L",
                "-w",
                "\n%{http_code}",
                "-H",
                "content-type: application/json",
                "--data",
                json.dumps(job),
                url,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        text, code = done.stdout.rsplit("\n", 1)
        status = int(code)
    assert status == 200, text
    assert json.loads(text)["seconds"] == 0.5


def test_httpx_at_its_defaults_outlasts_its_read_timeout(default):
    """A 7 s job: holds stay under httpx's 5 s read timeout, and it gets the answer."""
    started = time.monotonic()
    response = httpx.post(f"{default}/start_work", json={"seconds": 7.0}, follow_redirects=True)
    took = time.monotonic() - started
    assert response.status_code == 200
    assert response.json()["seconds"] == 7.0
    assert len(response.history) <= 3  # holds of 4 s, from the first poll
    assert took < 9


def test_the_repoll_client_keeps_its_long_polls(default):
    """Prefer: wait is not a redirect follower's budget: one long poll, canonical URLs."""
    start = httpx.post(
        f"{default}/start_work", json={"seconds": 1.0}, headers={"prefer": "respond-async"}
    )
    assert start.status_code == 202
    location = start.headers["location"]
    assert "?" not in location
    started = time.monotonic()
    final = httpx.get(
        urljoin(default, location), headers={"prefer": "respond-async, wait=10"}, timeout=30
    )
    assert final.status_code == 200
    assert time.monotonic() - started < 2
