"""What the benchmarks share: servers in subprocesses, CPU readings, percentiles."""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server_process(
    argv: Sequence[str], env: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """Run ``python -m repoll serve ...`` (or any uvicorn target) until the block ends.

    Yields (base URL, pid). Waits for /healthz-or-anything to answer.
    """
    port = free_port()
    # Its log goes to a file: a pipe nobody reads fills up, and then the
    # server blocks in its first log call.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "repoll", "serve", "--port", str(port), *argv],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(log.read().decode())
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    process.kill()
                    raise
                time.sleep(0.05)
        try:
            yield url, process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


# --- what a run leaves on the shared services, removed --------------------------------
# Shared with the tests (tests/services.py). Each takes the names a run chose
# for itself, never a pattern wider than its own prefix.


def delete_amqp_queues(broker: str, names: Iterable[str]) -> None:
    """Delete these queues and the direct exchanges of the same names.

    Celery declares both for a ``--queues NAME`` worker and for ``send_task(queue=NAME)``,
    durable: they outlive every process. Deleting what is already gone is no error.
    """
    from kombu import Connection  # Celery's transport

    with Connection(broker, connect_timeout=5) as connection:
        channel = connection.channel()
        try:
            for name in names:
                channel.queue_delete(queue=name)
                channel.exchange_delete(exchange=name)
        finally:
            channel.close()


def delete_redis_keys(url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (in the database ``url`` names); how many there were."""
    import redis

    if not prefix:
        msg = "an empty prefix would delete the whole database"
        raise ValueError(msg)
    pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in prefix) + "*"
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        return len(keys)
    finally:
        client.close()


def drop_postgres_schema(url: str, schema: str) -> None:
    """``DROP SCHEMA ... CASCADE``: the schema and every table in it; gone already is fine."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")  # an error, not a hang, if something holds it
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def table(rows: list[dict[str, object]], columns: list[tuple[str, str, str]]) -> str:
    """Columns are (key, title, format)."""
    header = [title for _, title, _ in columns]
    body = [
        [format(row[key], fmt) if fmt else str(row[key]) for key, _, fmt in columns] for row in rows
    ]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in body
    ]
    return "\n".join(lines)
