"""What browsers get: the progress page, server-sent events, CORS and the ES module."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

import repoll
from test_server import build_app

pytestmark = pytest.mark.anyio
HTML = {"accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


@pytest.fixture
async def web():
    app, server, seen = build_app(cors_origins=["http://allowed.test"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c, seen
    seen["release"].set()
    await server.close()


async def test_a_navigation_gets_a_progress_page_that_refreshes_itself(web):
    client, seen = web
    start = await client.post("/gated", headers=HTML)
    assert start.status_code == 202
    assert start.headers["content-type"] == "text/html; charset=utf-8"
    location = start.headers["location"]
    assert start.headers["refresh"].endswith(f"; url={location}")
    assert int(start.headers["refresh"].split(";")[0]) >= 1
    await asyncio.sleep(0.05)  # progress is written in the background
    page = await client.get(location, headers=HTML)  # not held: a person is waiting
    assert page.status_code == 202
    text = page.text
    assert '<progress id="progress" max="1" value="0.250"' in text
    assert 'role="status"' in text
    assert "waiting for the gate" in text
    assert "Status: <strong>running</strong>" in text
    seen["release"].set()
    await asyncio.sleep(0.1)
    final = await client.get(location, headers=HTML)
    assert final.status_code == 200
    assert final.json() == {"gate": "opened"}


async def test_the_page_escapes_what_the_work_reports():
    app, server, _ = build_app()

    @app.post("/evil")
    @repoll.deferred
    async def evil() -> dict:
        repoll.report_progress(0.5, "<script>alert(1)</script>")
        await asyncio.sleep(0.5)
        return {}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        location = (await c.post("/evil", headers=HTML)).headers["location"]
        await asyncio.sleep(0.05)
        page = (await c.get(location, headers=HTML)).text
        assert "<script>" not in page
        assert "&lt;script&gt;" in page
    await server.close()


async def test_events_stream_progress_until_the_outcome(web):
    client, seen = web
    location = (await client.post("/gated")).headers["location"]
    await asyncio.sleep(0.05)  # progress is written in the background

    async def release_later():
        await asyncio.sleep(0.3)
        seen["release"].set()

    releaser = asyncio.create_task(release_later())
    events = []
    async with client.stream("GET", location, headers={"accept": "text/event-stream"}) as stream:
        assert stream.headers["content-type"] == "text/event-stream"
        event = None
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((event, json.loads(line.removeprefix("data: "))))
    await releaser
    assert events[0][0] == "status"
    assert events[0][1]["progress"] == 0.25
    assert events[-1][0] == "outcome"
    assert events[-1][1]["status"] == "succeeded"
    assert events[-1][1]["response_status"] == 200


async def test_a_start_that_asked_for_202_keeps_getting_202(web):
    client, seen = web
    start = await client.post("/gated", headers={"prefer": "respond-async"})
    assert start.status_code == 202
    poll = await client.get(start.headers["location"], headers={"prefer": "wait=0"})
    assert poll.status_code == 202  # no Prefer: respond-async this time
    seen["release"].set()


async def test_cors_for_allowed_origins_only(web):
    client, seen = web
    start = await client.post("/gated", headers={"origin": "http://allowed.test"})
    assert start.headers["access-control-allow-origin"] == "http://allowed.test"
    exposed = start.headers["access-control-expose-headers"]
    for name in ("Location", "Retry-After", "Retry-After-Ms", "Operation-Status"):
        assert name in exposed
    location = start.headers["location"]
    poll = await client.get(location, headers={"origin": "http://allowed.test", "prefer": "wait=0"})
    assert poll.headers["access-control-allow-origin"] == "http://allowed.test"
    other = await client.get(location, headers={"origin": "http://evil.test", "prefer": "wait=0"})
    assert "access-control-allow-origin" not in other.headers
    preflight = await client.options(
        location,
        headers={"origin": "http://allowed.test", "access-control-request-method": "DELETE"},
    )
    assert preflight.status_code == 204
    assert "DELETE" in preflight.headers["access-control-allow-methods"]
    assert "Prefer" in preflight.headers["access-control-allow-headers"]
    seen["release"].set()


async def test_the_es_module_is_served(web):
    client, _ = web
    module = await client.get("/operations/client.js")
    assert module.status_code == 200
    assert module.headers["content-type"].startswith("text/javascript")
    assert "export async function request" in module.text
    assert "Retry-After-Ms" in module.text
