"""The SQLite store's watcher: other processes' events, handed to this process's loops.

Each process that shares a SQLite file learns what the others did from the
``repoll_events`` table, which the transaction ending an operation appends
to. The watcher asks ``PRAGMA data_version`` every ``interval`` (it changes
only when another connection has committed) and reads the new rows only
then.

It runs on the event loop of the first subscriber, as a timer: a question
to SQLite about shared memory costs a few microseconds there, and its
connection never waits for a lock (``busy_timeout`` 0: a read that would
wait fails, and is tried again later). A thread did this before, and each of
its twenty wake-ups a second took the GIL from a busy loop several times:
measured, 2 to 4 % of the throughput of every request of the process, even
of those that never touch the store. Subscribers on other loops get their
events through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable

from ._resubscribe import deliver

logger = logging.getLogger("repoll")

# After failures, polls come less often, up to this pause.
_WATCH_MAX_PAUSE = 2.0


_Subscriber = tuple[Callable[[str, str], None], asyncio.AbstractEventLoop]


class Watcher:
    """A timer on an event loop that hands other instances' events to the subscribers."""

    def __init__(self, path: str, timeout: float, origin: str, interval: float) -> None:
        self._path = path
        self._timeout = timeout
        self._origin = origin
        self._interval = interval
        self._subscribers: tuple[_Subscriber, ...] = ()
        self._connection: sqlite3.Connection | None = None
        self._version: int | None = None
        self._last_seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._failures = 0
        self._stopped = False

    def add(self, subscriber: _Subscriber) -> None:
        self._subscribers = (*self._subscribers, subscriber)

    def start(self) -> None:
        """Blocks (run it in a thread): connects, and starts after the newest event (no replay)."""
        connection = self._connect(self._timeout)
        try:
            # data_version first: an event committed in between is then seen
            # as a change and read (once) on the first poll.
            self._version = connection.execute("PRAGMA data_version").fetchone()[0]
            # The last number ever given, even if swept since: the next
            # event follows it without a gap.
            self._last_seq = connection.execute(
                "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'repoll_events'"
            ).fetchone()[0]
            connection.execute("PRAGMA busy_timeout = 0")  # from now on, on the loop
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    def run_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Poll on ``loop`` from now on (call it on that loop, after :meth:`start`)."""
        self._loop = loop
        self._timer = loop.call_later(self._interval, self._tick)

    def stop(self) -> None:
        """Stop polling and close the connection (on the loop it runs on)."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._disconnect()

    def _connect(self, timeout: float) -> sqlite3.Connection:
        return sqlite3.connect(
            self._path, timeout=timeout, isolation_level=None, check_same_thread=False
        )

    def _tick(self) -> None:
        if self._stopped or self._loop is None:
            return
        pause = self._interval
        try:
            batch = self._poll(force=self._failures > 0)
        except Exception as exc:  # whatever it is, the subscription lasts
            if self._failures == 0:
                logger.warning("SQLite store %s: event watcher failed: %s", self._path, exc)
            self._failures += 1
            self._disconnect()
            pause = min(self._interval * 2 ** min(self._failures, 8), _WATCH_MAX_PAUSE)
        else:
            if self._failures:
                # Nothing is lost from the table in a short outage, but
                # whatever was swept meanwhile is: subscribers re-read.
                logger.info("SQLite store %s: event watcher recovered", self._path)
                if ("resync", "") not in batch:
                    batch.append(("resync", ""))
                self._failures = 0
            if batch:
                self._deliver(batch)
        if not self._stopped:
            self._timer = self._loop.call_later(pause, self._tick)

    def _poll(self, *, force: bool) -> list[tuple[str, str]]:
        if self._connection is None:
            self._connection = self._connect(0)  # never waits: on the loop
            force = True
        connection = self._connection
        version = connection.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version and not force:
            return []
        # This store's own events move data_version too (its writer has
        # another connection): they are skipped in SQL, not fetched.
        first, last = connection.execute(
            "SELECT min(seq), max(seq) FROM repoll_events WHERE seq > ?", (self._last_seq,)
        ).fetchone()
        self._version = version
        if first is None:
            return []
        rows = connection.execute(
            "SELECT kind, operation_id FROM repoll_events "
            "WHERE seq > ? AND seq <= ? AND origin != ? ORDER BY seq",
            (self._last_seq, last, self._origin),
        ).fetchall()
        # Sequence numbers have no gaps but those left by sweeping: events
        # this watcher never read (a process stopped or starved for a minute).
        missed = first > self._last_seq + 1
        self._last_seq = last
        batch: list[tuple[str, str]] = [(kind, op_id) for kind, op_id in rows]
        return [*batch, ("resync", "")] if missed else batch

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _deliver(self, batch: list[tuple[str, str]]) -> None:
        for on_event, loop in self._subscribers:
            if loop is self._loop:
                _dispatch(on_event, batch)
                continue
            try:
                loop.call_soon_threadsafe(_dispatch, on_event, batch)
            except RuntimeError:  # that loop is closed: nobody left to tell
                continue


def _dispatch(on_event: Callable[[str, str], None], batch: list[tuple[str, str]]) -> None:
    for kind, op_id in batch:
        deliver(on_event, kind, op_id)
