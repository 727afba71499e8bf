"""The same workload through each polling strategy, against the demo server.

Workload: N operations whose durations are drawn from a seeded log-normal
spread clipped to [0.1 s, 30 s], run by C concurrent clients (each takes the
next operation when its last one is done). Per strategy, a fresh demo server
(SQLite store) in its own process.

Figures: requests per operation (mean, p95); the delay between the work
finishing (``finished_at`` in the demo's result) and the client holding the
result (p50, p95, max); server CPU seconds per operation.
"""

from __future__ import annotations

import asyncio
import math
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx

import repoll
from repoll import PollOptions

from ._common import cpu_seconds, mean, percentile, server_process

NO_HOLD = {"prefer": "respond-async, wait=0"}


@dataclass
class Outcome:
    requests: int
    delay: float
    ok: bool


Strategy = Callable[[httpx.AsyncClient, str, float], Awaitable[Outcome]]


def durations(count: int, seed: int = 20261128) -> list[float]:
    rng = random.Random(seed)
    # Median 2 s, a long right tail, clipped to [0.1, 30] s.
    return [min(max(rng.lognormvariate(math.log(2.0), 1.0), 0.1), 30.0) for _ in range(count)]


def _finish(response: httpx.Response, requests: int) -> Outcome:
    received = time.time()
    ok = response.status_code == 200
    delay = received - response.json()["finished_at"] if ok else float("nan")
    return Outcome(requests, delay, ok)


async def _start(client: httpx.AsyncClient, url: str, seconds: float) -> httpx.Response:
    return await client.post(url + "/start_work", json={"seconds": seconds}, headers=NO_HOLD)


def fixed(interval: float) -> Strategy:
    async def run(client: httpx.AsyncClient, url: str, seconds: float) -> Outcome:
        response = await _start(client, url, seconds)
        requests = 1
        while response.status_code == 202:
            await asyncio.sleep(interval)
            response = await client.get(urljoin(url, response.headers["location"]), headers=NO_HOLD)
            requests += 1
        return _finish(response, requests)

    return run


def backoff(initial: float = 1.0, factor: float = 1.5, cap: float = 20.0) -> Strategy:
    async def run(client: httpx.AsyncClient, url: str, seconds: float) -> Outcome:
        rng = random.Random(hash(seconds))
        response = await _start(client, url, seconds)
        requests, ceiling = 1, initial
        while response.status_code == 202:
            await asyncio.sleep(rng.uniform(0, ceiling))  # full jitter
            ceiling = min(ceiling * factor, cap)
            response = await client.get(urljoin(url, response.headers["location"]), headers=NO_HOLD)
            requests += 1
        return _finish(response, requests)

    return run


def retry_after_only() -> Strategy:
    """Honour the integer Retry-After, as a generic client that reads only that would."""

    async def run(client: httpx.AsyncClient, url: str, seconds: float) -> Outcome:
        response = await _start(client, url, seconds)
        requests = 1
        while response.status_code == 202:
            await asyncio.sleep(int(response.headers.get("retry-after", "1")))
            response = await client.get(urljoin(url, response.headers["location"]), headers=NO_HOLD)
            requests += 1
        return _finish(response, requests)

    return run


def repoll_client(long_poll: float) -> Strategy:
    async def run(client: httpx.AsyncClient, url: str, seconds: float) -> Outcome:
        hops: list[repoll.Hop] = []
        options = PollOptions(long_poll=long_poll, on_progress=hops.append)
        response = await client.post(
            url + "/start_work",
            json={"seconds": seconds},
            extensions={"repoll.options": options},
        )
        return _finish(response, max(len(hops), 1))

    return run


def repoll_defaults() -> Strategy:
    """The repoll client exactly as shipped: no options (the hops come with the response)."""

    async def run(client: httpx.AsyncClient, url: str, seconds: float) -> Outcome:
        response = await client.post(url + "/start_work", json={"seconds": seconds})
        hops = response.extensions.get("repoll.hops", [])
        return _finish(response, max(len(hops), 1))

    return run


def held_start() -> Strategy:
    """Not a default: the start itself asks to be held (``Prefer: wait=25``)."""

    async def run(client: httpx.AsyncClient, url: str, seconds: float) -> Outcome:
        response = await client.post(
            url + "/start_work",
            json={"seconds": seconds},
            headers={"prefer": "wait=25"},
            # httpx's 5 s read timeout would cut the held start: the cost a
            # client would have to pay (the transport extends only polls).
            timeout=httpx.Timeout(5.0, read=30.0),
        )
        hops = response.extensions.get("repoll.hops", [])
        return _finish(response, max(len(hops), 1))

    return run


# name -> (strategy, whether it runs on repoll's transport)
STRATEGIES: dict[str, tuple[Strategy, bool]] = {
    "fixed 1 s": (fixed(1.0), False),
    "fixed 0.5 s": (fixed(0.5), False),
    "backoff 1 s x1.5 to 20 s, jitter": (backoff(), False),
    "Retry-After only": (retry_after_only(), False),
    "repoll, estimates, no long-poll": (repoll_client(long_poll=0), True),
    "repoll, long-poll": (repoll_client(long_poll=30), True),
}


async def _run_workload(
    strategy: Strategy,
    polling: bool,
    url: str | list[str],
    jobs: list[float],
    clients: int,
    *,
    client_defaults: bool = False,
) -> list[Outcome]:
    urls = [url] if isinstance(url, str) else url
    queue = list(enumerate(jobs))
    outcomes: list[Outcome] = []
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
    transport: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport(limits=limits)
    if polling:
        transport = repoll.AsyncPollingTransport(transport)
    # With client_defaults, httpx's own timeout (5 s) stands, as a user gets it.
    timeout = httpx.Timeout(5.0) if client_defaults else httpx.Timeout(120)

    async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:

        async def worker(base: str) -> None:
            while queue:
                _, seconds = queue.pop(0)
                outcomes.append(await strategy(client, base, seconds))

        # Clients are spread over the instances (one, unless distributed).
        await asyncio.gather(*(worker(urls[n % len(urls)]) for n in range(clients)))
    return outcomes


def summarise(name: str, outcomes: list[Outcome], cpu: float, wall: float) -> dict[str, object]:
    requests = [o.requests for o in outcomes]
    delays = [o.delay * 1000 for o in outcomes if o.ok]
    return {
        "strategy": name,
        "operations": len(outcomes),
        "failed": sum(not o.ok for o in outcomes),
        "requests_mean": mean(requests),
        "requests_p95": percentile(requests, 95),
        "delay_p50_ms": percentile(delays, 50),
        "delay_p95_ms": percentile(delays, 95),
        "delay_max_ms": max(delays) if delays else float("nan"),
        "server_cpu_ms_per_op": cpu / max(len(outcomes), 1) * 1000,
        "wall_s": wall,
    }


def run(count: int, clients: int, *, smoke: bool = False) -> list[dict[str, object]]:
    jobs = durations(count)
    if smoke:
        jobs = [min(j, 0.6) for j in jobs]
    rows = []
    for name, (strategy, polling) in STRATEGIES.items():
        with (
            tempfile.TemporaryDirectory() as tmp,
            server_process(
                ["--store", f"sqlite:///{tmp}/ops.sqlite3", "--concurrency", str(clients * 2)]
            ) as (url, pid),
        ):
            cpu_before = cpu_seconds(pid)
            started = time.monotonic()
            outcomes = asyncio.run(_run_workload(strategy, polling, url, jobs, clients))
            wall = time.monotonic() - started
            cpu = cpu_seconds(pid) - cpu_before
        rows.append(summarise(name, outcomes, cpu, wall))
        print(f"  {name}: done in {wall:.1f} s", flush=True)
    return rows


# The client as shipped against the same run's fixed 1 s polling: 40 jobs of
# 0.2-8 s (log-normal, median 1.5 s), 20 at a time.
DEFAULTS: dict[str, tuple[Strategy, bool]] = {
    "fixed 1 s": (fixed(1.0), False),
    "repoll client, its defaults": (repoll_defaults(), True),
    "repoll client, held start (not a default)": (held_start(), True),
}


def default_durations(count: int, seed: int = 20261201) -> list[float]:
    rng = random.Random(seed)
    return [min(max(rng.lognormvariate(math.log(1.5), 0.8), 0.2), 8.0) for _ in range(count)]


def run_defaults(count: int, clients: int, *, smoke: bool = False) -> list[dict[str, object]]:
    """The client as shipped (httpx's 5 s timeout, no PollOptions) beside fixed 1 s polling."""
    jobs = default_durations(count)
    if smoke:
        jobs = [min(j, 0.6) for j in jobs]
    rows = []
    for name, (strategy, polling) in DEFAULTS.items():
        with (
            tempfile.TemporaryDirectory() as tmp,
            server_process(["--store", f"sqlite:///{tmp}/ops.sqlite3"]) as (url, pid),
        ):
            cpu_before = cpu_seconds(pid)
            started = time.monotonic()
            outcomes = asyncio.run(
                _run_workload(strategy, polling, url, jobs, clients, client_defaults=True)
            )
            wall = time.monotonic() - started
            cpu = cpu_seconds(pid) - cpu_before
        rows.append(summarise(name, outcomes, cpu, wall))
        print(f"  {name}: done in {wall:.1f} s", flush=True)
    return rows


COLUMNS = [
    ("strategy", "strategy", ""),
    ("operations", "ops", "d"),
    ("failed", "failed", "d"),
    ("requests_mean", "req/op mean", ".2f"),
    ("requests_p95", "req/op p95", ".0f"),
    ("delay_p50_ms", "delay p50 ms", ".0f"),
    ("delay_p95_ms", "delay p95 ms", ".0f"),
    ("delay_max_ms", "delay max ms", ".0f"),
    ("server_cpu_ms_per_op", "server CPU ms/op", ".2f"),
]
