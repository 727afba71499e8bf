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

import random
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from urllib.parse import urljoin

from .._errors import (
    CircuitOpenError,
    CrossOriginError,
    OperationCanceled,
    OperationError,
    OperationFailed,
    PollingTimeout,
    ProtocolError,
)
from . import _headers as h
from . import _monitors as monitors
from . import _poll_headers
from ._breaker import DEFAULT_BREAKER, BreakerPolicy
from ._monitors import FINAL_STATES, FinalStateVia, MonitorState
from ._poll_headers import NOT_CARRIED, carries_credentials, poll_headers, same_origin
from ._poll_timing import Backoff, Patience, server_interval, timing
from ._status import OperationStatus

__all__ = [
    "NOT_CARRIED",
    "Action",
    "Hop",
    "Observed",
    "Poll",
    "PollOptions",
    "Sleep",
    "carries_credentials",
    "first_request_headers",
    "hop_of",
    "is_polling_response",
    "may_need_body",
    "monitor_of",
    "needs_polling",
    "operation_url_of",
    "poll_flow",
    "poll_headers",
    "poll_read_timeout",
    "same_origin",
]

_TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})


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
    # Where a succeeded status monitor's result lives (azure-core's
    # final-state-via): "auto", "location", "operation-location",
    # "azure-async-operation" or "original-uri" (see core._monitors).
    final_state_via: FinalStateVia = "auto"
    # A status monitor or provisioning state that ends Failed/Canceled raises
    # OperationFailed/OperationCanceled (with .response); True returns it.
    return_failed: bool = False
    # Per origin, shared by every operation of a client: polls to an origin
    # that kept failing are refused (CircuitOpenError) for a cool-down. None:
    # no breaker. The transport's, adapter's or (for handles) the client's
    # first options set it.
    circuit_breaker: BreakerPolicy | None = DEFAULT_BREAKER
    # Header fields a poll never carries to another origin (case ignored);
    # extend the default: CREDENTIAL_FIELDS | {"x-my-token"}.
    credential_fields: frozenset[str] = h.CREDENTIAL_FIELDS

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "credential_fields", frozenset(n.lower() for n in self.credential_fields)
        )
        if self.final_state_via not in FINAL_STATES:
            msg = f"final_state_via must be one of {', '.join(FINAL_STATES)}"
            raise ValueError(msg)
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
    # The HTTP library's own response, carried untouched so that an exception
    # raised about it can hand it to the caller (OperationError.response).
    raw: object = field(default=None, compare=False, repr=False)


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
    # What never goes to another origin (PollOptions.credential_fields).
    credential_fields: frozenset[str] = h.CREDENTIAL_FIELDS


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


# Every status a first response needing polling can have (see needs_polling):
# clients ask this before anything else, so most responses cost one set lookup.
_STARTING_STATUSES = frozenset({200, 201, 202, 303})


def needs_polling(response: Observed) -> bool:
    """The first response starts something to follow: repoll, plain 202, or another convention.

    This is the only test the clients make before following a response: they
    pass every response here, untouched, and follow it when this says so.
    A PUT/PATCH answered in JSON is judged by its body too
    (:func:`~repoll.core._monitors.may_need_body` says when to read it first).
    """
    if response.status not in _STARTING_STATUSES:
        return False
    if is_polling_response(response):
        return True
    if monitors.monitor_url(response) is not None:
        # One that already says it succeeded is the answer; one that already
        # failed goes through the flow, which raises.
        return monitors.already_ended(response) is not MonitorState.SUCCEEDED
    return monitors.provisioning_pending(response)


may_need_body = monitors.may_need_body
merge_cookies = _poll_headers.merge_cookies


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
    backoff = Backoff(options, rng or random.Random())  # noqa: S311 - jitter, not crypto
    origin = first.url
    started = first.at
    response = first  # the last thing observed
    polls = 0
    failures = 0
    # A repoll server (it sends Operation-Status) holds polls that carry
    # Prefer: wait, so the next poll may go out at once. Any other server, or
    # one that answered a held poll quickly (it is shedding load), gets its
    # Retry-After honoured instead.
    server_holds = h.OPERATION_STATUS in first.headers

    monitor = monitor_of(first)
    if monitor is not None:
        provisioning = monitors.monitor_url(first) is None
        return (
            yield from _monitor_flow(
                first, monitor, options, backoff, wall_clock, provisioning=provisioning
            )
        )
    patience = Patience()
    operation_url = first.url

    while True:
        transient = response is not first and is_transient_failure(response)
        here = not transient and response is not first and _pending_here(response)
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
        if not transient and not here and not is_polling_response(response):
            _report(options, response, wall_clock, None)
            return response
        if transient:
            failures = _one_more_failure(response, failures, options)
        else:
            failures = 0
            operation_url = (
                response.url if here else urljoin(response.url, response.headers["location"])
            )
        patience.note(operation_url, response.at - started, polls)
        if not same_origin(operation_url, origin) and not options.allow_cross_origin:
            msg = (
                f"the server sent the operation to another origin ({operation_url}, from "
                f"{origin}); set PollOptions(allow_cross_origin=True) to follow it "
                "(credentials are never sent there)"
            )
            raise CrossOriginError(msg)

        delay, hold = timing(
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
            options.credential_fields,
        )
        if observed is None:
            msg = "the runner must send the poll's response back into the flow"
            raise ProtocolError(msg)
        polls += 1
        took = observed.at - response.at - delay
        server_holds = bool(hold) and took >= min(0.5 * (hold or 0.0), 1.0)
        response = observed


def operation_url_of(first: Observed) -> str:
    """Where the operation ``first`` started lives: what a handle polls and resumes from."""
    monitor = monitor_of(first)
    if monitor is not None:
        return monitor
    if "location" in first.headers:
        return urljoin(first.url, first.headers["location"])
    return first.url


def monitor_of(first: Observed) -> str | None:
    """What to poll when ``first`` follows another convention (core._monitors); else None."""
    if h.OPERATION_STATUS in first.headers:
        return None
    monitor = monitors.monitor_url(first)
    if monitor is None and not is_polling_response(first) and monitors.provisioning_pending(first):
        return first.url
    return monitor


def _pending_here(response: Observed) -> bool:
    """RFC 9110's 202 means "not finished": one without Location is polled where it came from."""
    return (
        response.status == 202
        and "location" not in response.headers
        and h.OPERATION_STATUS not in response.headers
    )


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
    if isinstance(response.error, CircuitOpenError):
        raise response.error  # the origin is known to be down: fail fast
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
    final = yield Poll(target, {}, credential_fields=options.credential_fields)
    if final is None:
        msg = "the runner must send the poll's response back into the flow"
        raise ProtocolError(msg)
    _report(options, final, wall_clock, None)
    return final


def _monitor_flow(
    first: Observed,
    monitor: str,
    options: PollOptions,
    backoff: Backoff,
    wall_clock: Callable[[], float],
    *,
    provisioning: bool,
) -> Generator[Action, Observed | None, Observed]:
    """A status monitor, or a resource being provisioned, polled until it ends (core._monitors).

    ``monitor`` is the status monitor's URL, or (``provisioning``) the
    original URL itself, for a PUT/PATCH whose resource reports
    ``properties.provisioningState``.
    """
    origin, started = first.url, first.at
    if not same_origin(monitor, origin) and not options.allow_cross_origin:
        msg = f"the status monitor is on another origin ({monitor}); set allow_cross_origin=True"
        raise CrossOriginError(msg)
    ended = monitors.already_ended(first)
    if ended is not None:
        return (yield from _monitor_end(first, first, ended, options, wall_clock, final=True))
    response, polls, failures = first, 0, 0
    patience = Patience()
    while True:
        transient = response is not first and is_transient_failure(response)
        if response is not first and not transient:
            if response.status >= 400:
                msg = f"polling {response.url} answered {response.status}"
                raise OperationError(msg, operation_url=monitor, response=response.raw)
            if provisioning:
                # A resource that no longer reports a state has been provisioned.
                state = monitors.provisioning_state(response.body) or MonitorState.SUCCEEDED
            else:
                state = monitors.monitor_state(response)
            if state is not MonitorState.PENDING:
                return (
                    yield from _monitor_end(
                        first, response, state, options, wall_clock, final=provisioning
                    )
                )
        failures = _one_more_failure(response, failures, options) if transient else 0
        patience.note(monitor, response.at - started, polls)
        delay, _ = timing(
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
        observed = yield Poll(monitor, {}, credential_fields=options.credential_fields)
        if observed is None:
            msg = "the runner must send the poll's response back into the flow"
            raise ProtocolError(msg)
        polls += 1
        response = observed


def _monitor_end(
    first: Observed,
    response: Observed,
    state: MonitorState,
    options: PollOptions,
    wall_clock: Callable[[], float],
    *,
    final: bool,
) -> Generator[Action, Observed | None, Observed]:
    """The monitor (or resource) ended: fetch the result, return it, or raise the failure."""
    if state is MonitorState.SUCCEEDED:
        target = None if final else monitors.final_target(first, response, options.final_state_via)
        if target is None:
            _report(options, response, wall_clock, None)
            return response
        return (yield from _fetch_result(target, response, first.url, options, wall_clock))
    _report(options, response, wall_clock, None)
    if options.return_failed:
        return response
    shown = response.body[:200].decode("utf-8", "replace")
    msg = f"the operation at {response.url} ended {state.value}: {shown}"
    error = OperationFailed if state is MonitorState.FAILED else OperationCanceled
    raise error(msg, operation_url=response.url, response=response.raw)


def _report(
    options: PollOptions, response: Observed, wall_clock: Callable[[], float], delay: float | None
) -> None:
    if options.on_progress is not None and response.error is None:
        options.on_progress(hop_of(response, wall_now=wall_clock(), next_poll_in=delay))
