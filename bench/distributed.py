"""The polling workload on the distributed topology, beside the single process.

Two ``repoll serve`` instances sharing a store (Redis, then PostgreSQL) and one
``repoll worker`` (Celery on RabbitMQ, 64 threads); half the clients talk to
each instance. The repoll client with long-poll, the same workload as
``bench/polling.py``. CPU is the sum of both instances and the worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import httpx

from ._common import (
    ROOT,
    cpu_seconds,
    delete_amqp_queues,
    delete_redis_keys,
    drop_postgres_schema,
    free_port,
)
from .polling import STRATEGIES, _run_workload, durations, summarise

BROKER = os.environ.get("REPOLL_BENCH_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
# Each run takes a queue, and a Redis key prefix or a PostgreSQL schema, of its
# own (repoll-bench-RUN), and removes them when it ends, however it ends.
STORES = {
    "redis": "redis://127.0.0.1:6379/13",
    "postgres": "postgresql://postgres@127.0.0.1:5432/test",
}


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "repoll", *argv],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url + "/healthz", timeout=1)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


SERVICES = {"RabbitMQ": 5672, "Redis": 6379, "PostgreSQL": 5432}


def missing_services() -> list[str]:
    missing = []
    for name, port in SERVICES.items():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        except OSError:
            missing.append(name)
    return missing


def run(count: int, clients: int, *, smoke: bool = False) -> list[dict[str, object]]:
    jobs = durations(count)
    if smoke:
        jobs = [min(j, 1.0) for j in jobs]
    strategy, polling = STRATEGIES["repoll, long-poll"]
    rows = []
    for store_name, service in STORES.items():
        run_id = uuid.uuid4().hex[:8]
        queue, schema = f"repoll-bench-{run_id}", f"repoll_bench_{run_id}"
        env = {"REPOLL_QUEUE": queue}
        processes: list[subprocess.Popen[bytes]] = []
        try:
            if store_name == "postgres":
                import psycopg

                with psycopg.connect(service, autocommit=True) as conn:
                    conn.execute(f"CREATE SCHEMA {schema}")
                store = f"{service}?options=-c%20search_path%3D{schema}"
            else:
                store = f"{service}?prefix={queue}:"
            worker = ["worker", "--broker", BROKER, "--queue", queue]
            processes.append(_spawn([*worker, "--concurrency", str(max(clients + 8, 16))], env))
            urls = []
            for _ in range(2):
                port = free_port()
                processes.append(
                    _spawn(
                        ["serve", "--port", str(port), "--store", store, "--broker", BROKER], env
                    )
                )
                urls.append(f"http://127.0.0.1:{port}")
            for url in urls:
                _wait_up(url)
            time.sleep(2)  # the worker connects to the broker
            before = sum(cpu_seconds(p.pid) for p in processes)
            started = time.monotonic()
            outcomes = asyncio.run(_run_workload(strategy, polling, urls, jobs, clients))
            wall = time.monotonic() - started
            cpu = sum(cpu_seconds(p.pid) for p in processes) - before
        finally:
            for process in processes:
                process.send_signal(signal.SIGKILL)
            for process in processes:
                process.wait()
            # Only once nothing runs that would declare or write them again.
            delete_amqp_queues(BROKER, [queue])
            if store_name == "postgres":
                drop_postgres_schema(service, schema)
            else:
                delete_redis_keys(service, f"{queue}:")
        rows.append(
            summarise(f"repoll, long-poll: 2 instances + Celery, {store_name}", outcomes, cpu, wall)
        )
        print(f"  {store_name}: done in {wall:.1f} s", flush=True)
    return rows
