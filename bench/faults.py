"""The fault suite: each failure found by attacking and operating repoll, replayed at full size.

    python -m bench.faults [--only NAME,...] [--outage 120]

Every scenario runs real processes on loopback (``repoll serve``, throwaway
``redis-server`` instances, curl-free raw sockets) and prints what it
measured; the JSON lands in bench/results/faults.json. The CI suite replays
the same faults at a size that fits in seconds (tests/test_hardening.py,
tests/test_shared_healing.py, tests/test_workers.py, tests/test_proxy.py);
this is the long version: 100 KB headers, 6,000 abandoned streams, 1,000
failing starts, a two-minute store outage, four worker processes.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

from ._common import RESULTS, ROOT, cpu_seconds, free_port, server_process


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


# --- one process ---------------------------------------------------------------------


def hostile_headers() -> dict[str, Any]:
    """A 100 KB Prefer on a start, with /healthz timed meanwhile; absurd waits; failing starts."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        server_process([], env={"REPOLL_STORE": f"sqlite:///{tmp}/ops.db"}) as (url, _),
    ):
        hostile = "a" * 100_000 + '"'
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            started = time.monotonic()
            start = pool.submit(
                httpx.post,
                f"{url}/start_work",
                json={"seconds": 0},
                headers={"prefer": hostile},
                timeout=60,
            )
            health = pool.submit(httpx.get, f"{url}/healthz", timeout=60)
            health_ms = _ms(health.result().elapsed.total_seconds())
            start_status = start.result().status_code
            start_ms = _ms(time.monotonic() - started)
        digits = httpx.post(
            f"{url}/start_work",
            json={"seconds": 0},
            headers={"prefer": "wait=" + "9" * 10_000},
            timeout=60,
        ).status_code
        # 1,000 starts that fail: a malformed key, a key reused with
        # another body, absurd waits; then a job must still run at once.
        failures: dict[int, int] = {}
        with httpx.Client(timeout=60) as client:
            client.post(
                f"{url}/start_work",
                json={"seconds": 0},
                headers={"idempotency-key": '"k"', "prefer": "wait=5"},
            )
            for index in range(1000):
                kind = index % 3
                headers = (
                    {"idempotency-key": "bad key"},
                    {"idempotency-key": '"k"'},
                    {"prefer": "wait=" + "9" * 400},
                )[kind]
                body = {"seconds": 0 if kind != 1 else 1}
                status = client.post(f"{url}/start_work", json=body, headers=headers)
                failures[status.status_code] = failures.get(status.status_code, 0) + 1
            began = time.monotonic()
            after = client.post(
                f"{url}/start_work", json={"seconds": 0}, headers={"prefer": "wait=5"}
            )
            after_ms = _ms(time.monotonic() - began)
    return {
        "prefer_100kb_status": start_status,
        "prefer_100kb_ms": start_ms,
        "healthz_meanwhile_ms": health_ms,
        "wait_10000_digits_status": digits,
        "failing_starts_statuses": failures,
        "job_after_failures_status": after.status_code,
        "job_after_failures_ms": after_ms,
    }


def _open_stream(url: str, path: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


def abandoned_streams(count: int = 6000) -> dict[str, Any]:
    """Open ``count`` event streams on one running operation, drop them, watch the server."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {"REPOLL_STORE": f"sqlite:///{tmp}/ops.db"}
        with server_process([], env=env) as (url, pid):
            location = httpx.post(
                f"{url}/start_work", json={"seconds": 600}, follow_redirects=False, timeout=30
            ).headers["location"]
            sockets = []
            for _ in range(count):
                sockets.append(_open_stream(url, location))
            for sock in sockets:
                sock.recv(4096)
            busy_before = cpu_seconds(pid)
            time.sleep(2)
            open_cpu = (cpu_seconds(pid) - busy_before) / 2
            for sock in sockets:
                sock.close()
            time.sleep(3)
            before = cpu_seconds(pid)
            time.sleep(3)
            idle_cpu = (cpu_seconds(pid) - before) / 3
            began = time.monotonic()
            poll = httpx.get(urljoin(url, location), headers={"prefer": "wait=1"}, timeout=30)
            held_ms = _ms(time.monotonic() - began)
    return {
        "streams": count,
        "server_cpu_while_open": round(open_cpu, 3),
        "server_cpu_after_abandoned": round(idle_cpu, 3),
        "next_poll_status": poll.status_code,
        "next_poll_held_ms": held_ms,  # about 1000: held, not shed
    }


def one_principal_floods(count: int = 400) -> dict[str, Any]:
    """``count`` concurrent starts from one principal, then with junk cookies."""

    async def flood(url: str, headers: Callable[[int], dict[str, str]]) -> dict[int, int]:
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            answers = await asyncio.gather(
                *(
                    client.post(f"{url}/start_work", json={"seconds": 30}, headers=headers(i))
                    for i in range(count)
                )
            )
        statuses: dict[int, int] = {}
        for answer in answers:
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        return statuses

    results = {}
    for name, headers in (
        ("bearer", lambda i: {"authorization": "Bearer one", "idempotency-key": str(i)}),
        ("junk_cookies", lambda i: {"cookie": f"junk={i}"}),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            env = {"REPOLL_STORE": f"sqlite:///{tmp}/ops.db"}
            with server_process([], env=env) as (url, _):
                results[name] = asyncio.run(flood(url, headers))
    return results


# --- several processes -----------------------------------------------------------------


@contextmanager
def _workers(store: Path, workers: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "repoll", "serve", "--port", str(port)),
            *("--workers", str(workers), "--store", f"sqlite:///{store}"),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url + "/healthz", timeout=1)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                raise
            time.sleep(0.1)
    # One worker answering says nothing of the others, still importing the
    # app; each holds its lock file in PATH-owners/ once its store is open.
    owners = Path(f"{store}-owners")
    while not owners.exists() or len(list(owners.glob("*.lock"))) < workers:
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise RuntimeError("not every worker started")
        time.sleep(0.1)
    try:
        yield url, process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _start(url: str, seconds: float) -> str:
    answer = httpx.post(
        f"{url}/start_work",
        json={"seconds": seconds},
        headers={"connection": "close"},
        timeout=30,
    )
    return urljoin(url, answer.headers["location"])


def killed_worker(operations: int = 100, workers: int = 4) -> dict[str, Any]:
    """``repoll serve --workers 4`` on SQLite, one worker SIGKILLed mid-way."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "ops.db"
        with _workers(store, workers) as (url, _):
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                urls = list(pool.map(lambda _: _start(url, 8.0), range(operations)))
            with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
                owners = dict(
                    db.execute("SELECT id, json_extract(record, '$.owner') FROM repoll_operations")
                )
            by_owner: dict[str, list[str]] = {}
            for op_url in urls:
                by_owner.setdefault(owners[op_url.rsplit("/", 1)[1]], []).append(op_url)
            victim = max(by_owner, key=lambda owner: len(by_owner[owner]))
            time.sleep(2)
            killed_at = time.monotonic()
            os.kill(int(victim.split(":")[-2]), signal.SIGKILL)
            lost = set(by_owner[victim])
            lost_after: dict[str, float] = {}
            while len(lost_after) < len(lost) and time.monotonic() - killed_at < 30:
                for op_url in lost - set(lost_after):
                    answer = httpx.get(op_url, headers={"prefer": "wait=0"}, timeout=10)
                    if answer.headers.get("operation-status") == "failed":
                        lost_after[op_url] = time.monotonic() - killed_at
                time.sleep(0.1)
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                finals = list(
                    pool.map(
                        lambda u: httpx.get(u, headers={"prefer": "wait=30"}, timeout=60), urls
                    )
                )
            outcome: dict[str, int] = {}
            for op_url, answer in zip(urls, finals, strict=True):
                key = f"{'killed' if op_url in lost else 'surviving'} {answer.status_code}"
                outcome[key] = outcome.get(key, 0) + 1
            with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
                unfinished = db.execute(
                    "SELECT count(*) FROM repoll_operations WHERE status IN ('queued','running')"
                ).fetchone()[0]
            # Cross-process wake-ups: a poll on a fresh connection (most land
            # on another worker than the work's) for a 0.5 s job.
            delays = []
            for _ in range(60):
                op_url = _start(url, 0.5)
                answer = httpx.get(
                    op_url, headers={"prefer": "wait=10", "connection": "close"}, timeout=20
                )
                delays.append(time.time() - answer.json()["finished_at"])
    return {
        "operations": operations,
        "workers": workers,
        "killed_workers_operations": len(lost),
        "lost_after_s_max": round(max(lost_after.values()), 2) if lost_after else None,
        "outcomes": outcome,
        "unfinished_at_end": unfinished,
        "wake_delay_ms_p50": _ms(statistics.median(delays)),
        "wake_delay_ms_p95": _ms(sorted(delays)[int(len(delays) * 0.95) - 1]),
        "wake_delay_ms_max": _ms(max(delays)),
    }


@contextmanager
def _redis(tmp: str) -> Iterator[Callable[[], None] | Any]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("needs redis-server")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "yes", "--dir", tmp]

    class Redis:
        url = f"redis://127.0.0.1:{port}/0"
        process: subprocess.Popen[bytes] | None = None

        def start(self) -> None:
            self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    return
                except OSError:
                    time.sleep(0.02)

        def stop(self) -> None:
            if self.process is not None:
                self.process.terminate()
                self.process.wait(10)
                self.process = None

    redis = Redis()
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


def redis_restart_and_outage(outage: float = 120.0) -> dict[str, Any]:
    """Two instances on a Redis that restarts, then stays down ``outage`` seconds mid-job."""
    with tempfile.TemporaryDirectory() as tmp, _redis(tmp) as redis:
        env = {"REPOLL_STORE": redis.url}
        with server_process([], env=env) as (a, _), server_process([], env=env) as (b, _):
            redis.stop()
            redis.start()
            time.sleep(3)  # subscriptions restored, pools healed
            delays = []
            for _ in range(20):
                location = urljoin(b, _start(a, 0.5).removeprefix(a))
                answer = httpx.get(location, headers={"prefer": "wait=10"}, timeout=20)
                delays.append(time.time() - answer.json()["finished_at"])
            running = _start(a, 600)
            canceled = httpx.delete(urljoin(b, running.removeprefix(a)), timeout=10)
            stopped = httpx.get(running, headers={"prefer": "wait=5"}, timeout=10)
            # The outage: the job ends 2 s into it; its outcome waits.
            job = _start(a, 2)
            redis.stop()
            time.sleep(outage)
            redis.start()
            back = time.monotonic()
            final = httpx.get(
                urljoin(b, job.removeprefix(a)), headers={"prefer": "wait=30"}, timeout=60
            )
            settled_after = time.monotonic() - back
    return {
        "wake_delay_after_restart_ms_p50": _ms(statistics.median(delays)),
        "wake_delay_after_restart_ms_max": _ms(max(delays)),
        "delete_through_b_after_restart": [canceled.status_code, stopped.status_code],
        "outage_s": outage,
        "job_outcome_after_outage": [final.status_code, final.headers.get("operation-status")],
        "outcome_visible_after_s": round(settled_after, 2),
    }


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "hostile_headers": hostile_headers,
    "abandoned_streams": abandoned_streams,
    "one_principal_floods": one_principal_floods,
    "killed_worker": killed_worker,
    "redis_restart_and_outage": redis_restart_and_outage,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.faults")
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--outage", type=float, default=120.0, help="store outage, seconds")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for name in args.only.split(","):
        started = time.monotonic()
        print(f"{name} ...", flush=True)
        kwargs = {"outage": args.outage} if name == "redis_restart_and_outage" else {}
        result = SCENARIOS[name](**kwargs)
        result["took_s"] = round(time.monotonic() - started, 1)
        results[name] = result
        print(json.dumps(result, indent=2), flush=True)
    (RESULTS / "faults.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
