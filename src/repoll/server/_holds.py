"""Held requests: waiting, bounded, for an operation to end.

A held poll (or a waiting start, a waiting cancellation, an event stream's
next turn) registers a future for its operation, reads the record, and waits
for whichever comes first: the operation ending in this process (the
finishing side resolves every waiter with the terminal record, so a thousand
waiters cost no store reads), another process's ``finished`` event (waiters
then re-read), the hold running out, or the client leaving.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .. import _telemetry as telemetry
from ..core._admission import Admission
from ..core._model import Operation
from ..stores._store import Store
from ._scope import Receive, until_disconnect


class Notifier:
    """Wakes held polls the moment their operation ends (in this process).

    Each held poll is one future; the finishing side resolves them with the
    terminal record, so a thousand waiters cost no store reads when they wake.
    """

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[Operation | None]]] = {}

    def add(self, operation_id: str, waiter: asyncio.Future[Operation | None]) -> None:
        self._waiters.setdefault(operation_id, set()).add(waiter)

    def discard(self, operation_id: str, waiter: asyncio.Future[Operation | None]) -> None:
        waiters = self._waiters.get(operation_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[operation_id]

    def notify(self, operation_id: str, operation: Operation | None) -> None:
        for waiter in self._waiters.pop(operation_id, ()):
            if not waiter.done():
                waiter.set_result(operation)

    def watched(self) -> list[str]:
        return list(self._waiters)


def _time_out(waiter: asyncio.Future[Operation | None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Holds:
    """Every hold of one server process, counted against ``max_held_polls``."""

    def __init__(self, store: Store, admission: Admission) -> None:
        self.store = store
        self.admission = admission
        self.notifier = Notifier()

    async def hold(
        self,
        operation_id: str,
        seconds: float,
        *,
        receive: Receive | None = None,
        gone: asyncio.Future[Any] | None = None,
        counted: bool = True,
    ) -> Operation | None:
        """Wait until the operation ends or ``seconds`` pass; return a fresh record.

        At ``max_held_polls`` the server sheds: it answers at once, and the
        load stretches the Retry-After it advertises. A client that leaves
        ends its hold at once (the work goes on): ``receive`` is its ASGI
        channel, watched only while the hold lasts, or ``gone`` a future that
        a caller watching it already has. ``counted=False`` for a caller that
        already holds a place.
        """
        if seconds <= 0:
            counted = False
        elif counted and not self.admission.try_hold():
            seconds, counted = 0.0, False
            telemetry.shed()
        noted = counted and telemetry.held(1)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Operation | None] = loop.create_future()
        self.notifier.add(operation_id, waiter)
        watcher: asyncio.Task[None] | None = None
        try:
            # Read after listening, so a finish in between cannot be missed.
            op = await self.store.get(operation_id)
            if op is None or op.status.is_terminal or seconds <= 0:
                return op
            if receive is not None:
                watcher = loop.create_task(until_disconnect(receive))
                gone = watcher
            if gone is not None and gone.done():
                return op
            timer = loop.call_later(seconds, _time_out, waiter)

            def leave(_: object) -> None:
                _time_out(waiter)

            if gone is not None:
                gone.add_done_callback(leave)
            try:
                finished = await waiter
            finally:
                timer.cancel()
                if gone is not None:
                    gone.remove_done_callback(leave)
        finally:
            self.notifier.discard(operation_id, waiter)
            if counted:
                self.admission.release_hold()
            if noted:
                telemetry.held(-1)
            if watcher is not None:
                watcher.cancel()
        return finished if finished is not None else await self.store.get(operation_id)
