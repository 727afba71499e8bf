"""When the client polls next: the server's interval, backoff, the deadline; no I/O, no clock.

Part of the poll flow (:mod:`repoll.core._poll`), apart so that each module
keeps one concern: this one reads intervals and keeps time's budget.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._errors import PollingTimeout
from . import _headers as h

if TYPE_CHECKING:
    from ._poll import Observed, PollOptions

logger = logging.getLogger("repoll")


def server_interval(response: Observed, *, wall_now: float) -> float | None:
    """The interval the server asked for: Retry-After-Ms first, then Retry-After."""
    precise = h.parse_retry_after_ms(response.headers.get(h.RETRY_AFTER_MS))
    if precise is not None:
        return precise
    return h.parse_retry_after(response.headers.get(h.RETRY_AFTER), now=wall_now)


class Backoff:
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


class Patience:
    """Logs, at 1, 2, 4, 8... minutes, that an operation is still being polled.

    With the default options nothing ends polling but the operation itself;
    an operation that never ends should at least be seen doing so.
    """

    def __init__(self) -> None:
        self._next = 60.0

    def note(self, url: str, elapsed: float, polls: int) -> None:
        if elapsed >= self._next:
            logger.info("still polling %s after %.0f s (%d polls)", url, elapsed, polls)
            while self._next <= elapsed:
                self._next *= 2


def timing(
    response: Observed,
    options: PollOptions,
    *,
    backoff: Backoff,
    wall_clock: Callable[[], float],
    started: float,
    operation_url: str,
) -> tuple[float, float | None]:
    """How long to wait before the next poll, and how long to ask the server to hold it."""
    asked = server_interval(response, wall_now=wall_clock())
    # "Now" (Retry-After: 0) for ever must not become a tight loop, even with
    # min_interval=0: it backs off like no interval at all.
    if asked is None or asked <= 0 or asked < options.min_interval:
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
