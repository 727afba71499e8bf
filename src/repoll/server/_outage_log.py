"""Logging a store outage once, not once per request.

While the store is down, every start, poll, heartbeat and outcome fails the
same way; a traceback for each would flood the log (and, on a blocked
stderr, stall the process). The first failure is logged with its traceback,
repeats are counted and summarised at most every ``every`` seconds, and the
store answering again is logged once with how long it was away.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("repoll")


class OutageLog:
    def __init__(self, every: float = 30.0) -> None:
        self._every = every
        self._since: float | None = None
        self._failures = 0
        self._last_summary = 0.0

    def failed(self, where: str, exc: BaseException) -> None:
        """Note a failure to reach the store, during ``where`` (``"maintenance"``...)."""
        now = time.monotonic()
        self._failures += 1
        if self._since is None:
            self._since = self._last_summary = now
            logger.warning("store unavailable (%s): %s", where, exc, exc_info=exc)
        elif now - self._last_summary >= self._every:
            self._last_summary = now
            logger.warning(
                "store still unavailable after %.0f s (%d failures so far; latest: %s: %s)",
                now - self._since,
                self._failures,
                where,
                exc,
            )

    def answered(self) -> None:
        """Note that the store answered: the end of an outage, if there was one."""
        if self._since is not None:
            logger.warning(
                "store available again after %.1f s (%d failures)",
                time.monotonic() - self._since,
                self._failures,
            )
            self._since = None
            self._failures = 0
