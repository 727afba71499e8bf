"""Behind a reverse proxy that rewrites ``Host``, as nginx does by default.

The proxy here is a real HTTP hop on its own port: it sends the backend
``Host: backend.internal:8000`` (a name no client can reach), and in its
second mode also mounts the app below ``/api`` and says so with
``X-Forwarded-Host``, ``-Proto`` and ``-Prefix``. Every client, with its
defaults, must get the endpoint's own answer through it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
import requests

import repoll
from repoll.cli._main import running_server

pytestmark = pytest.mark.slow
BACKEND_HOST = "backend.internal:8000"


class RewritingProxy:
    """One request per connection: forward it with Host rewritten, relay the answer."""

    def __init__(self, backend: str, *, forwarded: bool) -> None:
        parts = urlsplit(backend)
        self.backend = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.forwarded = forwarded
        self.prefix = "/api" if forwarded else ""
        self.seen_hosts: list[str] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RewritingProxy:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}{self.prefix}"
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = [line.split(":", 1) for line in lines[1:] if line]
            length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
            body = await reader.readexactly(length) if length else b""
            client_host = next((v.strip() for k, v in headers if k.lower() == "host"), "")
            if self.prefix:
                if not target.startswith(self.prefix + "/"):
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    return
                target = target[len(self.prefix) :]
            kept = [
                (k, v.strip())
                for k, v in headers
                if k.lower() not in {"host", "connection", "keep-alive"}
            ]
            kept += [("Host", BACKEND_HOST), ("Connection", "close")]
            if self.forwarded:
                kept += [
                    ("X-Forwarded-Host", client_host),
                    ("X-Forwarded-Proto", "http"),
                    ("X-Forwarded-Prefix", self.prefix),
                ]
            request = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in kept)
            up_reader, up_writer = await asyncio.open_connection(*self.backend)
            up_writer.write(request.encode("latin-1") + b"\r\n" + body)
            await up_writer.drain()
            answer = await up_reader.read()  # the backend closes after answering
            up_writer.close()
            status_line, _, rest = answer.partition(b"\r\n")
            writer.write(status_line + b"\r\nConnection: close\r\n" + rest)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()


@pytest.fixture(scope="module")
def backend(tmp_path_factory) -> Iterator[str]:
    from repoll.cli._demo import create_app

    app = create_app(store=f"sqlite:///{tmp_path_factory.mktemp('proxy')}/ops.sqlite3")
    with running_server(app) as url:
        yield url


@pytest.fixture(params=["host-rewritten", "forwarded-with-prefix"])
def proxy(request, backend) -> Iterator[RewritingProxy]:
    with RewritingProxy(backend, forwarded=request.param == "forwarded-with-prefix") as hop:
        yield hop


JOB = {"seconds": 1.5}


def test_curl_follows_through_the_proxy(proxy):
    if shutil.which("curl") is None:
        pytest.skip("needs curl")
    result = subprocess.run(
        [
            "curl",
            "-sSL",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(JOB),
            f"{proxy.url}/start_work",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["result"] == "done"


def test_requests_httpx_and_urllib_follow_through_the_proxy(proxy):
    assert requests.post(f"{proxy.url}/start_work", json=JOB, timeout=60).json()["result"] == "done"
    with httpx.Client(follow_redirects=True) as client:  # its default 5 s timeout
        assert client.post(f"{proxy.url}/start_work", json=JOB).json()["result"] == "done"
    request = urllib.request.Request(
        f"{proxy.url}/start_work",
        data=json.dumps(JOB).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert json.loads(answer.read())["result"] == "done"


def test_the_repoll_client_stays_on_the_proxys_origin(proxy):
    with httpx.Client(transport=repoll.PollingTransport()) as client:
        response = client.post(f"{proxy.url}/start_work", json=JOB)
    assert response.status_code == 200
    assert response.json()["result"] == "done"
    hops = response.extensions["repoll.hops"]
    assert all(hop.url.startswith(proxy.url) for hop in hops)


@pytest.fixture
def forwarding_proxy(backend) -> Iterator[RewritingProxy]:
    with RewritingProxy(backend, forwarded=True) as hop:
        yield hop


def test_azure_core_gets_a_reachable_absolute_url_from_forwarded_headers(forwarding_proxy):
    from azure.core import PipelineClient
    from azure.core.polling import LROPoller
    from azure.core.polling.base_polling import LROBasePolling
    from azure.core.rest import HttpRequest

    # An absolute URL needs the proxy to say which host the client used.
    proxy = forwarding_proxy
    client = PipelineClient(base_url=proxy.url)
    request = HttpRequest(
        "POST", f"{proxy.url}/start_work", json=JOB, headers={"Prefer": "respond-async"}
    )
    initial = client.send_request(request, _return_pipeline_response=True)
    assert initial.http_response.status_code == 202
    assert initial.http_response.headers["Location"].startswith(proxy.url + "/operations/")
    poller = LROPoller(
        client,
        initial,
        lambda response: json.loads(response.http_response.text()),
        LROBasePolling(timeout=1),
    )
    assert poller.result(timeout=60)["result"] == "done"
