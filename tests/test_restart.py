"""A real server process killed and restarted on the same SQLite file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from urllib.parse import urljoin

import pytest
import requests

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(store: str, port: int, *options: str) -> subprocess.Popen:
    """``repoll serve`` (the demo app) on ``port``, in its own session, once it answers."""
    # The log goes to a file, not a pipe: a pipe nobody reads fills up and
    # blocks the server in its next log call.
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "repoll", "serve"),
            *("--port", str(port), "--store", store, *options),
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,  # so that its worker processes can be stopped with it
    )
    process.log = log  # closed by whoever stops the process
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise AssertionError(log.read().decode())
        try:
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return process
        except requests.ConnectionError:
            time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError("server did not start")


def stop(process: subprocess.Popen, sig: int) -> None:
    os.kill(process.pid, sig)
    process.wait(timeout=30)
    process.log.close()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_every_id_has_a_defined_answer_after_a_restart(tmp_path, sig):
    store = f"sqlite:///{tmp_path}/ops.sqlite3"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(store, port)
    try:
        done = requests.post(
            f"{base}/start_work", json={"seconds": 0}, headers={"prefer": "wait=10"}, timeout=30
        )
        assert done.status_code == 200
        finished_url = urljoin(base, done.headers["content-location"])
        running = requests.post(
            f"{base}/start_work", json={"seconds": 600}, allow_redirects=False, timeout=30
        )
        assert running.status_code == 303
        running_url = urljoin(base, running.headers["location"])
    finally:
        stop(server, sig)

    server = start_server(store, port)
    try:
        kept = requests.get(finished_url, timeout=30)
        assert kept.status_code == 200
        assert kept.json() == done.json()
        assert kept.headers["operation-status"] == "succeeded"

        lost = requests.get(running_url, timeout=30, allow_redirects=False)
        assert lost.status_code == 500
        assert lost.headers["operation-status"] == "failed"
        problem = lost.json()
        assert problem["type"] == "urn:repoll:problem:operation-lost"
        assert problem["detail"]

        unknown = requests.get(f"{base}/operations/{'A' * 22}", timeout=30)
        assert unknown.status_code == 404
    finally:
        stop(server, signal.SIGTERM)
