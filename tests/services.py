"""Real backends under the tests' control: a TCP relay that can fail, a throwaway Redis,
and the names a test takes on the shared services, removed afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

# The removal helpers live with the benchmarks, which remove what they take too.
from bench._common import (
    delete_amqp_queues,
    delete_redis_keys,  # noqa: F401 (for the tests)
    drop_postgres_schema,  # noqa: F401 (for the tests)
)

BROKER_URL = os.environ.get("REPOLL_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672//")


def repoll_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m repoll ARGS`` in a process of its own, its output captured, never raising."""
    return subprocess.run(
        [sys.executable, "-m", "repoll", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")
    host = netloc[2].rsplit(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}{netloc[1]}{host}:{port}"))


def with_query(url: str, **params: str) -> str:
    query = "&".join(f"{key}={value}" for key, value in params.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


class Proxy:
    """A TCP relay to ``target_port`` that can go silent or go away."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.append(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._relay(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _relay(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()

    async def _stop_relaying(self) -> None:
        pipes = list(self._pipes)
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)

    async def go_silent(self) -> None:
        """Existing connections stay open but carry nothing more (a half-open link)."""
        await self._stop_relaying()

    async def stop(self) -> None:
        """Refuse new connections and drop the existing ones."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # Connections first: the server's wait_closed() waits for them all.
        await self._stop_relaying()
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        if server is not None:
            await asyncio.wait_for(server.wait_closed(), timeout=5)


@pytest.fixture
async def proxy_factory() -> AsyncIterator[Callable[[int], object]]:
    proxies: list[Proxy] = []

    async def make(target_port: int) -> Proxy:
        proxy = Proxy(target_port)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.stop()


class RedisServer:
    def __init__(self, binary: str, port: int) -> None:
        self.binary = binary
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.persist_in: str | None = None  # a directory: keep the data across restarts

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *(
                    ("--save", "", "--appendonly", "no")
                    if self.persist_in is None
                    else ("--save", "", "--appendonly", "yes", "--dir", self.persist_in)
                ),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("needs the redis-server binary; CI must provide it")
        pytest.skip("needs the redis-server binary")
    server = RedisServer(binary, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def broker_queue() -> Iterator[str]:
    """A fresh queue name on the test broker (``BROKER_URL``; check it is reachable first).

    Afterwards, whatever the test did, the queue and the exchange of the same name
    are deleted: Celery declares both durable, and they would outlive every process.
    Request it before the fixtures that start workers and servers on it, so that
    those have stopped (and redeclare nothing) when it is deleted.
    """
    name = f"repoll-test-{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        delete_amqp_queues(BROKER_URL, [name])
