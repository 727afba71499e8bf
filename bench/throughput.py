"""Requests per second of one server process: repoll's paths against a plain endpoint.

Three server processes run side by side: a plain Starlette app (the
baseline), and the same app with repoll installed on the memory store and on
the default SQLite store. The load generator (its own process, raw sockets,
32 keep-alive connections) then measures every path in short slices, round
after round, in the same order. Each round's ratios are taken against that
round's own baseline slice, and the table reports the median over rounds:
on a shared 2-core machine whose speed drifts by tens of percent within a
minute, only measurements seconds apart compare fairly.

The server's CPU time per request (from /proc) is reported beside: it does
not depend on how busy the rest of the machine was.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from typing import NamedTuple

import httpx

from ._common import ROOT, cpu_seconds, server_process

CONNECTIONS = 32


def _load(
    url: str, method: str, path: str, seconds: float, *headers: str, expect: int = 200
) -> float:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            url,
            method,
            path,
            str(seconds),
            str(CONNECTIONS),
            *headers,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    # The label says what was measured: (nearly) every answer is that one,
    # and none is an error. A start of work that ends a turn after it begins
    # is now and then answered 200 (its insert waited a turn for the lock).
    statuses = {int(status): count for status, count in result["statuses"].items()}
    answered = sum(statuses.values())
    if not set(statuses) <= {200, 303} or statuses.get(expect, 0) < 0.95 * answered:
        msg = f"{method} {path}: expected {expect}, got {statuses}"
        raise RuntimeError(msg)
    return float(result["requests"]) / float(result["seconds"])


def _finished_operation(url: str) -> str:
    response = httpx.post(url + "/start", headers={"prefer": "wait=5"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.headers["content-location"]


class _Probe(NamedTuple):
    """One path measured: which server, what request, and the status it must get."""

    store: str
    label: str
    url: str
    pid: int
    method: str
    path: str
    headers: tuple[str, ...] = ()
    expect: int = 200

    def load(self, seconds: float) -> float:
        return _load(self.url, self.method, self.path, seconds, *self.headers, expect=self.expect)


def run(seconds: float, rounds: int = 7) -> list[dict[str, object]]:
    """``rounds`` rounds of every path, each measured for ``seconds``."""
    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        plain_url, plain_pid = stack.enter_context(
            server_process(["bench.apps:plain_app", "--factory"])
        )
        paths = [
            _Probe("-", "plain Starlette JSON endpoint", plain_url, plain_pid, "GET", "/plain")
        ]
        for name, store in (("memory", "memory://"), ("sqlite", f"sqlite:///{tmp}/ops.db")):
            url, pid = stack.enter_context(
                server_process(["bench.apps:repoll_app", "--factory"], env={"REPOLL_STORE": store})
            )
            operation = _finished_operation(url)
            paths += [
                _Probe(name, "plain endpoint behind the middleware", url, pid, "GET", "/plain"),
                _Probe(
                    name,
                    "status GET (final replay)",
                    *(url, pid, "GET", operation),
                    headers=("Prefer: wait=0",),
                ),
                # Work that ends before its record is written: one write, and
                # the final response at once (protocol 3.6).
                _Probe(name, "start, work ends at once (200)", url, pid, "POST", "/start"),
                # Work that ends a turn of the loop later: the 303, then the outcome.
                _Probe(
                    name,
                    "start, work ends after the answer (303)",
                    *(url, pid, "POST", "/start_next_turn"),
                    expect=303,
                ),
            ]
        for probe in paths:  # warm-up
            probe.load(min(1.0, seconds))
        rps: list[list[float]] = [[] for _ in paths]
        cpu: list[list[float]] = [[] for _ in paths]
        for _ in range(rounds):
            for index, probe in enumerate(paths):
                before = cpu_seconds(probe.pid)
                rate = probe.load(seconds)
                used = cpu_seconds(probe.pid) - before
                rps[index].append(rate)
                cpu[index].append(used / (rate * seconds) * 1e6 if rate else float("nan"))
    rows = []
    for index, probe in enumerate(paths):
        ratios = [mine / base for mine, base in zip(rps[index], rps[0], strict=True)]
        rows.append(
            {
                "store": probe.store,
                "path": probe.label,
                "rps": statistics.median(rps[index]),
                "ratio": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "cpu_us": statistics.median(cpu[index]),
                "cpu_ratio": statistics.median(cpu[0]) / statistics.median(cpu[index]),
            }
        )
    return rows


COLUMNS = [
    ("store", "store", ""),
    ("path", "path", ""),
    ("rps", "req/s", ".0f"),
    ("ratio", "x plain", ".2f"),
    ("ratio_min", "min", ".2f"),
    ("ratio_max", "max", ".2f"),
    ("cpu_us", "CPU us/req", ".0f"),
    ("cpu_ratio", "x plain (CPU)", ".2f"),
]
