"""What the server answers, decided without I/O.

Each function turns an operation record (and what the request prefers) into a
:class:`Reply`: status, header fields and body. The ASGI layer only sends it.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass

from . import _headers as h
from ._headers import Preferences
from ._model import Operation, StoredResponse
from ._status import OperationStatus

Headers = list[tuple[str, str]]

_JSON = ("content-type", "application/json")
_NO_STORE = ("cache-control", "no-store")
# Headers a replay drops from the stored response because the replay sets its own.
_REPLACED_ON_REPLAY = frozenset({"cache-control", "content-location", h.OPERATION_STATUS})


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


def pending(
    operation: Operation, *, operation_url: str, preferences: Preferences, interval: float
) -> Reply:
    """Not finished yet: 303 to the operation URL, or 202 when ``respond-async`` was asked."""
    headers: Headers = [
        ("location", operation_url),
        *h.retry_after_headers(interval).items(),
        (h.OPERATION_STATUS, operation.status.value),
        _JSON,
        _NO_STORE,
    ]
    status = 303
    if preferences.respond_async:
        status = 202
        headers.append((h.PREFERENCE_APPLIED, "respond-async"))
    return Reply(status, headers, operation.status_json())


def progress_page(
    operation: Operation, *, operation_url: str, interval: float, now: float
) -> Reply:
    """For a person in a browser: a small page that comes back by itself (``Refresh``)."""
    refresh = max(1, math.ceil(interval))
    progress = operation.progress
    percent = f"{progress:.0%}" if progress is not None else "unknown"
    elapsed = max(now - operation.created_at, 0.0)
    message = html.escape(operation.message or "")
    url = html.escape(operation_url, quote=True)
    bar = (
        f'<progress id="progress" max="1" value="{progress:.3f}" aria-describedby="status">'
        f"{percent}</progress>"
        if progress is not None
        else '<progress id="progress" aria-describedby="status">working</progress>'
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Working: {percent}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}
progress{{width:100%;height:1.5rem}}</style></head>
<body><main>
<h1>Your request is being processed</h1>
{bar}
<p id="status" role="status" aria-live="polite">Status: <strong>{operation.status.value}</strong>,
progress: <strong>{percent}</strong>, elapsed: <span id="elapsed">{elapsed:.0f} s</span>.</p>
<p id="message">{message}</p>
<p>This page refreshes itself every {refresh} s and shows the result when it is ready.
<a href="{url}">Check now</a>.</p>
</main></body></html>
"""
    headers: Headers = [
        ("content-type", "text/html; charset=utf-8"),
        ("refresh", f"{refresh}; url={operation_url}"),
        ("location", operation_url),
        *h.retry_after_headers(interval).items(),
        (h.OPERATION_STATUS, operation.status.value),
        _NO_STORE,
    ]
    return Reply(202, headers, page.encode())


def sse_event(event: str, data: bytes) -> bytes:
    """One server-sent event; ``data`` is one line of JSON."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


CORS_EXPOSED = (
    "Location, Retry-After, Retry-After-Ms, Operation-Status, Content-Location, Preference-Applied"
)


def cors_headers(origin: str, allowed: frozenset[str]) -> list[tuple[str, str]]:
    """CORS answer headers for ``origin`` if it is allowed, else none."""
    if not origin or not allowed or (origin not in allowed and "*" not in allowed):
        return []
    return [
        ("access-control-allow-origin", origin),
        ("access-control-allow-credentials", "true"),
        ("access-control-expose-headers", CORS_EXPOSED),
        ("vary", "Origin"),
    ]


def preflight(origin: str, allowed: frozenset[str]) -> Reply:
    headers = cors_headers(origin, allowed)
    if headers:
        headers += [
            ("access-control-allow-methods", "GET, HEAD, DELETE"),
            (
                "access-control-allow-headers",
                "Prefer, Authorization, Idempotency-Key, Content-Type",
            ),
            ("access-control-max-age", "600"),
        ]
    return Reply(204, headers, b"")


def final(operation: Operation, *, operation_url: str) -> Reply:
    """The endpoint's own response, replayed, marked as the outcome of ``operation_url``."""
    if operation.response is None:  # a terminal record always has one; be safe anyway
        stored = lost_response("the operation ended without a response")
    else:
        stored = operation.response
    headers: Headers = [(k, v) for k, v in stored.headers if k.lower() not in _REPLACED_ON_REPLAY]
    headers += [
        (h.OPERATION_STATUS, operation.status.value),
        ("content-location", operation_url),
        _NO_STORE,
    ]
    return Reply(stored.status, headers, stored.body)


def status_only(operation: Operation, *, status: int = 200) -> Reply:
    """The status document alone (the answer to DELETE)."""
    return Reply(
        status,
        [(h.OPERATION_STATUS, operation.status.value), _JSON, _NO_STORE],
        operation.status_json(),
    )


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    kind: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> Reply:
    body = h.problem_body(status, title, detail, kind=kind)
    return Reply(status, [("content-type", h.PROBLEM_JSON), _NO_STORE, *extra_headers], body)


def not_found() -> Reply:
    # The same answer for an unknown id, a malformed id and someone else's
    # operation, so that existence does not leak.
    return problem(404, "Operation not found", "No such operation.", kind="operation-not-found")


def expired(operation: Operation) -> Reply:
    return problem(
        410,
        "Operation expired",
        "The operation's outcome was kept for its retention time and then discarded.",
        kind="operation-expired",
    )


def body_too_large(limit: int) -> Reply:
    return problem(
        413,
        "Request body too large",
        f"A deferred request's body may be at most {limit} bytes.",
        kind="body-too-large",
    )


def store_unavailable(retry_after: float = 1.0) -> Reply:
    return problem(
        503,
        "Service unavailable",
        "The operation store is busy or unreachable; try again shortly.",
        kind="store-unavailable",
        extra_headers=h.retry_after_headers(retry_after).items(),
    )


def too_many_operations(whose: str, retry_after: float) -> Reply:
    return problem(
        429,
        "Too many operations",
        f"The limit of unfinished operations for {whose} is reached; try again later.",
        kind="too-many-operations",
        extra_headers=h.retry_after_headers(retry_after).items(),
    )


def bad_idempotency_key(detail: str) -> Reply:
    return problem(400, "Invalid Idempotency-Key", detail, kind="invalid-idempotency-key")


def idempotency_key_reused() -> Reply:
    return problem(
        422,
        "Idempotency-Key reused",
        "This key was used with a different request; use a new key for a new request.",
        kind="idempotency-key-reused",
    )


def method_not_allowed() -> Reply:
    return problem(
        405,
        "Method not allowed",
        "Use GET or DELETE.",
        extra_headers=[("allow", "GET, HEAD, DELETE")],
    )


def stored_problem(status: int, title: str, detail: str, *, kind: str) -> StoredResponse:
    """A problem document to keep as an operation's final response."""
    return StoredResponse(
        status,
        (("content-type", h.PROBLEM_JSON),),
        h.problem_body(status, title, detail, kind=kind),
    )


def handler_error_response(exc: BaseException) -> StoredResponse:
    # The exception's type is useful to the caller; its message may hold
    # internals, so it stays in the server log.
    return stored_problem(
        500,
        "The operation failed",
        f"The endpoint raised {type(exc).__name__}; the server log has the details.",
        kind="operation-failed",
    )


def lost_response(reason: str) -> StoredResponse:
    return stored_problem(500, "The operation was lost", reason, kind="operation-lost")


def canceled_response() -> StoredResponse:
    return stored_problem(
        409,
        "The operation was canceled",
        "Cancellation was requested before the work finished.",
        kind="operation-canceled",
    )


def decode_status_document(body: bytes) -> dict[str, object] | None:
    """The status document in a pending reply, or None if it is not one."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict) or document.get("status") not in _STATUS_VALUES:
        return None
    return document


_STATUS_VALUES = frozenset(s.value for s in OperationStatus)
