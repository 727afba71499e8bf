"""What the server answers, decided without I/O.

Each function turns an operation record (and what the request prefers) into a
:class:`Reply`: status, header fields and body. The ASGI layer only sends it.

The shell gathers the facts (the record it read, the time, the interval it
advertises, the request's ``Accept``, ``Prefer`` and ``Origin``) and calls:

* :func:`answer` for every status answer (a poll, a waiting start, a repeated
  ``Idempotency-Key``): expired, final, progress page or pending;
* :func:`cancel_now` for a ``DELETE``: the answer that needs no waiting, or
  None when the work must first be asked to stop (then, after the hold,
  :func:`cancel_answer`);
* :func:`operation_request` to sort a request on an operation URL;
* the problem documents (``not_found``, ``expired``, ``body_too_large``, ...)
  and the event-stream pieces (:func:`stream_start`, :func:`stream_event`).
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from . import _headers as h
from ._headers import Preferences
from ._model import Operation, StoredResponse
from ._status import Ending, Event, OperationStatus

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
    operation: Operation,
    *,
    operation_url: str,
    preferences: Preferences,
    interval: float,
    redirect: str | None = None,
) -> Reply:
    """Not finished yet: 303 to the operation URL, or 202 when ``respond-async`` was asked.

    A 303 sends the client to ``redirect`` (a hop URL, ``_profiles.hop_url``)
    when given; a 202 always names the operation URL itself.
    """
    location = operation_url
    if redirect is not None and not preferences.respond_async:
        location = redirect
    headers: Headers = [
        ("location", location),
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


def ran_out(
    operation: Operation, *, operation_url: str, interval: float, retention: float
) -> Reply:
    """The graceful end of a redirect-following client's budget (protocol.md 5.8).

    A ``202`` every client takes as success, naming the operation URL
    (``Location`` and ``Content-Location``), with the status document and a
    sentence for the person reading it.
    """
    document = operation.status_document()
    document["detail"] = (
        f"The work is still running. GET {operation_url} for its outcome; "
        f"it is kept for {retention:g} seconds after it ends."
    )
    headers: Headers = [
        ("location", operation_url),
        ("content-location", operation_url),
        *h.retry_after_headers(interval).items(),
        (h.OPERATION_STATUS, operation.status.value),
        _JSON,
        _NO_STORE,
    ]
    return Reply(202, headers, json.dumps(document, separators=(",", ":")).encode())


def wants_page(accept: str, preferences: Preferences) -> bool:
    """A browser navigating (it accepts HTML), not a script that asked for 202."""
    if preferences.respond_async:
        return False
    return "text/html" in accept


def answer(
    operation: Operation | None,
    *,
    now: float,
    interval: float,
    page: bool,
    preferences: Preferences,
    operation_url: str,
    origin: str = "",
    cors_origins: frozenset[str] = frozenset(),
    redirect: str | None = None,
    ran_out_after: float | None = None,
) -> Reply:
    """What to send for ``operation`` at ``now``: not found, expired, final, page or pending.

    A pending ``303`` goes to ``redirect`` (a hop URL) when given; when the
    client can follow no more redirects (``ran_out_after``, the retention to
    mention, is set) it is the graceful ``202`` of :func:`ran_out` instead.

    ``interval`` is the Retry-After the server advertises for it, ``page``
    whether the request wants a progress page (:func:`wants_page`). A start
    that asked for ``respond-async`` keeps getting 202 on every poll, so a
    poller that never repeats the preference (azure-core, say) keeps its
    style. Every answer carries the CORS fields of a listed origin, so that
    a script on it can read a 404 or 410 as well as the outcome.
    """
    if operation is None:
        return with_cors(not_found(), origin, cors_origins)
    if operation.is_expired(now):
        return with_cors(expired(operation), origin, cors_origins)
    if operation.status.is_terminal:
        return final(
            operation, operation_url=operation_url, origin=origin, cors_origins=cors_origins
        )
    if page:
        reply = progress_page(operation, operation_url=operation_url, interval=interval, now=now)
    else:
        if operation.respond_async and not preferences.respond_async:
            preferences = dataclasses.replace(preferences, respond_async=True)
        if ran_out_after is not None and not preferences.respond_async:
            reply = ran_out(
                operation, operation_url=operation_url, interval=interval, retention=ran_out_after
            )
        else:
            reply = pending(
                operation,
                operation_url=operation_url,
                preferences=preferences,
                interval=interval,
                redirect=redirect,
            )
    return with_cors(reply, origin, cors_origins)


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


OperationRequest = Literal["preflight", "module", "stream", "cancel", "status", "not-allowed"]


def operation_request(method: str, name: str, accept: str, *, module: str) -> OperationRequest:
    """What a request on an operation URL asks for; ``name`` is the path's last segment.

    ``module`` is the name the browser client module is served under: it
    is never a valid operation id, so it cannot hide one.
    """
    if method == "OPTIONS":
        return "preflight"
    if name == module and method in {"GET", "HEAD"}:
        return "module"
    if method == "GET" and "text/event-stream" in accept:
        return "stream"
    if method == "DELETE":
        return "cancel"
    if method in {"GET", "HEAD"}:
        return "status"
    return "not-allowed"


def client_module(source: bytes) -> Reply:
    """The browser client module (``repoll.js``), cacheable for an hour."""
    return Reply(
        200,
        [("content-type", "text/javascript; charset=utf-8"), ("cache-control", "max-age=3600")],
        source,
    )


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


def cancel_now(operation: Operation | None, now: float) -> Reply | None:
    """The answer to DELETE that needs no waiting, or None while the work runs.

    Not found, expired and already ended are answered at once (canceling
    ended work is no error: the answer is its status). None means: ask the
    work to stop, hold up to ``PacingPolicy.cancel_hold`` for it to, and
    answer :func:`cancel_answer` with the record then.
    """
    if operation is None:
        return not_found()
    if operation.is_expired(now):
        return expired(operation)
    if operation.status.is_terminal:
        return cancel_answer(operation)
    return None


def cancel_by_record(operation: Operation, *, running_here: bool) -> bool:
    """Whether a cancellation ends ``operation`` by its record alone.

    Work that has not started and is not in this process's hands has
    nothing to stop: it is marked canceled at once. Running work stops
    itself (cooperatively) and records that it did.
    """
    return not running_here and operation.status is OperationStatus.QUEUED


def canceled_on_request() -> tuple[Event, StoredResponse, str]:
    """How an operation canceled on request ends: (event, stored problem, message)."""
    return Event.CANCEL, canceled_response(), "Canceled on request."


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


def declares_too_large(content_length: str, limit: int) -> bool:
    """Whether a ``Content-Length`` value already says the body is over ``limit``.

    A value of more digits than any real length is refused without int(),
    which would spend quadratic time on it; a malformed one says nothing
    (the body is counted as it arrives).
    """
    if len(content_length) > 18:
        return True
    declared = int(content_length) if content_length.isascii() and content_length.isdigit() else 0
    return declared > limit


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


def method_not_allowed(method: str = "", *, after_redirect: bool = False) -> Reply:
    """An operation URL asked with another method than GET, HEAD or DELETE.

    ``after_redirect``: the URL is a hop URL, which only a redirect gives out.
    A POST there is a client that kept the start's method through the 303:
    ``curl -L -X POST`` does (its ``-X`` applies to every request), so the
    detail says what to type instead.
    """
    detail = "Use GET or DELETE."
    if after_redirect and method in {"POST", "PUT", "PATCH"}:
        detail += (
            f" This {method} followed a 303 without switching to GET. With curl, send the"
            f" body with -d or --data and leave out -X {method}: curl -L keeps -X on every"
            " redirect."
        )
    return problem(
        405, "Method not allowed", detail, extra_headers=[("allow", "GET, HEAD, DELETE")]
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


def lost_at_restart(status: OperationStatus) -> str:
    """Why unfinished work left by this process's previous life is lost."""
    return (
        f"The server stopped while the operation was {status.value}; "
        "its work was lost. Start it again."
    )


def lost_with_owner(owner: str) -> str:
    """Why the unfinished work of a process that stopped heartbeating is lost."""
    return (
        f"The process running the operation ({owner}) stopped. Its work was lost; start it again."
    )


LOST_AT_SHUTDOWN = "The server shut down before the work finished."


def unstorable_response() -> StoredResponse:
    return stored_problem(
        500,
        "The operation's outcome could not be stored",
        "The work ended, but the store refused its response; the server log has the details.",
        kind="outcome-not-stored",
    )


def interrupted_outcome(
    ending: Ending, *, cancel_requested: bool, raised: BaseException | None = None
) -> tuple[Event, StoredResponse, str]:
    """How work that ended without a response ends: (event, stored problem, message).

    The one classification for in-process and worker work alike (docs/protocol.md
    7.1, 8.2). Cancellation that was asked for is ``canceled``, whether the
    task was cancelled or the work stopped itself (``raise_if_canceled``); a
    cancellation nobody asked for (a shutdown) means the work was lost;
    ``OperationCanceled`` raised by work nobody asked to stop is a failure
    like any other exception, whose type, not message, the client sees.
    The shell says how the work ended (``ending``) and what it raised
    (``raised``, only for its type's name), so no exception type of asyncio's
    is looked at here.
    """
    stopped = ending is Ending.CANCELLED or ending is Ending.STOPPED
    if cancel_requested and stopped:
        return Event.CANCEL, canceled_response(), "Canceled on request."
    if ending is Ending.CANCELLED:
        reason = "The server stopped the work before it finished."
        return Event.LOSE, lost_response(reason), reason
    if raised is None:
        reason = "The work ended without a response."
        return Event.FINISH_ERROR, lost_response(reason), reason
    return (
        Event.FINISH_ERROR,
        handler_error_response(raised),
        f"The endpoint raised {type(raised).__name__}.",
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
