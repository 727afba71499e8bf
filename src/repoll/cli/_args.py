"""The ``repoll`` command line: its arguments, checked before anything runs.

A user's mistake gets one line on stderr and exit code 2 (``EXIT_USAGE``),
never a traceback: values are checked by the ``type=`` functions below, and
the parser's own complaints are printed on one line with a pointer to
``--help``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn
from urllib.parse import urlsplit

from .. import __version__

# Exit codes, documented in README.md ("repoll request exits ...").
EXIT_OK, EXIT_HTTP_ERROR, EXIT_USAGE, EXIT_FAILURE, EXIT_TIMEOUT = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130

DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"repoll: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def http_url(value: str) -> str:
    """An http:// or https:// URL with a host."""
    if not value.strip():
        msg = "the URL is empty"
        raise argparse.ArgumentTypeError(msg)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        hint = f" (did you mean http://{value}?)" if "://" not in value else ""
        msg = f"{value!r} is not an http:// or https:// URL{hint}"
        raise argparse.ArgumentTypeError(msg)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        msg = f"{value!r} has a port that is not a number from 0 to 65535"
        raise argparse.ArgumentTypeError(msg) from None
    if not parts.hostname:
        msg = f"{value!r} names no host"
        raise argparse.ArgumentTypeError(msg)
    return value


def port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        msg = f"{value!r} is not a port number (0 to 65535)"
        raise argparse.ArgumentTypeError(msg)
    return number


def _number(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if number != number or number in (float("inf"), float("-inf")):  # noqa: PLR0124 - NaN
        msg = f"{value!r} is not a number"
        raise argparse.ArgumentTypeError(msg)
    return number


def positive_seconds(value: str) -> float:
    seconds = _number(value)
    if seconds <= 0:
        msg = f"{value!r}: give a number of seconds above 0"
        raise argparse.ArgumentTypeError(msg)
    return seconds


def seconds(value: str) -> float:
    number = _number(value)
    if number < 0:
        msg = f"{value!r}: give a number of seconds, 0 or more"
        raise argparse.ArgumentTypeError(msg)
    return number


def count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        msg = f"{value!r}: give a whole number, 1 or more"
        raise argparse.ArgumentTypeError(msg)
    return number


def _header_option(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a header for every request, polls included (repeatable)",
    )


def _body_options(cmd: argparse.ArgumentParser) -> None:
    body = cmd.add_mutually_exclusive_group()
    body.add_argument("-d", "--data", help="request body (@FILE reads a file)")
    body.add_argument("--json", help="JSON request body (sets Content-Type)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="repoll", description="Long HTTP work, pollable for every endpoint.")
    parser.add_argument("--version", action="version", version=f"repoll {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo_cmd = commands.add_parser("demo", help="run the demo server and client, show each hop")
    demo_cmd.add_argument(
        "--seconds", type=seconds, default=4.0, help="job length in seconds (default 4)"
    )
    demo_cmd.add_argument("--fail", action="store_true", help="make the job fail at its end")
    demo_cmd.add_argument(
        "--long-poll",
        type=seconds,
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
    serve_cmd.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    serve_cmd.add_argument("--port", type=port, default=8000, help="port (default 8000)")
    serve_cmd.add_argument(
        "--store",
        help="the demo app's store: sqlite:///PATH (default sqlite:///repoll.sqlite3), "
        "memory://, redis://HOST:PORT/DB or postgresql://USER@HOST/DB; checked at startup; "
        "exported as REPOLL_STORE",
    )
    serve_cmd.add_argument(
        "--broker",
        help="run the demo app's work on Celery workers through this broker "
        "(amqp://...); needs a shared --store; exported as REPOLL_BROKER",
    )
    serve_cmd.add_argument(
        "--queue",
        help="the Celery queue for --broker (default repoll, or $REPOLL_QUEUE when set)",
    )
    serve_cmd.add_argument(
        "--concurrency",
        type=count,
        help="operations the demo app runs at once (default 16); exported as REPOLL_CONCURRENCY",
    )
    serve_cmd.add_argument(
        "--workers",
        type=count,
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
        type=seconds,
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
    worker_cmd.add_argument(
        "--broker", default=DEFAULT_BROKER, help=f"Celery's broker (default {DEFAULT_BROKER})"
    )
    worker_cmd.add_argument(
        "--queue",
        default=os.environ.get("REPOLL_QUEUE") or "repoll",
        help="the queue to consume (default repoll, or $REPOLL_QUEUE when set)",
    )
    worker_cmd.add_argument("--concurrency", type=count, default=4, help="threads (default 4)")

    check_cmd = commands.add_parser(
        "check", help="check a server against the protocol, clause by clause"
    )
    check_cmd.add_argument(
        "url", type=http_url, help="a deferred endpoint (its work should last 5 s or more)"
    )
    check_cmd.add_argument("-X", "--request", dest="method", help="method (default POST)")
    _body_options(check_cmd)
    _header_option(check_cmd)
    check_cmd.add_argument(
        "--timeout",
        type=positive_seconds,
        default=60.0,
        help="seconds to wait for the outcome (default 60)",
    )
    check_cmd.add_argument(
        "--format",
        choices=["table", "json"],
        default="table",
        help="a table for people (default) or JSON for programs",
    )

    for name, help_text in (
        ("request", "send a request; follow its operation to the final answer"),
        ("wait", "wait on an operation URL (from request --no-wait) and print its answer"),
    ):
        cmd = commands.add_parser(name, help=help_text)
        cmd.add_argument(
            "url",
            type=http_url,
            help="the URL" if name == "request" else "the operation URL",
        )
        if name == "request":
            cmd.add_argument(
                "-X", "--request", dest="method", help="method (default GET, or POST with a body)"
            )
            _body_options(cmd)
            cmd.add_argument(
                "--no-wait",
                action="store_true",
                help="print the operation URL and exit instead of waiting",
            )
        _header_option(cmd)
        cmd.add_argument(
            "--timeout",
            type=positive_seconds,
            help="overall deadline in seconds (default: none)",
        )
        cmd.add_argument(
            "-i", "--include", action="store_true", help="print the final status line and headers"
        )
        cmd.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    return parser
