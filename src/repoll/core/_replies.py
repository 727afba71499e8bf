"""What the server answers, decided without I/O.

Each function turns an operation record (and what the request prefers) into a
:class:`Reply`: status, header fields and body. The ASGI layer only sends it.
"""

from __future__ import annotations

import asyncio
import html
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass

from .._errors import OperationCanceled
from . import _headers as h
from ._headers import Preferences
from ._model import Operation, StoredResponse
from ._status import Event, OperationStatus

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
    """CORS answer headers for ``origin`` if it is allowed, else none.

    A listed origin is echoed with credentials allowed (its scripts may send
    the user's cookies). ``"*"`` admits every other origin as ``*``, which
    browsers never combine with credentials: a site that is not listed can
    read operation responses only for requests made without cookies.
    """
    if not origin or not allowed:
        return []
    if origin in allowed:
        return [
            ("access-control-allow-origin", origin),
            ("access-control-allow-credentials", "true"),
            ("access-control-expose-headers", CORS_EXPOSED),
            ("vary", "Origin"),
        ]
    if "*" in allowed:
        return [
            ("access-control-allow-origin", "*"),
            ("access-control-expose-headers", CORS_EXPOSED),
        ]
    return []


def with_cors(reply: Reply, origin: str, allowed: frozenset[str]) -> Reply:
    """``reply`` with the CORS fields ``origin`` gets (none when not allowed)."""
    reply.headers.extend(cors_headers(origin, allowed))
    return reply


def preflight(origin: str, allowed: frozenset[str]) -> Reply:
    headers = cors_headers(origin, allowed)
    if headers:
        headers += [
            ("access-control-allow-methods", "GET, HEAD, DELETE"),
            (
                "access-control-allow-headers",
                "Prefer, Authorization, X-API-Key, API-Key, Idempotency-Key, Content-Type",
            ),
            ("access-control-max-age", "600"),
        ]
    return Reply(204, headers, b"")


def final(
    operation: Operation,
    *,
    operation_url: str,
    origin: str = "",
    cors_origins: frozenset[str] = frozenset(),
) -> Reply:
    """The endpoint's own response, replayed, marked as the outcome of ``operation_url``.

    CORS fields the app set on it answered the *start's* ``Origin``; they are
    replayed only to a request from that same origin (or when they allowed
    ``*``), and never beside repoll's own (``cors_origins``), so a browser
    never sees two ``Access-Control-Allow-Origin`` fields.
    """
    if operation.response is None:  # a terminal record always has one; be safe anyway
        stored = lost_response("the operation ended without a response")
    else:
        stored = operation.response
    kept: Headers = []
    app_cors: Headers = []
    for name, value in stored.headers:
        lowered = name.lower()
        if lowered in _REPLACED_ON_REPLAY:
            continue
        (app_cors if lowered.startswith("access-control-") else kept).append((name, value))
    kept += [
        (h.OPERATION_STATUS, operation.status.value),
        ("content-location", operation_url),
        _NO_STORE,
    ]
    if cors_origins:
        kept += cors_headers(origin, cors_origins)
    elif origin:
        allowed = next((v for k, v in app_cors if k.lower() == "access-control-allow-origin"), "")
        if allowed in {"*", origin}:
            kept += app_cors
    return Reply(stored.status, kept, stored.body)


def status_only(operation: Operation, *, status: int = 200) -> Reply:
    """The status document alone."""
    return Reply(
        status,
        [(h.OPERATION_STATUS, operation.status.value), _JSON, _NO_STORE],
        operation.status_json(),
    )


def cancel_answer(operation: Operation) -> Reply:
    """The answer to DELETE: 200 once the operation has ended, 202 while it is stopping."""
    return status_only(operation, status=200 if operation.status.is_terminal else 202)


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


def unstorable_response() -> StoredResponse:
    return stored_problem(
        500,
        "The operation's outcome could not be stored",
        "The work ended, but the store refused its response; the server log has the details.",
        kind="outcome-not-stored",
    )


def interrupted_outcome(
    exc: BaseException | None, *, cancel_requested: bool
) -> tuple[Event, StoredResponse, str]:
    """How work that ended without a response ends: (event, stored problem, message).

    Cancellation that was asked for is ``canceled``; a cancellation nobody
    asked for (a shutdown) means the work was lost; anything raised is a
    failure whose type, not message, the client sees.
    """
    cancelled = isinstance(exc, asyncio.CancelledError | OperationCanceled)
    if cancel_requested and cancelled:
        return Event.CANCEL, canceled_response(), "Canceled on request."
    if isinstance(exc, asyncio.CancelledError):
        reason = "The server stopped the work before it finished."
        return Event.LOSE, lost_response(reason), reason
    if exc is None:
        reason = "The work ended without a response."
        return Event.FINISH_ERROR, lost_response(reason), reason
    return (
        Event.FINISH_ERROR,
        handler_error_response(exc),
        f"The endpoint raised {type(exc).__name__}.",
    )


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
