"""The ``repoll`` command: ``demo``, ``serve``, ``request`` and ``wait``."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from .._errors import MissingExtraError, require
from ..core._config import UrlPolicy
from ._args import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    build_parser,
)
from ._request import body_from, connection_error, headers_from, request_command

DEMO_APP = "repoll.cli._demo:create_app"


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running_server(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a thread; yields its base URL."""
    import uvicorn  # noqa: PLC0415 - the cli extra, checked by the caller

    port = port or _free_port(host)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="repoll-demo-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            msg = f"the demo server did not start on {host}:{port}"
            raise RuntimeError(msg)
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _describe_hop(hop: Any, out: TextIO, started: float) -> None:
    elapsed = time.monotonic() - started
    parts = [f"{elapsed:6.2f}s  {hop.method:<6} {hop.url}", f"-> {hop.status}"]
    if hop.operation_status:
        parts.append(f"Operation-Status: {hop.operation_status}")
    if hop.retry_after is not None:
        parts.append(f"Retry-After: {hop.retry_after:g}s")
    if hop.progress is not None:
        parts.append(f"progress: {hop.progress:.0%}")
    if hop.message:
        parts.append(f"({hop.message})")
    print("  ".join(parts), file=out, flush=True)


def demo(seconds: float, *, fail: bool, long_poll: float | None, out: TextIO = sys.stdout) -> int:
    """Run the demo server, drive one job through it, print every hop; 0 on success."""
    require("fastapi", "cli")
    require("httpx", "cli")
    import httpx  # noqa: PLC0415

    from ..clients._httpx import PollingTransport  # noqa: PLC0415
    from ..core._poll import PollOptions  # noqa: PLC0415
    from ._demo import create_app  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="repoll-demo-") as tmp:
        store = f"sqlite:///{Path(tmp) / 'operations.sqlite3'}"
        app = create_app(store=store)
        with running_server(app) as base_url:
            print(f"repoll demo: server on {base_url}, SQLite store in {tmp}", file=out)
            body = {"seconds": seconds, "fail": fail}
            print(f"POST /start_work {json.dumps(body)}  (a {seconds:g} s job)\n", file=out)
            started = time.monotonic()
            options = PollOptions(
                respond_async=False,
                long_poll=long_poll,
                deadline=seconds + 60,
                on_progress=lambda hop: _describe_hop(hop, out, started),
            )
            transport = PollingTransport(options=options)
            with httpx.Client(transport=transport, base_url=base_url, timeout=120) as client:
                response = client.post("/start_work", json=body)
            hops = response.extensions.get("repoll.hops", [])
            print(
                f"\nresult after {time.monotonic() - started:.2f}s and {len(hops)} requests: "
                f"{response.status_code} {response.reason_phrase}",
                file=out,
            )
            print(response.text, file=out)
            expected = 500 if fail else 200
            return 0 if response.status_code == expected else 1


def serve(
    target: str | None,
    host: str,
    port: int,
    store: str | None,
    concurrency: int | None = None,
    *,
    factory: bool = False,
    broker: str | None = None,
    workers: int = 1,
    forwarded_allow_ips: str | None = None,
    public_url: str | None = None,
    max_hold: float | None = None,
    queue: str | None = None,
) -> int:
    """Serve the demo app (or ``MODULE:APP``) with uvicorn until interrupted."""
    require("uvicorn", "server")
    import uvicorn  # noqa: PLC0415

    from ..server._gc import GC_THRESHOLD_ENV, SERVE_GC_THRESHOLD  # noqa: PLC0415

    # Like uvicorn's own command: MODULE is looked up from the working directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if workers < 1:
        print("repoll: --workers must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        # Checked here, with a clear message; the app's server reads them
        # from the environment below (in every worker process).
        UrlPolicy(forwarded_allow_ips=forwarded_allow_ips or None, public_url=public_url or None)
    except ValueError as exc:
        print(f"repoll: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if max_hold is not None and not 0 <= max_hold < float("inf"):
        print("repoll: --max-hold must be a number of seconds, at least 0", file=sys.stderr)
        return EXIT_USAGE
    store = store or os.environ.get("REPOLL_STORE")
    if workers > 1 and store and store.split("?")[0] in {"memory://", "memory", "sqlite://"}:
        # Each process would have its own private store: a poll answered by
        # another process than the start's would find nothing.
        print(
            f"repoll: --store {store} is private to one process and cannot serve "
            f"--workers {workers}; use a SQLite file (the default), Redis or PostgreSQL",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if store:
        problem = _store_problem(store)
        if problem is not None:
            message, code = problem
            print(f"repoll: {message}", file=sys.stderr)
            return code
    settings = {
        "REPOLL_STORE": store,
        "REPOLL_CONCURRENCY": str(concurrency) if concurrency else None,
        "REPOLL_BROKER": broker,
        "REPOLL_QUEUE": queue,
        "FORWARDED_ALLOW_IPS": forwarded_allow_ips,
        "REPOLL_PUBLIC_URL": public_url,
        "REPOLL_MAX_HOLD": None if max_hold is None else repr(max_hold),
        GC_THRESHOLD_ENV: os.environ.get(GC_THRESHOLD_ENV) or str(SERVE_GC_THRESHOLD),
    }
    for name, value in settings.items():
        if value:
            os.environ[name] = value  # worker processes inherit them
    config = uvicorn.Config(
        target or DEMO_APP,
        host=host,
        port=port,
        factory=factory or target is None,
        log_level="warning",
        workers=workers,
        forwarded_allow_ips=forwarded_allow_ips,
    )
    return _run_server(config, "the demo app" if target is None else target)


def _run_server(config: Any, what: str) -> int:
    """uvicorn.run, saying on stdout where it listens once it accepts connections."""
    import uvicorn  # noqa: PLC0415
    from uvicorn.supervisors import Multiprocess  # noqa: PLC0415

    from ..server._gc import tune_gc  # noqa: PLC0415

    url = f"http://{config.host}:{config.port}"
    ready = f"repoll serve: {what} listening on {url} (Ctrl-C stops it)"

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            # Also for an app without repoll (whose server applies it when it
            # opens): every app this command serves runs at the same pace.
            tune_gc(os.environ)
            if self.started and config.workers == 1:
                print(ready, flush=True)

    server = Server(config)
    try:
        if config.workers > 1:
            # The socket is bound (and accepting) before the workers start.
            sock = config.bind_socket()
            print(ready, flush=True)
            # uvicorn up to 0.3x takes the worker's target; later ones build it.
            takes_target = "target" in inspect.signature(Multiprocess).parameters
            extra: dict[str, Any] = {"target": server.run} if takes_target else {}
            Multiprocess(config, sockets=[sock], **extra).run()
        else:
            server.run()
    except OSError as exc:  # the port is taken, or not ours to bind
        print(f"repoll: cannot listen on {url}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    except SystemExit as exc:  # uvicorn logged why (the port is taken, the app failed)
        return EXIT_FAILURE if exc.code else EXIT_OK
    if config.workers == 1 and not server.started:
        return EXIT_FAILURE  # uvicorn logged why
    return EXIT_OK


def _store_problem(url: str) -> tuple[str, int] | None:
    """Open the store once before serving: a typo fails here, not on every request."""
    import asyncio  # noqa: PLC0415

    from .._errors import StoreError, StoreURLError  # noqa: PLC0415
    from ..stores._store import store_from_url  # noqa: PLC0415

    try:
        store = store_from_url(url)
    except StoreURLError as exc:
        return str(exc), EXIT_USAGE

    async def try_it() -> None:
        try:
            await asyncio.wait_for(store.open(), 10)
        finally:
            await store.close()

    # Drivers log each failed attempt (psycopg's pool, every few seconds):
    # the one line below says it all.
    quiet = logging.getLogger("psycopg.pool")
    level, quiet.level = quiet.level, logging.CRITICAL
    try:
        asyncio.run(try_it())
    except (StoreError, OSError, TimeoutError) as exc:
        reason = str(exc) or (
            "no answer in 10 s" if isinstance(exc, TimeoutError) else type(exc).__name__
        )
        return f"cannot open the store {url}: {reason}", EXIT_FAILURE
    except MissingExtraError:
        raise
    except Exception as exc:
        reason = str(exc) or (
            "no answer in 10 s" if isinstance(exc, TimeoutError) else type(exc).__name__
        )
        return f"cannot open the store {url}: {reason}", EXIT_FAILURE
    finally:
        quiet.setLevel(level)
    return None


def check_command(args: argparse.Namespace) -> int:
    """``repoll check``: the protocol's clauses against a server; 1 on a MUST failure."""
    require("httpx", "client")
    import httpx  # noqa: PLC0415

    from ._check import main as check_main  # noqa: PLC0415

    try:
        headers = headers_from(args.header)
        body = body_from(args.data, args.json, headers)
    except ValueError as exc:
        print(f"repoll: {exc}", file=sys.stderr)
        return EXIT_USAGE
    method = args.method or "POST"
    try:
        return check_main(
            args.url, method, body, headers, timeout=args.timeout, as_json=args.format == "json"
        )
    except httpx.HTTPError as exc:
        print(f"repoll: {connection_error(exc)}", file=sys.stderr)
        return EXIT_FAILURE


def worker(args: argparse.Namespace) -> int:
    """Import the app (which registers its deferred endpoints), then consume tasks."""
    require("celery", "celery")
    import importlib  # noqa: PLC0415

    from ..executors._celery_worker import run_worker  # noqa: PLC0415

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attribute = (args.app or DEMO_APP).partition(":")
    target = getattr(importlib.import_module(module_name), attribute)
    if args.factory or args.app is None:
        target()
    run_worker(args.broker, queue=args.queue, concurrency=args.concurrency)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return demo(args.seconds, fail=args.fail, long_poll=args.long_poll or None)
        if args.command in {"request", "wait"}:
            return request_command(args)
        if args.command == "check":
            return check_command(args)
        if args.command == "worker":
            return worker(args)
        return serve(
            args.app,
            args.host,
            args.port,
            args.store,
            args.concurrency,
            factory=args.factory,
            broker=args.broker,
            workers=args.workers,
            forwarded_allow_ips=args.forwarded_allow_ips,
            public_url=args.public_url,
            max_hold=args.max_hold,
            queue=args.queue,
        )
    except MissingExtraError as exc:
        print(f"repoll: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
