"""What deferred work talks to, wherever it runs: one handle, one reading of how it ended.

Deferred work runs in the server's process (``server/_deferral``) or on a
Celery worker (``executors/_celery_worker``). Its code is the same in both
places, so what it sees of its operation must be too: the cancel flag,
:meth:`WorkHandle.raise_if_canceled` (with the operation URL, so the
exception says which operation), and progress reports that may come from the
event loop or from a sync handler's thread. Both places use
:class:`WorkHandle`; they differ only in how a progress report reaches
the store (the server goes through its engine, which keeps its copy of the
record; a worker writes the store directly), which each supplies by
overriding :meth:`WorkHandle._store_progress`. A subclass rather than a
callback: a bound method kept on the handle would reference the handle,
and every start would leave a reference cycle for the garbage collector.

Progress is coalesced: at most one store write is in flight per operation,
and a report made meanwhile replaces the one waiting, so work that reports
in a tight loop costs a few writes, not one per report, and the newest
report always lands.

How work ended is decided in the core (``_replies.interrupted_outcome``),
which knows nothing of asyncio; :func:`outcome_of_raised` here is the
shell's half, translating what the work raised into the core's
:class:`~repoll.core._status.Ending`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from .._errors import OperationCanceled
from ..core import _replies as replies
from ..core._model import Operation, StoredResponse, clamp_progress
from ..core._status import Ending, Event

logger = logging.getLogger("repoll")


class WorkHandle:
    """The operation some work belongs to, as the work sees it.

    Must be made on the event loop that runs the work. Its methods are safe
    to call from that loop and from any thread.
    """

    def __init__(
        self, operation: Operation, url: str | None, task: asyncio.Task[Any] | None
    ) -> None:
        self.id = operation.id
        self.url = url
        self.record = operation  # the latest version this process wrote or read
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        # A plain flag: set on the loop, read from any thread (a bool is atomic).
        self._cancel = False
        self._in_thread = False  # the work is in a thread: cancelling its task cannot stop it
        self.work_done = False
        self._task = task  # the task to cancel on request, if the work is async
        self._pending: tuple[float | None, str | None] | None = None
        self._flushing = False

    @property
    def cancel_requested(self) -> bool:
        """True once a client asked to cancel; sync work should check and stop."""
        return self._cancel

    def raise_if_canceled(self) -> None:
        """Raise :class:`~repoll.OperationCanceled` if cancellation was requested."""
        if self._cancel:
            msg = "cancellation was requested"
            raise OperationCanceled(msg, operation_url=self.url)

    def report_progress(self, progress: float | None = None, message: str | None = None) -> None:
        """Record how far the work is (0..1) and a short message, for status polls."""
        self._pending = (clamp_progress(progress), message)
        if threading.get_ident() == self._loop_thread:
            self._schedule_flush()
        else:
            self._loop.call_soon_threadsafe(self._schedule_flush)

    def _schedule_flush(self) -> None:
        # Coalesce: at most one store write in flight; the newest report wins.
        if not self._flushing and self._pending is not None:
            self._flushing = True
            self._loop.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending is not None:
                progress, message = self._pending
                self._pending = None
                await self._store_progress(progress, message)
        except Exception as exc:
            # Progress is advisory: a store that cannot take it now loses this
            # report, not the work. The next report tries again.
            logger.warning("operation %s: progress not stored (%s)", self.id, exc)
        finally:
            self._flushing = False

    async def _store_progress(self, progress: float | None, message: str | None) -> None:
        """Write one progress report to the store (each place has its own way)."""
        raise NotImplementedError

    def request_cancel(self) -> None:
        """Ask the work to stop: set the flag, and cancel async work at its next await."""
        self._cancel = True
        if threading.get_ident() == self._loop_thread:
            self._interrupt()
        else:
            self._loop.call_soon_threadsafe(self._interrupt)

    def _interrupt(self) -> None:
        # Sync work in a thread cannot be interrupted and must check
        # ``cancel_requested``. Work that has already ended is left to record
        # its own outcome.
        task = self._task
        if self._in_thread or self.work_done or task is None:
            return
        if task.get_loop() is self._loop:
            task.cancel()
        else:  # async work on another thread's loop (a sync framework's async view)
            task.get_loop().call_soon_threadsafe(task.cancel)


def ending_of(raised: BaseException | None) -> Ending:
    """What the work raised, in the core's terms."""
    if raised is None:
        return Ending.NO_RESPONSE
    if isinstance(raised, asyncio.CancelledError):
        return Ending.CANCELLED
    if isinstance(raised, OperationCanceled):
        return Ending.STOPPED
    return Ending.RAISED


def outcome_of_raised(
    raised: BaseException | None, *, cancel_requested: bool
) -> tuple[Event, StoredResponse, str]:
    """How work that produced no response ends: the core's decision, for what it raised."""
    return replies.interrupted_outcome(
        ending_of(raised), cancel_requested=cancel_requested, raised=raised
    )
