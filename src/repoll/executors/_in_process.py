"""Where deferred work runs: the executor interface and the in-process executor.

An executor either runs the work here (:class:`Executor` alone: the server
gives the work a slot, runs it, and records its outcome) or sends it
elsewhere (:class:`RemoteExecutor`: it also has ``hand_off``, and the process
that runs the work starts the operation and records its outcome). The server
asks which one it has through :func:`remote_executor`, the one place that
looks, rather than probing for attributes wherever it matters.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast, runtime_checkable

if TYPE_CHECKING:
    from ..server._deferral import RunningOperation

T = TypeVar("T")


@runtime_checkable
class Executor(Protocol):
    """Gives deferred work a slot, runs sync handlers off the event loop, cancels."""

    @property
    def concurrency(self) -> int:
        """How many operations may run at once."""

    @property
    def waiting(self) -> int:
        """How many operations wait for a slot."""

    def slot(self, operation_id: str) -> AbstractAsyncContextManager[None]:
        """Wait for a free slot, hold it for the body of the ``async with``."""

    def has_free_slot(self) -> bool:
        """True if :meth:`slot` would be entered without waiting."""

    async def run_sync(self, fn: Callable[[], T]) -> T:
        """Run a blocking callable without blocking the event loop."""

    def track(self, operation_id: str, task: asyncio.Task[None]) -> None:
        """Remember the task doing ``operation_id`` so it can be cancelled."""

    def cancel(self, operation_id: str) -> bool:
        """Cancel the task doing ``operation_id``; False if none is known here."""

    async def shutdown(self, grace: float) -> list[str]:
        """Let work finish for ``grace`` seconds, cancel the rest; return their ids."""


@dataclass(frozen=True, slots=True)
class RemoteCall:
    """An endpoint's call, validated and ready to run in another process."""

    name: str  # the endpoint as registered ("module:qualname"), for the worker to import
    endpoint: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    status_code: int  # the route's success status, for a return value that is not a response
    rerun: bool  # declared safe to run again after a worker dies


@runtime_checkable
class RemoteExecutor(Protocol):
    """An executor whose work runs in another process (a Celery worker, say).

    Instead of running the endpoint here, the server hands its validated
    arguments over; the other process starts the operation, runs the work
    and writes its outcome to the shared store.
    """

    async def hand_off(self, running: RunningOperation, call: RemoteCall) -> None:
        """Send ``call`` to where it will run, as the work of ``running``."""


_REMOTE_BY_CLASS: dict[type, bool] = {}


def remote_executor(executor: Executor) -> RemoteExecutor | None:
    """``executor`` as a :class:`RemoteExecutor`, or None if it runs work here.

    Asked on every start: the answer is kept per class, because a runtime
    protocol check reads every member of the protocol each time (microseconds).
    """
    kind = type(executor)
    remote = _REMOTE_BY_CLASS.get(kind)
    if remote is None:
        remote = _REMOTE_BY_CLASS[kind] = isinstance(executor, RemoteExecutor)
    return cast("RemoteExecutor", executor) if remote else None


class _Slot:
    """One executor slot, held for an ``async with`` (a class: it is on every start)."""

    __slots__ = ("_executor", "_semaphore")

    def __init__(self, executor: InProcessExecutor, semaphore: asyncio.Semaphore) -> None:
        self._executor = executor
        self._semaphore = semaphore

    async def __aenter__(self) -> None:
        if not self._semaphore.locked():  # free: no await, no queueing
            await self._semaphore.acquire()
            return
        self._executor._waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self._executor._waiting -= 1

    async def __aexit__(self, *_: object) -> None:
        self._semaphore.release()


class InProcessExecutor:
    """Runs operations as asyncio tasks in this process, at most ``concurrency`` at once.

    Async handlers run on the event loop; sync handlers in a thread pool of the
    same size, so a slot always has a thread.
    """

    def __init__(self, concurrency: int = 16) -> None:
        if concurrency < 1:
            msg = "concurrency must be at least 1"
            raise ValueError(msg)
        self._concurrency = concurrency
        self._semaphore: asyncio.Semaphore | None = None
        self._waiting = 0
        self._threads: ThreadPoolExecutor | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Called in the thread after each piece of sync work, whatever it did:
        # what the framework does at the end of a request (Django closes the
        # thread's database connections), for work outside any request.
        self.after_thread_work: Callable[[], object] | None = None

    @property
    def concurrency(self) -> int:
        return self._concurrency

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return len(self._tasks)

    def has_free_slot(self) -> bool:
        return self._semaphore is None or not self._semaphore.locked()

    def slot(self, operation_id: str) -> AbstractAsyncContextManager[None]:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self._concurrency)
        return _Slot(self, self._semaphore)

    async def run_sync(self, fn: Callable[[], T]) -> T:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(
                max_workers=self._concurrency, thread_name_prefix="repoll-work"
            )
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        work = fn if self.after_thread_work is None else functools.partial(self._then_tidy, fn)
        return await loop.run_in_executor(self._threads, functools.partial(context.run, work))

    def _then_tidy(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        finally:
            if self.after_thread_work is not None:
                self.after_thread_work()

    def track(self, operation_id: str, task: asyncio.Task[None]) -> None:
        self._tasks[operation_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(operation_id, None))

    def cancel(self, operation_id: str) -> bool:
        task = self._tasks.get(operation_id)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    async def shutdown(self, grace: float) -> list[str]:
        pending = dict(self._tasks)
        if pending and grace > 0:
            await asyncio.wait(pending.values(), timeout=grace)
        unfinished = [op_id for op_id, task in pending.items() if not task.done()]
        for op_id in unfinished:
            pending[op_id].cancel()
        if unfinished:
            await asyncio.wait([pending[i] for i in unfinished], timeout=5)
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None
        return unfinished
