"""A bounded load test on loopback: many clients starting and long-polling operations.

    python -m bench.load [--clients 1000] [--seconds 60]

One demo server process (SQLite store); C clients, each its own principal,
each in a loop for the duration: start a job of a random length (0.05-2 s)
with an Idempotency-Key, follow it with held polls to the final response, and
check that the result is its own. Reports operations, errors, lost operations
(started, never resolved), and the server's memory at a quarter of the run and
at its end. Every loop is bounded in count and time; traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import httpx

from ._common import RESULTS, server_process


@dataclass
class Tally:
    started: int = 0
    completed: int = 0
    errors: list[str] = field(default_factory=list)
    requests: int = 0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def client_loop(
    client: httpx.AsyncClient, base: str, number: int, stop_at: float, tally: Tally
) -> None:
    rng = random.Random(number)
    headers = {"authorization": f"Bearer load-{number}"}
    while time.monotonic() < stop_at:
        seconds = round(rng.uniform(0.05, 2.0), 3)
        key = uuid.UUID(int=rng.getrandbits(128)).hex
        try:
            response = await client.post(
                f"{base}/start_work",
                json={"seconds": seconds},
                headers={**headers, "idempotency-key": f'"{key}"', "prefer": "respond-async"},
            )
            tally.requests += 1
            if response.status_code not in (200, 202):
                tally.errors.append(f"start: {response.status_code} {response.text[:100]}")
                continue
            tally.started += 1
            polls = 0
            while response.status_code == 202 and polls < 100:
                response = await client.get(
                    urljoin(base, response.headers["location"]),
                    headers={**headers, "prefer": "respond-async, wait=30"},
                )
                tally.requests += 1
                polls += 1
            body = response.json()
            if response.status_code != 200 or body.get("seconds") != seconds:
                tally.errors.append(f"final: {response.status_code} {response.text[:100]}")
                continue
            tally.completed += 1
        except httpx.HTTPError as exc:
            tally.errors.append(f"{type(exc).__name__}: {exc}")


async def drive(base: str, clients: int, seconds: float, pid: int) -> dict[str, object]:
    tally = Tally()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(60.0, connect=30.0, pool=60.0)
    memory: dict[str, int] = {}
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        started = time.monotonic()
        stop_at = started + seconds

        async def sample() -> None:
            await asyncio.sleep(seconds / 4)
            memory["quarter_kib"] = rss_kib(pid)

        sampler = asyncio.create_task(sample())
        await asyncio.gather(
            *(client_loop(client, base, n, stop_at, tally) for n in range(clients))
        )
        await sampler
        elapsed = time.monotonic() - started
    memory["end_kib"] = rss_kib(pid)
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": tally.requests,
        "operations_started": tally.started,
        "operations_completed": tally.completed,
        "lost": tally.started - tally.completed - sum(e.startswith("final") for e in tally.errors),
        "errors": len(tally.errors),
        "first_errors": tally.errors[:5],
        "server_rss_quarter_kib": memory.get("quarter_kib"),
        "server_rss_end_kib": memory["end_kib"],
    }


def run(clients: int, seconds: float) -> dict[str, object]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, clients * 4 + 256)), hard))
    with (
        tempfile.TemporaryDirectory() as tmp,
        server_process(
            ["--store", f"sqlite:///{tmp}/ops.sqlite3", "--concurrency", str(clients)]
        ) as (url, pid),
    ):
        return asyncio.run(drive(url, clients, seconds, pid))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    result = run(args.clients, args.seconds)
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
