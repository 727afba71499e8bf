"""The client's poll loop, written once, with no I/O and no clock.

Theory of operation
-------------------
:func:`poll_flow` is a generator, in the manner of httpx's ``Auth.auth_flow``.
It is started with the first response (the answer to the caller's own
request) and yields *actions*:

* :class:`Sleep` -- the runner waits that many seconds and sends back ``None``;
* :class:`Poll` -- the runner sends that GET and sends back what came of it as
  an :class:`Observed` (a response, or the transport error it raised).

When the flow returns, its value is the final :class:`Observed` response: the
one to hand to the caller as the answer to the original request. Errors
(deadline, poll budget, protocol breaks, retries exhausted) are raised from
the generator.

Each turn of the loop decides, in this order:

1. Is the response final? Anything that is not a polling response is.
2. Is it a transient failure of a poll (a connection error, or 429/502/503/504
   without a terminal ``Operation-Status``)? Retry the same URL after the
   server's Retry-After or a backoff, at most ``max_retries`` times in a row.
3. Where next? ``Location``, resolved against the response URL, on the same
   origin as the original request unless ``allow_cross_origin``.
4. When? ``Retry-After-Ms``, else ``Retry-After``, clamped to
   ``[min_interval, max_interval]``. No interval, a nonsensical one, or one
   below ``min_interval`` gives exponential backoff with full jitter instead,
   so a server answering "come back now" for ever cannot cause a tight loop.
   If the server holds polls (a repoll server, seen by ``Operation-Status``,
   whose last poll was in fact held) and ``long_poll`` is set, the next poll
   goes out at once with ``Prefer: wait``.
5. Within budget? The overall ``deadline`` and ``max_polls``.

Runners (sync and async, httpx and requests) only translate: they never
decide. Time enters through ``Observed.at``, which the runner stamps with a
monotonic clock reading, so the flow is deterministic under test.

Two more decisions every client needs are made here, once, so that the
httpx transports, the requests adapter and the handles cannot drift apart:
:func:`needs_polling` (is this first response one to follow?) and
:func:`poll_headers` (which of the original request's header fields a poll
carries: ``Accept`` and ``User-Agent`` always, credentials only to the
original's origin, then the flow's own ``Prefer``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urljoin, urlsplit

from .._errors import CrossOriginError, OperationError, PollingTimeout, ProtocolError
from . import _headers as h
from ._status import OperationStatus

_TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Hop:
    """One response on the way to the final one, as progress callbacks see it."""

    method: str
    url: str
    status: int
    operation_status: str | None
    retry_after: float | None  # what the server asked for, in seconds
    progress: float | None
    message: str | None
    next_poll_in: float | None = None  # what the client will wait; None when final


@dataclass(frozen=True, slots=True)
class PollOptions:
    """How the client polls. Every field has a safe default; none sets a deadline."""

    deadline: float | None = None  # seconds for the whole operation; None: no limit
    min_interval: float = 0.1  # never poll sooner than this, whatever the server says
    max_interval: float = 60.0  # never wait longer than this between polls
    # Ask the server to hold each poll (Prefer: wait=N); 0 asks it not to hold
    # (wait=0), None leaves the hold to the server's default.
    long_poll: float | None = 30.0
    max_polls: int | None = None  # give up after this many polls; None: no limit
    max_retries: int = 5  # transient poll failures in a row before giving up
    respond_async: bool = True  # ask for 202 rather than 303 (Prefer: respond-async)
    allow_cross_origin: bool = False  # follow a Location on another origin (no credentials)
    backoff_initial: float = 0.5  # when the server names no usable interval
    backoff_factor: float = 1.5
    backoff_max: float = 10.0
    on_progress: Callable[[Hop], None] | None = None  # called with every response

    def __post_init__(self) -> None:
        if not 0 <= self.min_interval <= self.max_interval:
            msg = "need 0 <= min_interval <= max_interval"
            raise ValueError(msg)
        if self.deadline is not None and self.deadline <= 0:
            msg = "deadline must be positive"
            raise ValueError(msg)
        if self.max_retries < 0 or (self.max_polls is not None and self.max_polls < 0):
            msg = "max_retries and max_polls must not be negative"
            raise ValueError(msg)
        if not 0 < self.backoff_initial <= self.backoff_max or self.backoff_factor < 1:
            msg = "need 0 < backoff_initial <= backoff_max and backoff_factor >= 1"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class Observed:
    """A response (or a transport error) as the flow sees it."""

    status: int  # 0 when ``error`` is set
    headers: Mapping[str, str]  # lower-case names
    url: str
    at: float  # monotonic seconds when it arrived
    body: bytes = b""
    method: str = "GET"
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Poll:
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    # How long the runner waits for this poll's answer; None: the library's
    # own setting (see poll_read_timeout).
    read_timeout: float | None = None


Action = Sleep | Poll


def is_polling_response(response: Observed) -> bool:
    """True if ``response`` says "not done yet, come back to Location".

    A ``202`` with ``Location`` is one (the plain convention: poll Location
    while it answers 202); a ``303`` needs ``Retry-After``/``Retry-After-Ms``
    or ``Operation-Status`` to tell it from an ordinary redirect.
    """
    if response.status not in (202, 303) or "location" not in response.headers:
        return False
    headers = response.headers
    if h.OPERATION_STATUS in headers:
        return not _is_terminal(headers[h.OPERATION_STATUS])
    return response.status == 202 or h.RETRY_AFTER in headers or h.RETRY_AFTER_MS in headers


_AZURE_MONITORS = ("azure-asyncoperation", "operation-location")
_AZURE_PENDING = frozenset(
    {"notstarted", "running", "inprogress", "accepted", "creating", "updating"}
)


def azure_monitor(response: Observed) -> str | None:
    """The status monitor URL of an Azure-style long-running operation, if any."""
    if response.status not in (200, 201, 202):
        return None
    for name in _AZURE_MONITORS:
        if name in response.headers:
            return urljoin(response.url, response.headers[name])
    return None


# Every status a first response needing polling can have (see the two tests
# below): clients ask this before anything else, so most responses cost one
# set lookup.
_STARTING_STATUSES = frozenset({200, 201, 202, 303})


def needs_polling(response: Observed) -> bool:
    """The first response starts something to follow: repoll, plain 202, or Azure-style.

    This is the only test the clients make before following a response: they
    pass every response here, untouched, and follow it when this says so.
    """
    if response.status not in _STARTING_STATUSES:
        return False
    return is_polling_response(response) or azure_monitor(response) is not None


def _json_body(response: Observed) -> dict[str, object]:
    try:
        document = json.loads(response.body) if response.body else None
    except (ValueError, UnicodeDecodeError):
        return {}
    return document if isinstance(document, dict) else {}


def _is_terminal(value: str) -> bool:
    try:
        return OperationStatus(value.strip().lower()).is_terminal
    except ValueError:
        return False


def is_transient_failure(response: Observed) -> bool:
    """A poll that failed for now: no answer, or 429/502/503/504 that is not final."""
    if response.error is not None:
        return True
    if response.status not in _TRANSIENT_STATUSES:
        return False
    status = response.headers.get(h.OPERATION_STATUS)
    return status is None or not _is_terminal(status)


def server_interval(response: Observed, *, wall_now: float) -> float | None:
    """The interval the server asked for: Retry-After-Ms first, then Retry-After."""
    precise = h.parse_retry_after_ms(response.headers.get(h.RETRY_AFTER_MS))
    if precise is not None:
        return precise
    return h.parse_retry_after(response.headers.get(h.RETRY_AFTER), now=wall_now)


def same_origin(a: str, b: str) -> bool:
    """True if two absolute URLs share scheme, host and port."""
    return _origin(a) == _origin(b)


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # a malformed port never matches a real origin
        return (parts.scheme, parts.hostname, -1)
    if port is None:
        port = _DEFAULT_PORTS.get(parts.scheme.lower())
    return (parts.scheme.lower(), parts.hostname, port)


# The poll continues the caller's request: it goes out with the caller's
# fields (its API key, its User-Agent, its trace context, a tenant header...),
# except those that belong to the original request alone: what describes its
# body, its conditions (If-Match would make a GET of the status fail), its
# Prefer and Idempotency-Key (the flow writes its own Prefer), and the fields
# of the connection, which the HTTP library writes for each request.
NOT_CARRIED: Final = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",
        "content-language",
        "content-location",
        "content-md5",
        "content-range",
        "transfer-encoding",
        "expect",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "if-range",
        "range",
        "idempotency-key",
        "prefer",
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    }
)


def carries_credentials(original_url: str, poll_url: str) -> bool:
    """True if a poll of ``poll_url`` may carry the credentials sent to ``original_url``.

    Only to the origin that received them: a server must not be able to name
    another host in Location and collect the caller's credentials there.
    """
    return same_origin(urljoin(original_url, poll_url), original_url)


def poll_headers(original: Mapping[str, str], original_url: str, poll: Poll) -> dict[str, str]:
    """The header fields of ``poll``, from the original request's fields; lower-case names.

    The one rule every client follows (each only translates the result into
    its library's request): the original's fields but those in
    :data:`NOT_CARRIED` (``Accept`` is ``*/*`` without one), minus its
    credentials (:data:`~repoll.core._headers.CREDENTIAL_FIELDS`) when the
    poll goes to another origin, plus the flow's own fields (``Prefer``).
    ``original`` may be any mapping (httpx's or requests' case-insensitive
    ones included); duplicate fields arrive joined, as those mappings give
    them.
    """
    credentials = carries_credentials(original_url, poll.url)
    headers = {"accept": "*/*"}
    for name, value in original.items():
        lower = name.lower()
        if lower in NOT_CARRIED or (not credentials and lower in h.CREDENTIAL_FIELDS):
            continue
        headers[lower] = value
    headers.update((name.lower(), value) for name, value in poll.headers.items())
    return headers


def hop_of(response: Observed, *, wall_now: float, next_poll_in: float | None = None) -> Hop:
    from ._replies import decode_status_document  # noqa: PLC0415 - avoids an import cycle

    document = decode_status_document(response.body) if response.body else None
    progress = document.get("progress") if document else None
    message = document.get("message") if document else None
    return Hop(
        method=response.method,
        url=response.url,
        status=response.status,
        operation_status=response.headers.get(h.OPERATION_STATUS),
        retry_after=server_interval(response, wall_now=wall_now),
        progress=float(progress) if isinstance(progress, int | float) else None,
        message=message if isinstance(message, str) else None,
        next_poll_in=next_poll_in,
    )


def first_request_headers(options: PollOptions) -> dict[str, str]:
    """Header fields to add to the caller's request so the server can defer it politely."""
    value = h.format_prefer(respond_async=options.respond_async)
    return {h.PREFER: value} if value else {}


class _Backoff:
    """Exponential backoff with full jitter, reset whenever the server names an interval."""

    def __init__(self, options: PollOptions, rng: random.Random) -> None:
        self._options = options
        self._rng = rng
        self._cap = options.backoff_initial

    def next(self) -> float:
        delay = self._rng.uniform(0, self._cap)
        self._cap = min(self._cap * self._options.backoff_factor, self._options.backoff_max)
        return delay

    def reset(self) -> None:
        self._cap = self._options.backoff_initial


def poll_flow(
    first: Observed,
    options: PollOptions,
    *,
    wall_clock: Callable[[], float],
    rng: random.Random | None = None,
    read_timeout: float | None = None,
) -> Generator[Action, Observed | None, Observed]:
    """Follow a polling response to its final response (see the module docstring).

    ``first.url`` is the original request's URL: the origin polls must stay on.
    ``wall_clock`` gives Unix time, used only to read HTTP-date Retry-After
    values. ``rng`` drives the backoff jitter. ``read_timeout`` is how long the
    HTTP library waits for an answer (httpx: 5 s by default): a poll asked to
    be held waits that much longer than its hold (:func:`poll_read_timeout`).
    """
    backoff = _Backoff(options, rng or random.Random())  # noqa: S311 - jitter, not crypto
    origin = first.url
    started = first.at
    pending = first  # the last polling response: where to go and when
    response = first  # the last thing observed
    polls = 0
    failures = 0
    # A repoll server (it sends Operation-Status) holds polls that carry
    # Prefer: wait, so the next poll may go out at once. Any other server, or
    # one that answered a held poll quickly (it is shedding load), gets its
    # Retry-After honoured instead.
    server_holds = h.OPERATION_STATUS in first.headers

    monitor = azure_monitor(first)
    if monitor is not None and h.OPERATION_STATUS not in first.headers:
        return (yield from _azure_flow(first, monitor, options, backoff, wall_clock))

    while True:
        transient = response is not first and is_transient_failure(response)
        if (
            not transient
            and response is not first
            and response.status == 303
            and "location" in response.headers
            and not is_polling_response(response)
        ):
            # A status URL answering a plain 303 when done ("see the result
            # there"): fetch it once; that is the answer.
            target = urljoin(response.url, response.headers["location"])
            return (yield from _fetch_result(target, response, origin, options, wall_clock))
        if not transient and not is_polling_response(response):
            _report(options, response, wall_clock, None)
            return response
        if transient:
            failures = _one_more_failure(response, failures, options)
        else:
            failures = 0
            pending = response

        operation_url = urljoin(pending.url, pending.headers["location"])
        if not same_origin(operation_url, origin) and not options.allow_cross_origin:
            msg = (
                f"the server sent the operation to another origin ({operation_url}, from "
                f"{origin}); set PollOptions(allow_cross_origin=True) to follow it "
                "(credentials are never sent there)"
            )
            raise CrossOriginError(msg)

        delay, hold = _timing(
            response,
            options,
            backoff=backoff,
            wall_clock=wall_clock,
            started=started,
            operation_url=operation_url,
        )
        if options.max_polls is not None and polls >= options.max_polls:
            raise PollingTimeout(
                f"gave up after {polls} polls; resume the operation from {operation_url}",
                operation_url=operation_url,
            )
        if hold is not None and hold < 1:
            hold = 0.0  # Prefer: wait counts whole seconds; wait=0 asks for no hold
        if hold and server_holds and not transient:
            delay = 0.0

        _report(options, response, wall_clock, delay)
        if delay > 0:
            yield Sleep(delay)
        prefer = h.format_prefer(respond_async=options.respond_async, wait=hold)
        observed = yield Poll(
            operation_url,
            {h.PREFER: prefer} if prefer else {},
            # Only a server that holds polls is given longer: a stalled
            # answer from any other still times out as the caller set.
            poll_read_timeout(hold if server_holds else None, read_timeout),
        )
        if observed is None:
            msg = "the runner must send the poll's response back into the flow"
            raise ProtocolError(msg)
        polls += 1
        took = observed.at - response.at - delay
        server_holds = bool(hold) and took >= min(0.5 * (hold or 0.0), 1.0)
        response = observed


def poll_read_timeout(hold: float | None, read_timeout: float | None) -> float | None:
    """How long to wait for the answer to a poll asked to be held ``hold`` seconds.

    The caller's read timeout says how long it tolerates a silent server. A
    held poll is silent on purpose for up to its hold, so it gets the hold
    plus that tolerance: with httpx's default 5 s, a poll held 25 s times out
    after 30 s, not 5 (which would cut every held poll of a long job). None:
    no hold asked for, or no timeout to extend; the library's setting stands.
    """
    if not hold or read_timeout is None:
        return None
    return hold + read_timeout


def _one_more_failure(response: Observed, failures: int, options: PollOptions) -> int:
    """Count a transient failure; past ``max_retries``, raise it (or say what it was)."""
    failures += 1
    if failures > options.max_retries:
        if response.error is not None:
            raise response.error
        msg = f"polling {response.url} failed {failures} times in a row: last {response.status}"
        raise OperationError(msg, operation_url=response.url)
    return failures


def _fetch_result(
    target: str,
    response: Observed,
    origin: str,
    options: PollOptions,
    wall_clock: Callable[[], float],
) -> Generator[Action, Observed | None, Observed]:
    """The operation ended elsewhere: GET its result once; that is the answer."""
    if not same_origin(target, origin) and not options.allow_cross_origin:
        msg = f"the result is on another origin ({target}); set allow_cross_origin=True"
        raise CrossOriginError(msg)
    _report(options, response, wall_clock, 0.0)
    final = yield Poll(target, {})
    if final is None:
        msg = "the runner must send the poll's response back into the flow"
        raise ProtocolError(msg)
    _report(options, final, wall_clock, None)
    return final


def _azure_flow(
    first: Observed,
    monitor: str,
    options: PollOptions,
    backoff: _Backoff,
    wall_clock: Callable[[], float],
) -> Generator[Action, Observed | None, Observed]:
    """Azure-style: poll the status monitor until its ``status`` ends, then fetch the result.

    The result is ``resourceLocation`` from the monitor when given, else the
    original URL for PUT/PATCH, else the first response's ``Location``, else
    the monitor's own answer. ``Failed``/``Canceled`` answer with the monitor.
    """
    origin, started = first.url, first.at
    response, polls, failures = first, 0, 0
    while True:
        transient = response is not first and is_transient_failure(response)
        document = {} if transient else _json_body(response)
        status = str(document.get("status", "")).lower()
        if not transient and response is not first and status not in _AZURE_PENDING:
            if status != "succeeded":
                _report(options, response, wall_clock, None)
                return response  # failed, canceled, or a monitor that says nothing more
            target = document.get("resourceLocation")
            if not isinstance(target, str):
                if first.method in ("PUT", "PATCH"):
                    target = first.url
                else:
                    target = first.headers.get("location")
            if not isinstance(target, str):
                _report(options, response, wall_clock, None)
                return response
            target = urljoin(response.url, target)
            return (yield from _fetch_result(target, response, origin, options, wall_clock))
        failures = _one_more_failure(response, failures, options) if transient else 0
        if not same_origin(monitor, origin) and not options.allow_cross_origin:
            msg = (
                f"the status monitor is on another origin ({monitor}); set allow_cross_origin=True"
            )
            raise CrossOriginError(msg)
        delay, _ = _timing(
            response,
            options,
            backoff=backoff,
            wall_clock=wall_clock,
            started=started,
            operation_url=monitor,
        )
        if options.max_polls is not None and polls >= options.max_polls:
            raise PollingTimeout(
                f"gave up after {polls} polls; resume from {monitor}", operation_url=monitor
            )
        _report(options, response, wall_clock, delay)
        if delay > 0:
            yield Sleep(delay)
        observed = yield Poll(monitor, {})
        if observed is None:
            msg = "the runner must send the poll's response back into the flow"
            raise ProtocolError(msg)
        polls += 1
        response = observed


def _timing(
    response: Observed,
    options: PollOptions,
    *,
    backoff: _Backoff,
    wall_clock: Callable[[], float],
    started: float,
    operation_url: str,
) -> tuple[float, float | None]:
    """How long to wait before the next poll, and how long to ask the server to hold it."""
    asked = server_interval(response, wall_now=wall_clock())
    if asked is None or asked < options.min_interval:
        delay = backoff.next()
    else:
        backoff.reset()
        delay = asked
    delay = min(max(delay, options.min_interval), options.max_interval)
    hold = options.long_poll
    if options.deadline is not None:
        remaining = options.deadline - (response.at - started)
        if remaining <= 0:
            raise PollingTimeout(
                f"the operation did not finish within {options.deadline:g} s; "
                f"resume it from {operation_url}",
                operation_url=operation_url,
            )
        delay = min(delay, remaining)
        if hold is not None:
            hold = min(hold, remaining)
    return delay, hold


def _report(
    options: PollOptions, response: Observed, wall_clock: Callable[[], float], delay: float | None
) -> None:
    if options.on_progress is not None and response.error is None:
        options.on_progress(hop_of(response, wall_now=wall_clock(), next_poll_in=delay))
