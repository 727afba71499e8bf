"""Requests per second of one server process: repoll's paths against a plain endpoint.

Each measurement: a fresh server process, a warm-up, then the load generator
(its own process) for a fixed time. The plain Starlette JSON endpoint and the
repoll paths are measured in the same run, and reported as ratios.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

import httpx

from ._common import ROOT, server_process


def _load(
    url: str, method: str, path: str, seconds: float, connections: int, *headers: str
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
            str(connections),
            *headers,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    return result["requests"] / result["seconds"]


def _finished_operation(url: str) -> str:
    response = httpx.post(url + "/start", headers={"prefer": "wait=5"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.headers["content-location"]


def run(seconds: float, connections: int = 32) -> list[dict[str, object]]:
    rows = []
    with server_process(["bench.apps:plain_app", "--factory"]) as (url, _):
        _load(url, "GET", "/plain", min(1.0, seconds), connections)  # warm-up
        baseline = _load(url, "GET", "/plain", seconds, connections)
    rows.append(
        {"store": "-", "path": "plain Starlette JSON endpoint", "rps": baseline, "ratio": 1.0}
    )
    for store_name in ("memory", "sqlite"):
        with tempfile.TemporaryDirectory() as tmp:
            store = "memory://" if store_name == "memory" else f"sqlite:///{tmp}/ops.sqlite3"
            with server_process(
                ["bench.apps:repoll_app", "--factory"], env={"REPOLL_STORE": store}
            ) as (url, _):
                operation = _finished_operation(url)
                _load(url, "GET", operation, min(1.0, seconds), connections, "Prefer: wait=0")
                status = _load(url, "GET", operation, seconds, connections, "Prefer: wait=0")
                plain_here = _load(url, "GET", "/plain", seconds, connections)
                starts = _load(url, "POST", "/start", seconds, connections)
        rows += [
            {
                "store": store_name,
                "path": "status GET (final replay)",
                "rps": status,
                "ratio": status / baseline,
            },
            {
                "store": store_name,
                "path": "plain endpoint behind the middleware",
                "rps": plain_here,
                "ratio": plain_here / baseline,
            },
            {
                "store": store_name,
                "path": "start (POST, 303)",
                "rps": starts,
                "ratio": starts / baseline,
            },
        ]
    return rows


COLUMNS = [
    ("store", "store", ""),
    ("path", "path", ""),
    ("rps", "req/s", ".0f"),
    ("ratio", "x plain", ".2f"),
]
