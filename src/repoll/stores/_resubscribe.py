"""A store subscription that outlives its connections: the loop both shared stores run.

A backend's subscription connection can drop at any time (a restart, a
killed connection, a network cut) or go silent (a half-open link). The store
gives this loop three things: how to open a subscribed connection
(``listen``), how to deliver events from one until it fails or stops
answering (``pump``), and how to close one. The loop does the rest: it
reconnects with growing pauses, and after each reconnection tells the
subscriber ``resync``, since whatever was published in between is lost.
It runs until cancelled (the store's ``close()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

logger = logging.getLogger("repoll")

C = TypeVar("C")
OnEvent = Callable[[str, str], None]

# Pauses between attempts: short at first, so that a killed connection costs
# almost nothing, and capped, so that the subscription comes back within a
# couple of seconds of the backend.
FIRST_PAUSE = 0.05
MAX_PAUSE = 2.0
# A connection that held this long was a recovery, not a flap: the pauses
# start short again. (A backend that accepts and then drops every connection
# would otherwise be hammered 20 times a second.)
STEADY = 10.0


def deliver(on_event: OnEvent, kind: str, operation_id: str) -> None:
    """Call the subscriber; its bug must not end the subscription."""
    try:
        on_event(kind, operation_id)
    except Exception:
        logger.exception("store event handler failed on %s %r", kind, operation_id)


class Resubscriber(Generic[C]):
    """Keeps one subscription alive on connections of type ``C``."""

    def __init__(
        self,
        *,
        where: str,
        listen: Callable[[], Awaitable[C]],
        pump: Callable[[C], Awaitable[None]],
        close: Callable[[C], Awaitable[None]],
        drops: tuple[type[BaseException], ...],
        on_event: OnEvent,
    ) -> None:
        self._where = where
        self._listen = listen
        self._pump = pump
        self._close = close
        self._drops = drops
        self._on_event = on_event

    async def run(self, connection: C) -> None:
        """Deliver events from ``connection`` and its successors, until cancelled."""
        loop = asyncio.get_running_loop()
        pause = FIRST_PAUSE
        while True:
            began = loop.time()
            try:
                await self._pump(connection)
            except self._drops as exc:
                logger.warning("%s: subscription lost (%s); reconnecting", self._where, exc)
            except Exception:
                logger.exception("%s: subscription failed; reconnecting", self._where)
            finally:
                with contextlib.suppress(*self._drops):
                    await self._close(connection)
            if loop.time() - began >= STEADY:
                pause = FIRST_PAUSE
            connection, pause = await self._reconnect(pause)
            deliver(self._on_event, "resync", "")

    async def _reconnect(self, pause: float) -> tuple[C, float]:
        loop = asyncio.get_running_loop()
        lost = loop.time()
        attempts = 0
        while True:
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)
            attempts += 1
            try:
                connection = await self._listen()
            except self._drops as exc:
                logger.debug("%s: subscribing failed: %s", self._where, exc)
                continue
            logger.warning(
                "%s: subscribed again after %.1f s (%d attempts); resyncing",
                self._where,
                loop.time() - lost,
                attempts,
            )
            return connection, pause
