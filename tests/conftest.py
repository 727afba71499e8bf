from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from repoll._cli import running_server


@pytest.fixture
def anyio_backend():
    return "asyncio"


@dataclass
class LiveServer:
    """The one real uvicorn server the end-to-end tests share, with a request log."""

    url: str
    requests: list[tuple[str, str]] = field(default_factory=list)
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
    from repoll._demo import create_app

    store = f"sqlite:///{tmp_path_factory.mktemp('live')}/ops.sqlite3"
    app = create_app(store=store)
    live = LiveServer(url="")

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
