from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import settings

from repoll.cli._main import running_server

# Locally, property tests explore new inputs on every run; on CI they replay a
# fixed set, so that a landing never depends on the draw.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def anyio_backend():
    return "asyncio"


@dataclass
class LiveServer:
    """The one real uvicorn server the end-to-end tests share, with a request log."""

    url: str
    requests: list[tuple[str, str]] = field(default_factory=list)
    app: object = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()

    def seen(self) -> list[tuple[str, str]]:
        with self.lock:
            return list(self.requests)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory) -> Iterator[LiveServer]:
    """The demo app on a loopback port, SQLite store, behind a request counter."""
    from repoll.cli._demo import create_app

    store = f"sqlite:///{tmp_path_factory.mktemp('live')}/ops.sqlite3"
    app = create_app(store=store)
    live = LiveServer(url="", app=app)

    async def counting(scope, receive, send):
        if scope["type"] == "http":
            with live.lock:
                live.requests.append((scope["method"], scope["path"]))
        await app(scope, receive, send)

    with running_server(counting) as url:
        live.url = url
        yield live


@pytest.fixture
def live(live_server: LiveServer) -> LiveServer:
    live_server.reset()
    return live_server


# --- services: Redis and PostgreSQL -----------------------------------------------
# On CI (CI set) a missing service is a failure; elsewhere the test skips, naming it.

import socket  # noqa: E402
import uuid  # noqa: E402

REDIS_URL = os.environ.get("REPOLL_TEST_REDIS", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get("REPOLL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def need_service(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"needs {name} at {host}:{port} (not reachable)"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must provide it")
    pytest.skip(message)


@pytest.fixture
def redis_url():
    need_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url):
    """A fresh key prefix; every key under it is deleted afterwards."""
    prefix = f"repoll-test-{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        delete_redis_keys(redis_url, prefix)


@pytest.fixture
def postgres_url():
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    need_service("PostgreSQL", "127.0.0.1", 5432)
    import psycopg

    schema = f"repoll_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_query(POSTGRES_URL, options=f"-c%20search_path%3D{schema}")
    finally:
        drop_postgres_schema(POSTGRES_URL, schema)


# Backends under a test's control (a failing TCP relay, a throwaway Redis, a queue).
from tests.services import (  # noqa: E402
    broker_queue,  # noqa: F401
    delete_redis_keys,
    drop_postgres_schema,
    proxy_factory,  # noqa: F401
    redis_server,  # noqa: F401
    with_query,
)
