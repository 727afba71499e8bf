"""Bad input, generated: schemathesis from the demo's OpenAPI document, and raw fuzzing.

Both run against a dedicated demo server (memory store) so that the hour-long
jobs they may start do not queue behind the other end-to-end tests. The
property: the server never answers 5xx to a client's bad input, and never hangs.
"""

from __future__ import annotations

import random
import socket

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

import repoll
from repoll.cli._demo import create_app
from repoll.cli._main import running_server

pytestmark = pytest.mark.slow
FUZZ_PRINCIPAL = {"authorization": "Bearer fuzz"}


@pytest.fixture(scope="module")
def fuzz_server():
    app = create_app(store="memory://", limits=repoll.Limits(max_operations_per_principal=10_000))
    with running_server(app) as url:
        yield url


def test_schemathesis_finds_no_server_error(fuzz_server):
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(f"{fuzz_server}/openapi.json")
    tried = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
            def check(case):
                nonlocal tried
                # Never follow the redirect: a generated job may last an hour.
                response = case.call(
                    base_url=fuzz_server,
                    headers=FUZZ_PRINCIPAL,
                    allow_redirects=False,
                    timeout=10,
                )
                tried += 1
                assert response.status_code < 500, (
                    case.method,
                    case.formatted_path,
                    case.body,
                    response.text[:300],
                )

            try:
                check()
            except Unsatisfiable:
                # No invalid input exists for an operation without parameters.
                assert mode is GenerationMode.NEGATIVE
    assert tried >= 100
    print(f"schemathesis: {tried} requests, no 5xx")


def _raw(url: str, request: bytes) -> int:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                return 0  # the server closed the connection: a refusal, not an error
            head += chunk
    return int(head.split(b" ", 2)[1])


def _junk(rng: random.Random, alphabet: str, size: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, size)))


def test_raw_fuzzing_of_paths_and_headers(fuzz_server):
    rng = random.Random(20261128)
    printable = "".join(chr(c) for c in range(33, 127))
    tried, statuses = 0, []
    for _ in range(300):
        kind = rng.choice(["path", "prefer", "key", "body", "method"])
        path = "/operations/" + _junk(rng, printable.replace("?", "").replace("#", ""), 40)
        method = "GET"
        headers = {
            "Host": "fuzz",
            "Connection": "close",
            **{k.title(): v for k, v in FUZZ_PRINCIPAL.items()},
        }
        body = b""
        if kind == "prefer":
            headers["Prefer"] = _junk(rng, printable + ' ,;="', 60)
            path = rng.choice([path, "/start_work"])
            method = "POST" if path == "/start_work" else "GET"
            body = b'{"seconds": 0}'
        elif kind == "key":
            headers["Idempotency-Key"] = _junk(rng, printable + " ", 300)
            path, method, body = "/start_work", "POST", b'{"seconds": 0}'
        elif kind == "body":
            path, method = "/start_work", "POST"
            body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
            headers["Content-Type"] = rng.choice(["application/json", "text/plain", "x/y"])
        elif kind == "method":
            method = rng.choice(["PUT", "PATCH", "OPTIONS", "DELETE", "HEAD", "TRACE"])
        if body:
            headers["Content-Length"] = str(len(body))
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        status = _raw(fuzz_server, head.encode("latin-1") + b"\r\n" + body)
        tried += 1
        statuses.append(status)
        assert status < 500, (method, path, headers, body[:80], status)
    assert tried == 300
    # The server is still up and answering.
    assert (
        _raw(fuzz_server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") == 200
    )
