"""The SQLite store's writers: a thread that owns a connection, and the event loop itself.

sqlite3 calls block. A thread that owns its own connection runs them off the
event loop, batching whatever queued meanwhile into one transaction
(:class:`ThreadWriter`). Under load, though, handing every write to a thread
and its answer back costs more than the write: the two threads contend for
the GIL, and the loop is woken once per batch.

So writes that touch a few recent rows (creating an operation, a
compare-and-set, an event) run on the event loop instead, batched per turn
of the loop (:class:`LoopWriter`): whatever the loop's callbacks wrote in one
turn commits in one transaction, with no thread hop. In WAL mode with
``synchronous=NORMAL`` a commit appends to the WAL in the page cache and
never waits for the disk, and the loop's connection never waits for a lock:

* when another process (or this store's thread, checkpointing) holds
  SQLite's write lock, ``BEGIN IMMEDIATE`` fails at once; the batch stays
  queued and the loop tries again a moment later (1 ms, doubling to 20 ms),
  with whatever queued meanwhile behind it, in order. Handing such a batch
  to the thread instead made the thread's transaction the next one the loop
  found in its way: under load a tenth of all writes ended up crossing
  threads. Only a lock held for the whole busy timeout sends the queue to
  the thread, which waits out its own timeout and fails as any write would;
* a commit that took longer than ``slow`` (a disk under pressure) sends
  every write to the thread for ``cooldown`` seconds. Only the commit is
  timed: the jobs before it are Python, which a garbage collection pass can
  stretch, and no reason to leave the loop;
* writes in flight at the same time may commit in either order: each caller
  awaits its own write before the next one that depends on it (an operation
  is created before it is updated), so no two pending writes depend on each
  other, and each update checks the version it replaces;
* the loop's connection never checkpoints the WAL (that would wait for the
  disk): the thread does, every ``checkpoint_every`` loop commits, as the
  thread's own connection does every 1,000 pages it writes.

Reads, the purge and whatever comes from another event loop go to the thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")
logger = logging.getLogger("repoll")

_BUSY = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (primary codes)


_Job = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]
_BATCH = 256
# A batch that finds the write lock taken is tried again after these pauses.
_FIRST_RETRY = 0.001
_LAST_RETRY = 0.02
# Signals on the writer thread's queue, besides jobs: stop (None), checkpoint
# between two batches, and "nothing more queued for now".
_CHECKPOINT = object()
_MORE = object()


def _prepare(connection: sqlite3.Connection, timeout: float, schema: str) -> None:
    """WAL mode and the schema, safe when several processes start on a new file at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            # Switching to WAL takes an exclusive lock and may answer "locked"
            # without waiting on the busy timeout; once set, it stays in the file.
            if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
            try:
                connection.executescript(f"BEGIN IMMEDIATE; {schema} COMMIT;")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode & 0xFF in _BUSY
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.01 + secrets.randbelow(40) / 1000)
        else:
            return


class ThreadWriter:
    """One thread that owns the connection and runs jobs in batches.

    Whatever queued up while the last batch ran goes into one transaction and
    is answered with one wake-up of the event loop: under load, a hundred
    writes cost one commit instead of a hundred.
    """

    def __init__(self, path: str, timeout: float, schema: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | object | None] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._serve, args=(path, timeout, schema), name="repoll-sqlite", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, future, loop))
        return future

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def _serve(self, path: str, timeout: float, schema: str) -> None:
        try:
            connection = sqlite3.connect(
                path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            try:
                connection.execute("PRAGMA synchronous=NORMAL")
                _prepare(connection, timeout, schema)
            except BaseException:
                connection.close()
                raise
        except BaseException as exc:  # reported to the opener
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                batch: list[_Job] = []
                signal: object = self._jobs.get()
                while isinstance(signal, tuple):
                    batch.append(cast("_Job", signal))
                    if len(batch) >= _BATCH:
                        signal = _MORE
                        break
                    try:
                        signal = self._jobs.get_nowait()
                    except queue.Empty:
                        signal = _MORE
                if batch:
                    self._run_batch(connection, batch)
                if signal is _CHECKPOINT:
                    # Outside any transaction, as a checkpoint must be. RESTART,
                    # not PASSIVE: under a steady stream of writes a passive
                    # checkpoint never catches up, and the WAL never starts over.
                    # Writers wait meanwhile (the loop's hand their batches here).
                    try:
                        connection.execute("PRAGMA wal_checkpoint(RESTART)")
                    except sqlite3.Error as exc:
                        logger.warning("SQLite store: checkpoint failed: %s", exc)
                elif signal is None:
                    return
        finally:
            connection.close()

    def checkpoint(self) -> None:
        """Copy the WAL into the database between two batches, and start it over."""
        self._jobs.put(_CHECKPOINT)

    @staticmethod
    def _run_batch(connection: sqlite3.Connection, batch: list[_Job]) -> None:
        results: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            connection.execute("BEGIN IMMEDIATE")
            for job in batch:
                try:
                    results.append((job, job[0](connection), None))
                except Exception as exc:
                    results.append((job, None, exc))
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            results = [(job, None, exc) for job in batch]
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Any, BaseException | None]]] = {}
        for result in results:
            by_loop.setdefault(result[0][2], []).append(result)
        for loop, answers in by_loop.items():
            if not loop.is_closed():
                loop.call_soon_threadsafe(_answer, answers)


def _answer(answers: list[tuple[_Job, Any, BaseException | None]]) -> None:
    for (_, future, _), value, error in answers:
        _resolve(future, value, error)


def _resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # its awaiter was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class LoopWriter:
    """Runs write jobs on the event loop, one transaction per turn (see the module docstring)."""

    def __init__(
        self,
        path: str,
        thread: ThreadWriter,
        *,
        timeout: float = 5.0,
        slow: float = 0.05,
        cooldown: float = 30.0,
        checkpoint_every: int = 500,
    ) -> None:
        # timeout=0: never wait for SQLite's lock on the loop; try again later.
        self._connection = sqlite3.connect(
            path, timeout=0, isolation_level=None, check_same_thread=False
        )
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.execute("PRAGMA wal_autocheckpoint=0")
        self._thread = thread
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._slow = slow
        self._cooldown = cooldown
        self._checkpoint_every = checkpoint_every
        self._batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._scheduled = False
        # Until then, writes go to the thread: the last commit took too long.
        self._slow_until = 0.0
        # Since when the lock has been taken, and the pause before the next try.
        self._busy_since: float | None = None
        self._retry_pause = _FIRST_RETRY
        self._next_try = 0.0
        self._commits = 0
        self.busy_retries = 0  # batches put back because the lock was taken

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            return self._thread.submit(fn)  # its own loop: no order to keep with ours
        # Even when writing from the thread (slow), through the queue: handed
        # over in order behind what is queued already.
        future: asyncio.Future[T] = loop.create_future()
        self._batch.append((fn, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def on_loop(self) -> bool:
        """True if a write submitted now is queued on this writer's loop (whatever then runs it)."""
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _hand_over_batch(
        self, batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]]
    ) -> None:
        for fn, future in batch:
            inner = self._thread.submit(fn)
            inner.add_done_callback(functools.partial(_relay, outer=future))

    def _flush(self) -> None:
        # At most _BATCH jobs per turn, like the thread: a burst (ten thousand
        # operations ending at once) is written in slices, with the loop
        # answering in between, not in one long block.
        self._scheduled = False
        wait = self._next_try - time.monotonic()
        if wait > 0:  # the lock was taken a moment ago: not yet
            self._scheduled = True
            self._loop.call_later(wait, self._flush)
            return
        batch, self._batch = self._batch[:_BATCH], self._batch[_BATCH:]
        if self._batch:
            self._scheduled = True
            self._loop.call_soon(self._flush)
        if not batch:
            return
        if time.monotonic() < self._slow_until:
            self._hand_over_batch(batch)
            return
        connection = self._connection
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # another writer holds the lock
            self._wait_for_lock(batch)
            return
        self._busy_since = None
        self._retry_pause = _FIRST_RETRY
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        for fn, future in batch:
            try:
                results.append((future, fn(connection), None))
            except Exception as exc:
                results.append((future, None, exc))
        started = time.perf_counter()
        try:
            connection.execute("COMMIT")
        except sqlite3.Error:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            self._hand_over_batch(batch)  # nothing of it stayed: the thread runs it again
            return
        took = time.perf_counter() - started
        if took > self._slow:
            self._slow_until = time.monotonic() + self._cooldown
            logger.warning(
                "SQLite store: a commit on the event loop took %.0f ms; "
                "writing from its thread for %.0f s",
                took * 1000,
                self._cooldown,
            )
        self._commits += 1
        if self._commits % self._checkpoint_every == 0:
            self._thread.checkpoint()
        for future, value, error in results:
            _resolve(future, value, error)

    def _wait_for_lock(
        self, batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]]
    ) -> None:
        """Keep ``batch`` first in line and try again shortly, or give up on the loop."""
        now = time.monotonic()
        if self._busy_since is None:
            self._busy_since = now
        self.busy_retries += 1
        if now - self._busy_since >= self._timeout:
            # Held for the whole timeout: the thread waits once more, then fails.
            queued, self._batch = [*batch, *self._batch], []
            self._busy_since = None
            self._retry_pause = _FIRST_RETRY
            self._hand_over_batch(queued)
            return
        self._batch[:0] = batch
        self._next_try = now + self._retry_pause
        self._retry_pause = min(self._retry_pause * 2, _LAST_RETRY)
        if not self._scheduled:  # else a flush is due, and puts itself off until then
            self._scheduled = True
            self._loop.call_later(self._next_try - now, self._flush)

    def close(self) -> None:
        """Write whatever is queued (on the thread), then close the loop's connection."""
        if self._batch:
            self._hand_over_batch(self._batch)
            self._batch = []
        self._connection.close()


def _relay(done: asyncio.Future[Any], *, outer: asyncio.Future[Any]) -> None:
    if outer.done():
        return
    if done.cancelled():
        outer.cancel()
    elif (error := done.exception()) is not None:
        outer.set_exception(error)
    else:
        outer.set_result(done.result())
