"""Requests per job for standard clients against the demo server.

    .venv/bin/python bench/standard_clients.py [--seconds 5]

Starts the demo app (SQLite store) on a loopback port behind a request
counter, runs one job with each client, and prints the requests the server
saw for it and the time to the result. Writes bench/results/standard_clients.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import requests

import repoll
from repoll._cli import running_server
from repoll._demo import create_app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    body = {"seconds": args.seconds}
    seen: list[str] = []

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(store=f"sqlite:///{tmp}/ops.sqlite3")

        async def counting(scope, receive, send):
            if scope["type"] == "http":
                seen.append(f"{scope['method']} {scope['path']}")
            await app(scope, receive, send)

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

        clients = {
            "curl -L": curl,
            "requests": with_requests,
            "httpx follow_redirects=True": with_httpx,
            "httpx + repoll.PollingTransport": with_repoll,
        }
        if shutil.which("curl") is None:
            del clients["curl -L"]
        rows = []
        with running_server(counting) as url:
            for name, run in clients.items():
                seen.clear()
                started = time.monotonic()
                status = run(url)
                elapsed = time.monotonic() - started
                rows.append(
                    {
                        "client": name,
                        "status": status,
                        "requests": len(seen),
                        "seconds": round(elapsed, 3),
                        "job_seconds": args.seconds,
                    }
                )
    print(f"{'client':<34} {'status':>6} {'requests':>8} {'seconds':>8}")
    for row in rows:
        print(f"{row['client']:<34} {row['status']:>6} {row['requests']:>8} {row['seconds']:>8.2f}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "standard_clients.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
