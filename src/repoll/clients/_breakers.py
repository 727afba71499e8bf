"""The shells' side of the circuit breaker: ask before a poll, report after it.

The breaker itself (:mod:`repoll.core._breaker`) decides; this module gives
every shell the same two calls, with the monotonic clock the core does not
read. A refused poll comes back to the flow as an :class:`Observed` whose
error is a :class:`~repoll.CircuitOpenError`, which the flow raises at once.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from .._errors import CircuitOpenError
from ..core._breaker import BreakerPolicy, CircuitBreaker, is_failure
from ..core._poll import Observed
from ..core._poll_headers import origin_of

# The breakers of handles, one per client (handles are made per operation,
# the client is what their operations share).
_BY_CLIENT: weakref.WeakKeyDictionary[Any, CircuitBreaker] = weakref.WeakKeyDictionary()


def breaker_for(policy: BreakerPolicy | None) -> CircuitBreaker | None:
    return None if policy is None else CircuitBreaker(policy)


def client_breaker(client: Any, policy: BreakerPolicy | None) -> CircuitBreaker | None:
    """The breaker every handle on ``client`` shares (made with the first one's policy)."""
    if policy is None:
        return None
    breaker = _BY_CLIENT.get(client)
    if breaker is None:
        breaker = _BY_CLIENT[client] = CircuitBreaker(policy)
    return breaker


def refused(breaker: CircuitBreaker | None, url: str) -> Observed | None:
    """None: send the poll to ``url``. Otherwise what the flow gets instead of an answer."""
    if breaker is None:
        return None
    origin = origin_of(url)
    wait = breaker.allow(origin, time.monotonic())
    if wait is None:
        return None
    msg = (
        f"{origin} kept failing: polls to it are refused for {wait:.0f} s more; "
        f"resume the operation from {url}"
    )
    error = CircuitOpenError(msg, operation_url=url)
    return Observed(status=0, headers={}, url=url, at=time.monotonic(), error=error)


def report(breaker: CircuitBreaker | None, observed: Observed) -> Observed:
    """Tell the breaker how a poll went; returns ``observed``."""
    if breaker is not None:
        failed = is_failure(observed.status, error=observed.error is not None)
        breaker.record(origin_of(observed.url), failed=failed, now=time.monotonic())
    return observed
