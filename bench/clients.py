"""Requests per job for standard clients (curl -L, requests, httpx) against the demo server.

A fresh demo server per client (SQLite store, so no history from an earlier
job helps), served in this process behind a counter of the requests that reach it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable

import httpx
import requests

import repoll
from repoll.cli._demo import create_app
from repoll.cli._main import running_server


def run(seconds: float) -> list[dict[str, object]]:
    body = {"seconds": seconds}

    def curl(url: str) -> int:
        out = subprocess.run(
            [
                "curl",
                "-sL",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-d",
                json.dumps(body),
                "-H",
                "Content-Type: application/json",
                f"{url}/start_work",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout)

    def with_requests(url: str) -> int:
        return requests.post(f"{url}/start_work", json=body, timeout=120).status_code

    def with_httpx(url: str) -> int:
        with httpx.Client(follow_redirects=True, timeout=120) as client:
            return client.post(f"{url}/start_work", json=body).status_code

    def with_repoll(url: str) -> int:
        with httpx.Client(transport=repoll.PollingTransport(), timeout=120) as client:
            return client.post(f"{url}/start_work", json=body).status_code

    clients: dict[str, Callable[[str], int]] = {
        "curl -L": curl,
        "requests": with_requests,
        "httpx follow_redirects=True": with_httpx,
        "httpx + repoll.PollingTransport": with_repoll,
    }
    if shutil.which("curl") is None:
        del clients["curl -L"]
    rows: list[dict[str, object]] = []
    for name, client in clients.items():
        seen: list[str] = []
        with tempfile.TemporaryDirectory() as tmp:
            app = create_app(store=f"sqlite:///{tmp}/ops.sqlite3")

            async def counting(scope, receive, send, app=app, seen=seen):
                if scope["type"] == "http":
                    seen.append(f"{scope['method']} {scope['path']}")
                await app(scope, receive, send)

            with running_server(counting) as url:
                started = time.monotonic()
                status = client(url)
                elapsed = time.monotonic() - started
        rows.append({"client": name, "status": status, "requests": len(seen), "seconds": elapsed})
    return rows


COLUMNS = [
    ("client", "client", ""),
    ("status", "status", "d"),
    ("requests", "requests seen by the server", "d"),
    ("seconds", "seconds", ".2f"),
]
