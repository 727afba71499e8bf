"""A small HTTP/1.1 keep-alive load generator on raw asyncio streams.

Runs in its own process (``python -m bench.loadgen URL METHOD PATH SECONDS
CONNECTIONS [HEADER ...]``) and prints one JSON line: completed requests,
seconds, status counts. Far cheaper per request than an HTTP client library,
so that on a 2-core machine the server, not the generator, is what is measured.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from urllib.parse import urlsplit


async def _connection(
    host: str, port: int, request: bytes, stop_at: float, counts: Counter[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < stop_at:
            writer.write(request)
            status_line = await reader.readline()
            if not status_line:
                return
            status = int(status_line.split()[1])
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            counts[status] += 1
    finally:
        writer.close()


async def _main(
    url: str, method: str, path: str, seconds: float, connections: int, headers: list[str]
) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", *headers]
    if method == "POST":
        lines += ["Content-Length: 0"]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    counts: Counter[int] = Counter()
    started = time.monotonic()
    stop_at = started + seconds
    await asyncio.gather(
        *(_connection(host, port, request, stop_at, counts) for _ in range(connections))
    )
    elapsed = time.monotonic() - started
    print(
        json.dumps({"requests": sum(counts.values()), "seconds": elapsed, "statuses": dict(counts)})
    )


if __name__ == "__main__":
    url, method, path, seconds, connections, *headers = sys.argv[1:]
    asyncio.run(_main(url, method, path, float(seconds), int(connections), headers))
