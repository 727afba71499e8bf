"""The distributed topology, as processes: two `repoll serve` instances sharing a store
(Redis, then PostgreSQL), one Celery worker (`repoll worker`) on RabbitMQ."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest
import requests
from tests.services import BROKER_URL as BROKER
from tests.services import with_query

from conftest import need_service

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Topology:
    def __init__(self, store: str, queue: str) -> None:
        self.store = store
        self.queue = queue
        self.env = {**os.environ, "REPOLL_QUEUE": queue}
        self.processes: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}

    def serve(self, name: str) -> str:
        port = self.ports.setdefault(name, free_port())
        self.processes[name] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "repoll",
                "serve",
                "--port",
                str(port),
                "--store",
                self.store,
                "--broker",
                BROKER,
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(url + "/healthz", timeout=1)
                return url
            except requests.ConnectionError:
                time.sleep(0.05)
        raise AssertionError(f"{name} did not start")

    def worker(self) -> None:
        self.processes["worker"] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "repoll",
                "worker",
                "--broker",
                BROKER,
                "--queue",
                self.queue,
                "--concurrency",
                "4",
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        process.send_signal(sig)
        process.wait(timeout=30)

    def close(self) -> None:
        """Every process killed, then waited for (one slow to go stops none of the others)."""
        processes, self.processes = list(self.processes.values()), {}
        for process in processes:
            process.kill()
        for process in processes:
            process.wait(timeout=30)


@pytest.fixture(params=["redis", "postgres"])
def topology(request):
    """Processes on a queue, a Redis prefix or a PostgreSQL schema of their own.

    The queue, keys and schema come from fixtures that remove them once this one
    has stopped every process (they are set up first, so torn down last).
    """
    need_service("RabbitMQ", "127.0.0.1", 5672)
    queue = request.getfixturevalue("broker_queue")
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        store = with_query(url, prefix=request.getfixturevalue("redis_prefix"))
    else:
        store = request.getfixturevalue("postgres_url")
    topology = Topology(store, queue=queue)
    try:
        yield topology
    finally:
        topology.close()


def start(url: str, seconds: float) -> str:
    response = requests.post(
        f"{url}/start_work", json={"seconds": seconds}, allow_redirects=False, timeout=30
    )
    assert response.status_code == 303, response.text
    return urlsplit(response.headers["location"]).path  # to ask any instance


def peek(url: str) -> requests.Response:
    """One status request, answered at once, not followed."""
    return requests.get(url, headers={"prefer": "wait=0"}, allow_redirects=False, timeout=10)


def wait_for(check, timeout: float):
    """The first non-None result of ``check``, or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_start_on_a_poll_on_b_through_a_worker(topology):
    a = topology.serve("a")
    b = topology.serve("b")
    topology.worker()
    location = start(a, 3)
    running = wait_for(lambda: r if (r := peek(b + location)).json().get("progress") else None, 30)
    assert running is not None
    assert running.headers["operation-status"] == "running"
    final = requests.get(b + location, timeout=60)  # held polls, then the result
    assert final.status_code == 200
    assert final.json()["result"] == "done"
    assert final.headers["operation-status"] == "succeeded"


def test_a_worker_killed_mid_operation_ends_it_failed(topology):
    a = topology.serve("a")
    b = topology.serve("b")
    topology.worker()
    location = start(a, 60)
    assert wait_for(lambda: peek(b + location).json().get("progress"), timeout=30) is not None
    topology.kill("worker")  # SIGKILL, mid-operation
    killed = time.monotonic()
    outcome = wait_for(
        lambda: (
            r if (r := peek(b + location)).headers.get("operation-status") == "failed" else None
        ),
        timeout=40,
    )
    assert outcome is not None, "the operation stayed running"
    assert outcome.status_code == 500
    assert outcome.json()["type"] == "urn:repoll:problem:operation-lost"
    assert "worker" in outcome.json()["detail"]
    assert time.monotonic() - killed < 30  # documented: owner_ttl (10 s) + a maintenance round


def test_restarting_a_while_b_keeps_serving(topology):
    a = topology.serve("a")
    b = topology.serve("b")
    topology.worker()
    location = start(a, 4)
    topology.kill("a", signal.SIGTERM)
    final = requests.get(b + location, timeout=60)
    assert final.status_code == 200
    assert final.json()["result"] == "done"
    a = topology.serve("a")  # back, on the same port
    again = requests.get(a + location, timeout=30)
    assert again.status_code == 200
    assert again.json() == final.json()
    assert start(a, 0.1)  # and it takes new work
