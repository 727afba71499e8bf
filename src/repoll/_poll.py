"""The client's poll loop, written once, with no I/O and no clock.

Theory of operation
-------------------
:func:`poll_flow` is a generator, in the manner of httpx's ``Auth.auth_flow``.
It is started with the first response (the answer to the caller's own
request) and yields *actions*:

* :class:`Sleep` -- the runner waits that many seconds and sends back ``None``;
* :class:`Poll` -- the runner sends that GET and sends back the response as
  an :class:`Observed`.

When the flow returns, its value is the final :class:`Observed` response: the
one to hand to the caller as the answer to the original request. Errors
(deadline, poll budget, protocol breaks) are raised from the generator.

Runners (sync and async, httpx and requests) only translate: they never
decide. Time enters through ``Observed.at``, which the runner stamps with a
monotonic clock reading, so the flow is deterministic under test.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from urllib.parse import urljoin

from . import _headers as h
from ._errors import PollingTimeout, ProtocolError
from ._status import OperationStatus


@dataclass(frozen=True, slots=True)
class PollOptions:
    """How the client polls. Every field has a safe default."""

    deadline: float | None = None  # overall seconds for the whole operation; None: no limit
    min_interval: float = 0.05  # never poll sooner than this, whatever the server says
    max_interval: float = 60.0  # never wait longer than this between polls
    long_poll: float | None = 30.0  # ask the server to hold each poll this long (Prefer: wait)
    max_polls: int | None = None  # give up after this many polls; None: no limit
    respond_async: bool = True  # ask for 202 rather than 303 (Prefer: respond-async)
    backoff_initial: float = 0.5  # when the server names no interval
    backoff_factor: float = 1.5
    backoff_max: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_interval <= self.max_interval:
            msg = "need 0 <= min_interval <= max_interval"
            raise ValueError(msg)
        if self.deadline is not None and self.deadline <= 0:
            msg = "deadline must be positive"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class Observed:
    """A response as the flow sees it."""

    status: int
    headers: Mapping[str, str]  # lower-case names
    url: str
    at: float  # monotonic seconds when it arrived
    body: bytes = b""
    method: str = "GET"


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Poll:
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hop:
    """One step of an operation, as progress callbacks and the demo see it."""

    method: str
    url: str
    status: int
    operation_status: str | None
    retry_after: float | None
    progress: float | None
    message: str | None


Action = Sleep | Poll


def is_polling_response(response: Observed) -> bool:
    """True if ``response`` says "not done yet, come back to Location"."""
    if response.status not in (202, 303) or "location" not in response.headers:
        return False
    headers = response.headers
    if h.OPERATION_STATUS in headers:
        return not _is_terminal(headers[h.OPERATION_STATUS])
    return h.RETRY_AFTER in headers or h.RETRY_AFTER_MS in headers


def _is_terminal(value: str) -> bool:
    try:
        return OperationStatus(value.strip().lower()).is_terminal
    except ValueError:
        return False


def server_interval(response: Observed, *, wall_now: float) -> float | None:
    """The interval the server asked for: Retry-After-Ms first, then Retry-After."""
    precise = h.parse_retry_after_ms(response.headers.get(h.RETRY_AFTER_MS))
    if precise is not None:
        return precise
    return h.parse_retry_after(response.headers.get(h.RETRY_AFTER), now=wall_now)


def hop_of(response: Observed, *, wall_now: float) -> Hop:
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
    on_hop: Callable[[Hop], None] | None = None,
) -> Generator[Action, Observed | None, Observed]:
    """Follow a polling response to its final response (see the module docstring).

    ``wall_clock`` gives Unix time, used only to read HTTP-date Retry-After
    values. ``rng`` drives the backoff jitter when the server names no interval.
    """
    rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
    started = first.at
    response = first
    polls = 0
    backoff = options.backoff_initial
    # A repoll server (it sends Operation-Status) holds polls that carry
    # Prefer: wait, so the next poll may go out at once. Any other server, or
    # one that answered a held poll quickly (it is shedding load), gets its
    # Retry-After honoured instead.
    server_holds = h.OPERATION_STATUS in first.headers
    while True:
        if on_hop is not None:
            on_hop(hop_of(response, wall_now=wall_clock()))
        if not is_polling_response(response):
            return response
        operation_url = urljoin(response.url, response.headers["location"])
        asked = server_interval(response, wall_now=wall_clock())
        if asked is None:
            delay = rng.uniform(0, backoff)  # full jitter
            backoff = min(backoff * options.backoff_factor, options.backoff_max)
        else:
            delay = asked
        delay = min(max(delay, options.min_interval), options.max_interval)
        hold = options.long_poll
        if options.deadline is not None:
            remaining = options.deadline - (response.at - started)
            if remaining <= 0:
                raise PollingTimeout(
                    f"the operation did not finish within {options.deadline} s; "
                    f"resume it from {operation_url}",
                    operation_url=operation_url,
                )
            delay = min(delay, remaining)
            if hold is not None:
                hold = min(hold, remaining)
        if options.max_polls is not None and polls >= options.max_polls:
            raise PollingTimeout(
                f"gave up after {polls} polls; resume the operation from {operation_url}",
                operation_url=operation_url,
            )
        if hold is not None and hold < 1:
            hold = None  # Prefer: wait counts whole seconds; wait=0 would not hold
        if hold is not None and server_holds:
            delay = 0.0
        if delay > 0:
            yield Sleep(delay)
        prefer = h.format_prefer(respond_async=options.respond_async, wait=hold)
        observed = yield Poll(operation_url, {h.PREFER: prefer} if prefer else {})
        if observed is None:
            msg = "the runner must send the poll's response back into the flow"
            raise ProtocolError(msg)
        polls += 1
        took = observed.at - response.at - delay
        server_holds = hold is not None and took >= min(0.5 * hold, 1.0)
        response = observed
