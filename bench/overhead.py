"""The client's own cost on a response that is not a polling one, against plain httpx.

Two settings, each in interleaved rounds (plain, repoll, plain, ...) with the
median round reported, because these machines are noisy:

* over loopback, against a uvicorn plain endpoint: what a user sees;
* against httpx.MockTransport: the client alone, the worst case for the ratio.
"""

from __future__ import annotations

import statistics
import time

import httpx

import repoll

from ._common import server_process


def _round(client: httpx.Client, url: str, requests: int) -> float:
    started = time.perf_counter()
    for _ in range(requests):
        client.get(url)
    return time.perf_counter() - started


def _compare(make_plain, make_polling, url: str, rounds: int, requests: int) -> dict[str, float]:
    plain_times, polling_times = [], []
    with make_plain() as plain, make_polling() as polling:
        _round(plain, url, requests // 10)
        _round(polling, url, requests // 10)
        for _ in range(rounds):
            plain_times.append(_round(plain, url, requests))
            polling_times.append(_round(polling, url, requests))
    plain_us = statistics.median(plain_times) / requests * 1e6
    polling_us = statistics.median(polling_times) / requests * 1e6
    return {"plain_us": plain_us, "repoll_us": polling_us, "ratio": polling_us / plain_us}


def run(rounds: int, requests: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with server_process(["bench.apps:plain_app", "--factory"]) as (url, _):
        loopback = _compare(
            httpx.Client,
            lambda: httpx.Client(transport=repoll.PollingTransport()),
            url + "/plain",
            rounds,
            requests,
        )
    rows.append({"setting": "loopback, uvicorn plain endpoint", **loopback})

    def answer(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "ok"})

    mocked = _compare(
        lambda: httpx.Client(transport=httpx.MockTransport(answer)),
        lambda: httpx.Client(transport=repoll.PollingTransport(httpx.MockTransport(answer))),
        "http://bench.test/plain",
        rounds,
        requests * 5,
    )
    rows.append({"setting": "MockTransport (client only)", **mocked})
    return rows


COLUMNS = [
    ("setting", "setting", ""),
    ("plain_us", "plain httpx µs/req", ".1f"),
    ("repoll_us", "with PollingTransport µs/req", ".1f"),
    ("ratio", "ratio", ".3f"),
]
