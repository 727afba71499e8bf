"""The ``repoll`` command: ``demo``, ``serve``, ``request`` and ``wait``."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
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
) -> int:
    """Serve the demo app (or ``MODULE:APP``) with uvicorn until interrupted."""
    require("uvicorn", "server")
    import uvicorn  # noqa: PLC0415

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
    settings = {
        "REPOLL_STORE": store,
        "REPOLL_CONCURRENCY": str(concurrency) if concurrency else None,
        "REPOLL_BROKER": broker,
        "FORWARDED_ALLOW_IPS": forwarded_allow_ips,
        "REPOLL_PUBLIC_URL": public_url,
        "REPOLL_MAX_HOLD": None if max_hold is None else repr(max_hold),
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

    url = f"http://{config.host}:{config.port}"
    ready = f"repoll serve: {what} listening on {url} (Ctrl-C stops it)"

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
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


def check_command(args: argparse.Namespace) -> int:
    """``repoll check``: the protocol's clauses against a server; 1 on a MUST failure."""
    require("httpx", "client")
    from ._check import main as check_main  # noqa: PLC0415

    try:
        headers = _headers_from(args.header)
        body = _body_from(args.data, args.json, headers)
    except (ValueError, OSError) as exc:
        print(f"repoll: {exc}", file=sys.stderr)
        return EXIT_USAGE
    method = args.method or "POST"
    return check_main(
        args.url, method, body, headers, timeout=args.timeout, as_json=args.format == "json"
    )


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


EXIT_OK, EXIT_HTTP_ERROR, EXIT_USAGE, EXIT_FAILURE, EXIT_TIMEOUT = 0, 1, 2, 3, 4


class ProgressBar:
    """One line on a terminal: status, a bar, the server's message, the next poll."""

    WIDTH = 24

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._started = time.monotonic()
        self._drawn = False

    def update(self, hop: Any) -> None:
        progress = hop.progress
        filled = round((progress or 0.0) * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        percent = f"{progress:4.0%}" if progress is not None else "  ? "
        status = hop.operation_status or str(hop.status)
        parts = [f"[{bar}] {percent}", f"{status:<9}", f"{time.monotonic() - self._started:5.1f}s"]
        if hop.next_poll_in is not None:
            parts.append(f"next poll in {hop.next_poll_in:.1f}s")
        if hop.message:
            parts.append(hop.message[:40])
        self._stream.write("\r\x1b[2K" + "  ".join(parts))
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()


def _headers_from(values: Sequence[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            msg = f"bad header {value!r}: use 'Name: value'"
            raise ValueError(msg)
        headers[name.strip()] = content.strip()
    return headers


def _body_from(data: str | None, json_text: str | None, headers: dict[str, str]) -> bytes | None:
    if json_text is not None:
        try:
            json.loads(json_text)
        except ValueError as exc:
            msg = f"--json is not valid JSON: {exc}"
            raise ValueError(msg) from exc
        headers.setdefault("Content-Type", "application/json")
        return json_text.encode()
    if data is None:
        return None
    if data.startswith("@"):
        return Path(data[1:]).read_bytes()
    headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    return data.encode()


def _print_final(response: Any, *, include_headers: bool, out: TextIO) -> int:
    if include_headers:
        print(f"HTTP/1.1 {response.status_code} {response.reason_phrase}", file=out)
        for name, value in response.headers.items():
            print(f"{name}: {value}", file=out)
        print(file=out)
    out.write(response.text)
    if response.text and not response.text.endswith("\n"):
        out.write("\n")
    out.flush()
    return EXIT_OK if response.status_code < 400 else EXIT_HTTP_ERROR


def request_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """``repoll request`` and ``repoll wait``: one call, the final answer on stdout."""
    require("httpx", "client")
    import httpx  # noqa: PLC0415

    from .._errors import OperationError, PollingTimeout, ProtocolError  # noqa: PLC0415
    from ..clients._handle import OperationHandle  # noqa: PLC0415
    from ..core._poll import PollOptions  # noqa: PLC0415
    from ..core._status import OperationStatus  # noqa: PLC0415

    try:
        headers = _headers_from(args.header)
        body = None
        if args.command == "request":
            body = _body_from(args.data, args.json, headers)
    except (ValueError, OSError) as exc:
        print(f"repoll: {exc}", file=sys.stderr)
        return EXIT_USAGE
    show_progress = sys.stderr.isatty() and not args.quiet
    bar = ProgressBar(sys.stderr) if show_progress else None
    options = PollOptions(
        # On a terminal, short holds keep the progress bar moving.
        long_poll=2.0 if bar else 30.0,
        on_progress=bar.update if bar else None,
    )
    timeout = httpx.Timeout(30.0, read=max(60.0, (args.timeout or 0) + 35.0))
    try:
        with httpx.Client(headers=headers, timeout=timeout) as client:
            if args.command == "request":
                method = args.method or ("POST" if body is not None else "GET")
                handle = OperationHandle.start(
                    client, method, args.url, content=body, options=options
                )
                if args.no_wait and not handle.done:
                    print(handle.url, file=out)
                    return EXIT_OK
            else:
                handle = OperationHandle.resume(client, args.url, options=options)
            response = handle.wait(timeout=args.timeout)
    except PollingTimeout as exc:
        if bar:
            bar.close()
        print(f"repoll: {exc}", file=sys.stderr)
        print(f"repoll: resume with: repoll wait {exc.operation_url}", file=sys.stderr)
        return EXIT_TIMEOUT
    except (httpx.HTTPError, OperationError, ProtocolError) as exc:
        if bar:
            bar.close()
        print(f"repoll: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if bar:
        bar.close()
    code = _print_final(response, include_headers=args.include, out=out)
    if handle.status in (OperationStatus.FAILED, OperationStatus.CANCELED):
        # A status monitor's Failed is a 200 whose body says so: not a success.
        return EXIT_HTTP_ERROR
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="repoll", description="Long HTTP work, pollable for every endpoint."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo_cmd = commands.add_parser("demo", help="run the demo server and client, show each hop")
    demo_cmd.add_argument("--seconds", type=float, default=4.0, help="job length (default 4)")
    demo_cmd.add_argument("--fail", action="store_true", help="make the job fail at its end")
    demo_cmd.add_argument(
        "--long-poll",
        type=float,
        default=1.0,
        metavar="N",
        help="ask the server to hold each poll up to N s (Prefer: wait); 0 to honour "
        "Retry-After only (default 1, so that the hops show)",
    )

    serve_cmd = commands.add_parser("serve", help="serve the demo app, or MODULE:APP, with uvicorn")
    serve_cmd.add_argument("app", nargs="?", help="MODULE:APP to serve (default: the demo app)")
    serve_cmd.add_argument(
        "--factory", action="store_true", help="APP is a function that returns the app"
    )
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=8000)
    serve_cmd.add_argument(
        "--store",
        help="store URL for the demo app: sqlite:///PATH (default sqlite:///repoll.sqlite3) "
        "or memory://; also exported as REPOLL_STORE",
    )
    serve_cmd.add_argument(
        "--broker",
        help="run the demo app's work on Celery workers through this broker "
        "(amqp://...); needs a shared --store; exported as REPOLL_BROKER",
    )
    serve_cmd.add_argument(
        "--concurrency",
        type=int,
        help="operations the demo app runs at once (default 16); exported as REPOLL_CONCURRENCY",
    )
    serve_cmd.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes (default 1); they share the store: the default SQLite "
        "file, Redis or PostgreSQL",
    )
    serve_cmd.add_argument(
        "--forwarded-allow-ips",
        help="proxies whose Forwarded/X-Forwarded-* fields are believed (comma-separated "
        "addresses or networks, or *; default 127.0.0.1); exported as FORWARDED_ALLOW_IPS",
    )
    serve_cmd.add_argument(
        "--public-url",
        help="the base URL clients use (https://api.example.com); operation URLs are "
        "built on it; exported as REPOLL_PUBLIC_URL",
    )
    serve_cmd.add_argument(
        "--max-hold",
        type=float,
        metavar="SECONDS",
        help="hold no request longer than this (default 25, under the 30 s of Heroku's "
        "router and Google Cloud's load balancers); keep it under your proxies' idle "
        "timeouts; exported as REPOLL_MAX_HOLD",
    )
    worker_cmd = commands.add_parser(
        "worker", help="run deferred work from the demo app (or MODULE:APP) on Celery"
    )
    worker_cmd.add_argument("app", nargs="?", help="MODULE:APP whose endpoints to run")
    worker_cmd.add_argument("--factory", action="store_true", help="APP returns the app")
    worker_cmd.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672//")
    worker_cmd.add_argument("--queue", default="repoll")
    worker_cmd.add_argument("--concurrency", type=int, default=4, help="threads (default 4)")

    check_cmd = commands.add_parser(
        "check", help="check a server against the protocol, clause by clause"
    )
    check_cmd.add_argument("url", help="a deferred endpoint (its work should last a few seconds)")
    check_cmd.add_argument("-X", "--request", dest="method", help="method (default POST)")
    check_body = check_cmd.add_mutually_exclusive_group()
    check_body.add_argument("-d", "--data", help="request body (@FILE reads a file)")
    check_body.add_argument("--json", help="JSON request body (sets Content-Type)")
    check_cmd.add_argument("-H", "--header", action="append", default=[])
    check_cmd.add_argument("--timeout", type=float, default=60.0, help="for the outcome (s)")
    check_cmd.add_argument("--format", choices=["table", "json"], default="table")

    for name, help_text in (
        ("request", "send a request; follow its operation to the final answer"),
        ("wait", "wait on an operation URL (from request --no-wait) and print its answer"),
    ):
        cmd = commands.add_parser(name, help=help_text)
        cmd.add_argument("url", help="the URL" if name == "request" else "the operation URL")
        if name == "request":
            cmd.add_argument(
                "-X", "--request", dest="method", help="method (default GET, or POST with a body)"
            )
            body = cmd.add_mutually_exclusive_group()
            body.add_argument("-d", "--data", help="request body (@FILE reads a file)")
            body.add_argument("--json", help="JSON request body (sets Content-Type)")
            cmd.add_argument(
                "--no-wait",
                action="store_true",
                help="print the operation URL and exit instead of waiting",
            )
        cmd.add_argument(
            "-H",
            "--header",
            action="append",
            default=[],
            help="extra header 'Name: value' (repeatable)",
        )
        cmd.add_argument("--timeout", type=float, help="overall deadline in seconds")
        cmd.add_argument(
            "-i", "--include", action="store_true", help="print the final status line and headers"
        )
        cmd.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
        )
    except MissingExtraError as exc:
        print(f"repoll: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
