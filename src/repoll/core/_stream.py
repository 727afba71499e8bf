"""The pieces of an event stream on an operation URL (protocol.md 14.2), decided without I/O."""

from __future__ import annotations

import json

from ._model import Operation
from ._replies import Headers, Reply, cors_headers


def sse_event(event: str, data: bytes) -> bytes:
    """One server-sent event; ``data`` is one line of JSON."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


def stream_start(origin: str, cors_origins: frozenset[str]) -> Reply:
    """The head of an event stream (its events follow as more body)."""
    headers: Headers = [
        ("content-type", "text/event-stream"),
        ("cache-control", "no-store"),
        # nginx buffers responses by default, which would hold every event back.
        ("x-accel-buffering", "no"),
        *cors_headers(origin, cors_origins),
    ]
    return Reply(200, headers, b"")


def stream_event(operation: Operation, *, retry: float | None = None) -> bytes:
    """The event for ``operation``'s current state: ``status``, or ``outcome`` once it ended.

    The outcome carries the endpoint's status code (``response_status``): the
    body itself is fetched from the operation URL. ``retry`` (seconds) tells
    the browser's EventSource when to come back, for a stream that ends early.
    """
    event = "outcome" if operation.status.is_terminal else "status"
    document = operation.status_document()
    if operation.response is not None:
        document["response_status"] = operation.response.status
    body = sse_event(event, json.dumps(document, separators=(",", ":")).encode())
    if retry is not None:
        body = f"retry: {round(retry * 1000)}\n".encode() + body
    return body
