"""The SQLite store's watcher: other processes' events, handed to this process's loops.

Each process that shares a SQLite file learns what the others did from the
``repoll_events`` table, which the transaction ending an operation appends
to. A watcher is one thread with its own connection: every ``interval`` it
asks ``PRAGMA data_version`` (a few system calls; it changes only when
another connection has committed) and reads the new rows only then, so an
idle process costs no event-loop wake-ups.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable

from ._resubscribe import deliver

logger = logging.getLogger("repoll")

# A watcher waits on a busy database no longer than this, so close() stays
# prompt; it simply tries again on its next poll.
_WATCH_TIMEOUT = 1.0
_WATCH_MAX_PAUSE = 2.0


_Subscriber = tuple[Callable[[str, str], None], asyncio.AbstractEventLoop]


class Watcher:
    """A thread that hands other instances' events to the subscribers' event loops."""

    def __init__(self, path: str, timeout: float, origin: str, interval: float) -> None:
        self._path = path
        self._timeout = min(timeout, _WATCH_TIMEOUT)
        self._origin = origin
        self._interval = interval
        # Replaced, never mutated: the thread reads it without a lock.
        self._subscribers: tuple[_Subscriber, ...] = ()
        # Held until stop(): waiting on it is a timed sleep that stop() cuts
        # short, for about two thirds of the CPU of an Event's wait.
        self._stop = threading.Lock()
        self._stop.acquire()
        self._connection: sqlite3.Connection | None = None
        self._version: int | None = None
        self._last_seq = 0
        self._thread: threading.Thread | None = None

    def add(self, subscriber: _Subscriber) -> None:
        self._subscribers = (*self._subscribers, subscriber)

    def start(self) -> None:
        """Blocks: connects, and starts after the newest event (no replay)."""
        connection = self._connect()
        try:
            # data_version first: an event committed in between is then seen
            # as a change and read (once) on the first poll.
            self._version = connection.execute("PRAGMA data_version").fetchone()[0]
            # The last number ever given, even if swept since: the next
            # event follows it without a gap.
            self._last_seq = connection.execute(
                "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'repoll_events'"
            ).fetchone()[0]
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        self._thread = threading.Thread(target=self._run, name="repoll-sqlite-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.release()
        if self._thread is not None:
            self._thread.join()

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(
            self._path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )

    def _run(self) -> None:
        failures = 0
        pause = self._interval
        try:
            while not self._stop.acquire(timeout=pause):
                try:
                    batch = self._poll(force=failures > 0)
                except Exception as exc:  # whatever it is, the subscription lasts
                    if failures == 0:
                        logger.warning("SQLite store %s: event watcher failed: %s", self._path, exc)
                    failures += 1
                    self._disconnect()
                    pause = min(self._interval * 2 ** min(failures, 8), _WATCH_MAX_PAUSE)
                    continue
                if failures:
                    # Nothing is lost from the table in a short outage, but
                    # whatever was swept meanwhile is: subscribers re-read.
                    logger.info("SQLite store %s: event watcher recovered", self._path)
                    if ("resync", "") not in batch:
                        batch.append(("resync", ""))
                    failures, pause = 0, self._interval
                if batch:
                    self._deliver(batch)
        finally:
            self._disconnect()

    def _poll(self, *, force: bool) -> list[tuple[str, str]]:
        if self._connection is None:
            self._connection = self._connect()
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
            try:
                loop.call_soon_threadsafe(_dispatch, on_event, batch)
            except RuntimeError:  # that loop is closed: nobody left to tell
                continue


def _dispatch(on_event: Callable[[str, str], None], batch: list[tuple[str, str]]) -> None:
    for kind, op_id in batch:
        deliver(on_event, kind, op_id)
