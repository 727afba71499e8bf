"""The client's circuit breaker: by hand, then 100 operations and a dead origin."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from tests.services import Proxy

import repoll
from repoll.cli._demo import create_app
from repoll.cli._main import running_server
from repoll.core._breaker import BreakerPolicy, CircuitBreaker, CircuitState, is_failure

ORIGIN = "http://api.test:80"


def test_opens_after_failures_in_a_row_then_probes_once():
    breaker = CircuitBreaker(BreakerPolicy(failures=3, cooldown=10))
    for now in (0, 1):
        assert breaker.allow(ORIGIN, now) is None
        breaker.record(ORIGIN, failed=True, now=now)
    breaker.record(ORIGIN, failed=False, now=2)  # a success resets the count
    for now in (3, 4, 5):
        breaker.record(ORIGIN, failed=True, now=now)
    assert breaker.state(ORIGIN) is CircuitState.OPEN
    assert breaker.allow(ORIGIN, 6) == pytest.approx(9)  # refused: 9 s of cool-down left
    assert breaker.allow(ORIGIN, 15) is None  # cooled down: the probe
    assert breaker.state(ORIGIN) is CircuitState.HALF_OPEN
    assert breaker.allow(ORIGIN, 15.5) is not None  # one probe at a time
    breaker.record(ORIGIN, failed=True, now=16)  # the probe failed: open again
    assert breaker.allow(ORIGIN, 20) is not None
    assert breaker.allow(ORIGIN, 26) is None
    breaker.record(ORIGIN, failed=False, now=26)
    assert breaker.state(ORIGIN) is CircuitState.CLOSED
    assert breaker.allow(ORIGIN, 26) is None


def test_a_lost_probe_frees_the_half_open_state():
    breaker = CircuitBreaker(BreakerPolicy(failures=1, cooldown=5))
    breaker.record(ORIGIN, failed=True, now=0)
    assert breaker.allow(ORIGIN, 5) is None  # the probe goes, and never reports
    assert breaker.allow(ORIGIN, 6) is not None
    assert breaker.allow(ORIGIN, 10) is None  # another probe, a cool-down later


def test_origins_are_apart():
    breaker = CircuitBreaker(BreakerPolicy(failures=1, cooldown=5))
    breaker.record(ORIGIN, failed=True, now=0)
    assert breaker.allow("http://other.test:80", 1) is None


def test_what_counts_as_a_failure():
    assert is_failure(0, error=True)
    assert all(is_failure(status, error=False) for status in (500, 502, 503, 504))
    # A server that answers, even "come back later" or "too many", is alive.
    assert not any(is_failure(status, error=False) for status in (200, 202, 303, 404, 429))


def test_policy_is_checked():
    with pytest.raises(ValueError, match="failures"):
        BreakerPolicy(failures=0)


class CountingTransport(httpx.AsyncBaseTransport):
    """Counts the requests that reach the network."""

    def __init__(self, wake_at: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent = 0
        self.wake_at = wake_at
        self.reached = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        if self.sent >= self.wake_at:
            self.reached.set()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_dead_origin_fails_100_operations_fast_and_they_resume():
    app = create_app(
        store="memory://",
        executor=repoll.InProcessExecutor(concurrency=100),
        pacing=repoll.PacingPolicy(max_hold=2.0),
    )
    with running_server(app) as backend:
        proxy = Proxy(int(backend.rsplit(":", 1)[1]))
        await proxy.start()
        base = f"http://127.0.0.1:{proxy.port}"
        counting = CountingTransport(wake_at=200)  # every start, every first poll
        options = repoll.PollOptions(circuit_breaker=BreakerPolicy(failures=5, cooldown=30))
        transport = repoll.AsyncPollingTransport(counting, options=options)
        body = json.dumps({"seconds": 6}).encode()
        headers = {"content-type": "application/json"}
        async with httpx.AsyncClient(transport=transport, timeout=30) as client:
            start = base + "/start_work"
            calls = [
                asyncio.ensure_future(client.post(start, content=body, headers=headers))
                for _ in range(100)
            ]
            await asyncio.wait_for(counting.reached.wait(), 30)
            await asyncio.sleep(0.3)
            await proxy.stop()  # the origin goes away, held polls and all
            down_at, started = counting.sent, time.monotonic()
            results = await asyncio.gather(*calls, return_exceptions=True)
            took = time.monotonic() - started
            attempts_while_down = counting.sent - down_at
        assert all(isinstance(r, repoll.CircuitOpenError) for r in results), results[:3]
        urls = {r.operation_url for r in results}
        assert len(urls) == 100  # each names its own operation
        assert all("refused for" in str(r) and r.operation_url in str(r) for r in results)
        # Fast: the cut held polls, at most a few retries until the circuit
        # opened, then none at all during the cool-down.
        assert took < 5, took
        assert attempts_while_down <= 10, attempts_while_down
        await proxy.start()  # the origin is back, on the same port
        async with httpx.AsyncClient(timeout=30) as client:
            handles = [repoll.AsyncOperationHandle.resume(client, url) for url in urls]
            answers = await asyncio.gather(*(h.result() for h in handles))
        assert all(a.status_code == 200 and a.json()["result"] == "done" for a in answers)
        await proxy.stop()
