"""The ``repoll`` command: ``demo`` and ``serve``."""

from __future__ import annotations

import argparse
import contextlib
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

from ._errors import MissingExtraError, require

DEMO_APP = "repoll._demo:create_app"


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

    from ._demo import create_app  # noqa: PLC0415
    from ._httpx import PollingTransport  # noqa: PLC0415
    from ._poll import PollOptions  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="repoll-demo-") as tmp:
        store = f"sqlite:///{Path(tmp) / 'operations.sqlite3'}"
        app = create_app(store=store)
        with running_server(app) as base_url:
            print(f"repoll demo: server on {base_url}, SQLite store in {tmp}", file=out)
            body = {"seconds": seconds, "fail": fail}
            print(f"POST /start_work {json.dumps(body)}  (a {seconds:g} s job)\n", file=out)
            started = time.monotonic()
            options = PollOptions(respond_async=False, long_poll=long_poll, deadline=seconds + 60)
            transport = PollingTransport(
                options=options, on_hop=lambda hop: _describe_hop(hop, out, started)
            )
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


def serve(target: str | None, host: str, port: int, store: str | None) -> int:
    """Serve the demo app (or ``MODULE:APP``) with uvicorn until interrupted."""
    require("uvicorn", "server")
    import uvicorn  # noqa: PLC0415

    if store:
        os.environ["REPOLL_STORE"] = store
    app = target or DEMO_APP
    uvicorn.run(app, host=host, port=port, factory=target is None)
    return 0


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
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=8000)
    serve_cmd.add_argument(
        "--store",
        help="store URL for the demo app: sqlite:///PATH (default sqlite:///repoll.sqlite3) "
        "or memory://; also exported as REPOLL_STORE",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            return demo(args.seconds, fail=args.fail, long_poll=args.long_poll or None)
        return serve(args.app, args.host, args.port, args.store)
    except MissingExtraError as exc:
        print(f"repoll: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
