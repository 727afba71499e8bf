"""Held polls behind a real nginx whose idle timeout is shorter than a job (protocol.md 5.2).

nginx cuts a proxied request off with ``504 Gateway Timeout`` when the
backend sends nothing for ``proxy_read_timeout`` (60 s by default, as AWS
ALB's idle timeout), and a client following redirects takes that 504 as the
final answer. repoll's rule: no plain client's hold is longer than
``max_hold``, so with ``max_hold`` under the proxy's idle timeout every
client at its defaults gets the endpoint's answer, however long the job.

Time is compressed: nginx's idle timeout is 3 s (standing for its 60 s),
``max_hold`` 1.5 s (for the default 25 s) and the job 8 s, so every client
crosses the proxy's timeout several times over. nginx keeps its other
defaults, ``proxy_set_header Host $proxy_host`` (the backend sees its own
address, not the client's) and HTTP/1.0 to the backend included. The
control case, a ``max_hold`` over the idle timeout, shows the proxy really
cuts holds off.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import requests

from repoll import PacingPolicy
from repoll.cli._demo import create_app
from repoll.cli._main import running_server

pytestmark = pytest.mark.slow

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
IDLE_TIMEOUT = 3  # nginx's proxy_read_timeout here; 60 s by default
JOB = {"seconds": 8.0}

if NGINX is None:
    pytest.skip("needs nginx (Debian package nginx; .ci/run installs it)", allow_module_level=True)

_CONFIG = """
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass {backend};
            proxy_read_timeout {idle}s;
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def nginx_in_front_of(backend: str, tmp: Path) -> Iterator[str]:
    port = _free_port()
    config = tmp / "nginx.conf"
    config.write_text(_CONFIG.format(tmp=tmp, port=port, backend=backend, idle=IDLE_TIMEOUT))
    assert NGINX is not None
    process = subprocess.Popen(
        [NGINX, "-p", str(tmp), "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    _, err = process.communicate(timeout=5)
                    pytest.fail(f"nginx did not start: {err.decode(errors='replace')}")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def behind_nginx(max_hold: float, tmp: Path) -> Iterator[str]:
    app = create_app(store="memory://", pacing=PacingPolicy(max_hold=max_hold))
    with running_server(app) as backend, nginx_in_front_of(backend, tmp) as front:
        yield front


# Each client at its defaults: (status, body) of what it ended with.
def _curl(url: str) -> tuple[int, bytes]:
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-L",
            "-d",
            json.dumps(JOB),
            "-H",
            "content-type: application/json",
            "-w",
            "\n%{http_code}",
            url,
        ],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    body, _, status = out.rpartition(b"\n")
    return int(status), body


def _requests(url: str) -> tuple[int, bytes]:
    response = requests.post(url, json=JOB, timeout=None)
    return response.status_code, response.content


def _httpx(url: str) -> tuple[int, bytes]:
    response = httpx.post(url, json=JOB, follow_redirects=True)  # its 5 s timeout
    return response.status_code, response.content


def _urllib(url: str) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(JOB).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request) as response:
        return response.status, response.read()


def _aiohttp(url: str) -> tuple[int, bytes]:
    aiohttp = pytest.importorskip("aiohttp")

    async def go() -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as session, session.post(url, json=JOB) as response:
            return response.status, await response.read()

    return asyncio.run(go())


CLIENTS: dict[str, Callable[[str], tuple[int, bytes]]] = {
    "curl -L": _curl,
    "requests": _requests,
    "httpx": _httpx,
    "urllib": _urllib,
    "aiohttp": _aiohttp,
}


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_every_client_gets_the_answer_through_a_proxy_idle_timeout(tmp_path):
    with (
        behind_nginx(max_hold=IDLE_TIMEOUT / 2, tmp=tmp_path) as front,
        ThreadPoolExecutor(len(CLIENTS)) as pool,
    ):
        started = time.monotonic()
        futures = {name: pool.submit(call, front + "/start_work") for name, call in CLIENTS.items()}
        results = {name: future.result(timeout=120) for name, future in futures.items()}
        took = time.monotonic() - started
    assert took >= JOB["seconds"]  # the job outlasted the proxy's idle timeout
    for name, (status, body) in results.items():
        assert status == 200, (name, status, body[:300])
        assert json.loads(body)["seconds"] == JOB["seconds"], name


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_a_hold_over_the_idle_timeout_is_cut_off(tmp_path):
    """The control: a max_hold the proxy does not allow ends curl -L with nginx's 504."""
    with behind_nginx(max_hold=IDLE_TIMEOUT * 2, tmp=tmp_path) as front:
        status, body = _curl(front + "/start_work")
    assert status == 504, body[:300]
