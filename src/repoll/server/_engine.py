"""The state every request shares: store, executor, admission, pacing, wake-ups.

:class:`PollingServer` is the engine below the ASGI shell (``_middleware``) and
the deferral mechanics (``_deferral``): it opens and maintains the store,
applies state transitions, keeps outcomes until the store has them, holds
polls and wakes them, and turns records into answers. What to answer is
decided in the I/O-free modules (``_replies``, ``_pacing``, ``_status``,
``_admission``, ``_origin``); this module moves records, time and tasks.

Liveness and wake-ups
---------------------
A store that is not ``shared`` (memory, a private in-memory SQLite database)
belongs to this process alone: on open, whatever it holds unfinished was
left by this process's previous life and is declared lost. A shared store
(a SQLite file used by several processes on one host, Redis, PostgreSQL)
may hold other live processes' work, so a process declares lost only the
work of owners the store no longer sees alive (``live_owners``), at open and
then every ``heartbeat_interval``. Ends and cancellations reach every
process through the store's subscription; if it drops, the store restores
it and says ``resync``, and the server re-reads what its waiters and its
running work care about.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .._errors import require

require("starlette", "server")

from starlette.requests import HTTPConnection

from .._errors import InvalidTransition, StoreUnavailable
from ..core import _replies as replies
from ..core._admission import Admission
from ..core._headers import Preferences, is_valid_operation_id
from ..core._model import Operation, StoredResponse
from ..core._origin import LOOPBACK, OperationUrls, TrustedProxies
from ..core._pacing import (
    DurationHistory,
    PacingPolicy,
    WorkSnapshot,
    estimate_interval,
    hold_seconds,
    refusal_interval,
)
from ..core._status import Event, OperationStatus, finish_event
from ..executors._in_process import Executor, InProcessExecutor
from ..stores._store import Store, store_from_url, update_operation
from ._holds import Holds
from ._outage_log import OutageLog
from ._principal import PrincipalDigests, PrincipalFunction, default_principal
from ._scope import Receive, Scope, first_header, wants_page

if TYPE_CHECKING:
    from ._deferral import RunningOperation

logger = logging.getLogger("repoll")


DEFAULT_STORE_URL = "sqlite:///repoll.sqlite3"
PRINCIPAL_KEY_ENV = "REPOLL_PRINCIPAL_KEY"
FORWARDED_ALLOW_IPS_ENV = "FORWARDED_ALLOW_IPS"
PUBLIC_URL_ENV = "REPOLL_PUBLIC_URL"
# Writing an outcome is retried with pauses growing to this cap, for as long
# as this process lives: an outcome is never given up while it can be kept.
_OUTCOME_RETRY_CAP = 15.0
_PURGE_EVERY = 60.0


class PollingServer:
    """The state every request shares: store, executor, pacing, wake-ups.

    Create one with :func:`install` (Starlette/FastAPI) or pass it to
    :class:`PollingMiddleware` (any ASGI app). Options are in
    docs/deployment.md.
    """

    def __init__(
        self,
        *,
        store: Store | str | None = None,
        executor: Executor | None = None,
        pacing: PacingPolicy | None = None,
        retention: float = 3600.0,
        operations_path: str = "/operations",
        max_body_size: int = 1024 * 1024,
        max_response_size: int = 64 * 1024 * 1024,
        principal: PrincipalFunction = default_principal,
        principal_key: str | bytes | None = None,
        shutdown_grace: float = 5.0,
        max_held_polls: int = 10_000,
        max_operations: int = 10_000,
        max_operations_per_principal: int = 100,
        heartbeat_interval: float = 2.0,
        cors_origins: Iterable[str] = (),
        absolute_urls: bool = False,
        public_url: str | None = None,
        forwarded_allow_ips: str | Iterable[str] | None = None,
    ) -> None:
        if store is None:
            store = DEFAULT_STORE_URL
        self.store: Store = store_from_url(store) if isinstance(store, str) else store
        self.executor: Executor = executor or InProcessExecutor()
        self.pacing = pacing or PacingPolicy()
        self.retention = retention
        self.operations_path = "/" + operations_path.strip("/")
        self.max_body_size = max_body_size
        self.max_response_size = max_response_size
        self.principal = principal
        if principal_key is None:
            principal_key = os.environ.get(PRINCIPAL_KEY_ENV) or None
        self._principal_key = principal_key.encode() if isinstance(principal_key, str) else None
        if isinstance(principal_key, bytes):
            self._principal_key = principal_key
        self.shutdown_grace = shutdown_grace
        self.admission = Admission(max_operations, max_operations_per_principal, max_held_polls)
        self.holds = Holds(self.store, self.admission)
        # This process's name in the store; with a shared store, its work is
        # declared lost once the store no longer sees it alive.
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.heartbeat_interval = heartbeat_interval
        self.owner_ttl = heartbeat_interval * 5
        self.cors_origins = frozenset(cors_origins)
        if forwarded_allow_ips is None:
            forwarded_allow_ips = os.environ.get(FORWARDED_ALLOW_IPS_ENV)
        self.urls = OperationUrls(
            operations_path=self.operations_path,
            absolute=absolute_urls,
            public_url=public_url or os.environ.get(PUBLIC_URL_ENV),
            trusted=(
                LOOPBACK
                if forwarded_allow_ips is None
                else TrustedProxies.parse(forwarded_allow_ips)
            ),
        )
        self._digests: PrincipalDigests | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._history: dict[str, DurationHistory] = {}
        self._running: dict[str, RunningOperation] = {}
        self._open = False
        self.closing = False
        self._open_lock: asyncio.Lock | None = None
        self._last_purge = 0.0
        self._healthy_since: float | None = None  # heartbeating without a break since
        # Set when the store answers again after failing: outcomes waiting to
        # be written try at once instead of waiting out their pause.
        self._store_back: asyncio.Event | None = None
        self.outages = OutageLog()

    # The limits, as they were named before admission had its own object.
    @property
    def held_polls(self) -> int:
        return self.admission.held

    @property
    def max_held_polls(self) -> int:
        return self.admission.max_held

    @property
    def max_operations(self) -> int:
        return self.admission.max_operations

    @property
    def max_operations_per_principal(self) -> int:
        return self.admission.max_per_key

    # --- life cycle -----------------------------------------------------------

    async def open(self) -> None:
        """Open the store and settle operations that no live process will finish."""
        if self._open:
            return
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._open:
                return
            await self.store.open()
            try:
                key = self._principal_key or await self.store.secret()
                self._digests = PrincipalDigests(key)
                self.closing = False
                if self.store.shared:
                    await self.store.heartbeat(self.instance_id, ttl=self.owner_ttl)
                    self._healthy_since = time.monotonic()
                    await self.store.subscribe(self._on_store_event)
                    if self._may_reap():
                        await self._reap()
                else:
                    # This process is the store's only user: whatever is
                    # unfinished was left by its previous life.
                    for op in await self.store.unfinished():
                        await self._lose(
                            op.id,
                            f"The server stopped while the operation was {op.status.value}; "
                            "its work was lost. Start it again.",
                        )
            except BaseException:
                await self.store.close()
                raise
            self._maintenance = asyncio.get_running_loop().create_task(self._maintain())
            self._open = True

    async def close(self) -> None:
        """Give running work ``shutdown_grace`` seconds, mark the rest failed, close."""
        if not self._open:
            return
        self.closing = True
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
            self._maintenance = None
        for op_id in await self.executor.shutdown(self.shutdown_grace):
            with contextlib.suppress(StoreUnavailable):
                await self._lose(op_id, "The server shut down before the work finished.")
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        await self.store.close()
        self._open = False

    def _spawn(self, coroutine: Any) -> None:
        self.keep(asyncio.get_running_loop().create_task(coroutine))

    def keep(self, task: asyncio.Task[Any]) -> None:
        """Hold a background task until it is done, so that none is collected mid-flight."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _on_store_event(self, kind: str, operation_id: str) -> None:
        if kind == "finished":
            self.holds.notifier.notify(operation_id, None)  # waiters re-read the record
        elif kind == "cancel":
            running = self._running.get(operation_id)
            if running is not None:
                running.request_cancel()
        elif kind == "resync":
            # The store was out of reach: so may other processes have been,
            # and their heartbeats with them. Trust its view of who is alive
            # only after a full owner_ttl of this process's own heartbeats.
            self._healthy_since = time.monotonic()
            self._store_answers()
            self._spawn(self._resync())

    def _store_answers(self) -> None:
        if self._store_back is not None:
            self._store_back.set()

    async def _resync(self) -> None:
        """After a lost subscription: catch up on the ends and cancellations it missed."""
        try:
            for op_id in self.holds.notifier.watched():
                op = await self.store.get(op_id)
                if op is None or op.status.is_terminal:
                    self.holds.notifier.notify(op_id, op)
            for running in list(self._running.values()):
                op = await self.store.get(running.id)
                if op is not None and op.cancel_requested:
                    running.request_cancel()
        except StoreUnavailable as exc:
            self.outages.failed("catching up after a resubscription", exc)

    async def _maintain(self) -> None:
        """Heartbeats and reaping (shared stores), and purging, every heartbeat_interval."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                if self.store.shared:
                    await self.store.heartbeat(self.instance_id, ttl=self.owner_ttl)
                    if self._healthy_since is None:
                        self._healthy_since = time.monotonic()
                        self._store_answers()
                    if self._may_reap():
                        await self._reap()
                await self._maybe_purge()
                self.outages.answered()
            except StoreUnavailable as exc:
                self._healthy_since = None
                self.outages.failed("maintenance", exc)
            except Exception:
                logger.exception("maintenance failed")

    def _may_reap(self) -> bool:
        """Whether the store's list of live owners can be believed now.

        Heartbeats expire while the store is out of reach, for every process
        at once. Right after an outage, a process that reaped at once would
        take every other live process for dead and fail its work. So a
        process reaps only once it has itself heartbeated without a break
        for ``owner_ttl`` seconds, which every live process's heartbeat
        interval fits into. A store whose liveness does not expire (SQLite's
        lock files: the kernel drops them the moment a process dies) needs no
        such wait.
        """
        if getattr(self.store, "exact_liveness", False):
            return True
        healthy = self._healthy_since
        return healthy is not None and time.monotonic() - healthy >= self.owner_ttl

    async def reap(self) -> int:
        """Declare lost the unfinished operations of owners that stopped; returns how many."""
        await self.open()
        return await self._reap()

    async def _reap(self) -> int:
        live = await self.store.live_owners()
        live.add(self.instance_id)
        lost = 0
        for op in await self.store.unfinished():
            if op.owner is None or op.owner in live:
                continue
            await self._lose(
                op.id,
                f"The process running the operation ({op.owner}) stopped. "
                "Its work was lost; start it again.",
            )
            lost += 1
        return lost

    async def _maybe_purge(self) -> None:
        now = time.time()
        if now - self._last_purge < _PURGE_EVERY:
            return
        self._last_purge = now
        deleted = await self.store.purge(now=now, tombstone=self.retention)
        if deleted:
            logger.debug("purged %d expired operations", deleted)

    # --- requests -------------------------------------------------------------

    def operation_url(self, scope: Scope, operation_id: str) -> str:
        """The URL to send in ``Location``: a path unless an absolute one is needed."""
        return self.urls(scope, operation_id)

    async def principal_of(self, scope: Scope) -> str:
        """The stored form (a keyed digest) of the principal of the request."""
        result = self.principal(HTTPConnection(scope))
        if not isinstance(result, str):
            result = await result
        if self._digests is None:  # pragma: no cover - open() sets it first
            msg = "the server is not open"
            raise RuntimeError(msg)
        return self._digests(result)

    async def visible(self, scope: Scope, operation_id: str) -> Operation | None:
        """The record, if the id is well-formed and the requester is its principal."""
        if not is_valid_operation_id(operation_id):
            return None
        op = await self.store.get(operation_id)
        if op is None or op.principal != await self.principal_of(scope):
            return None
        return op

    def refuse(self, whose: str) -> replies.Reply:
        """The 429 for a start refused by admission (``whose`` limit)."""
        typical = [hist.mean for hist in self._history.values() if hist.mean is not None]
        return replies.too_many_operations(whose, refusal_interval(typical, self.pacing))

    def track(self, running: RunningOperation) -> None:
        self._running[running.id] = running

    def untrack(self, running: RunningOperation) -> None:
        if self._running.pop(running.id, None) is not None:
            self.admission.release(running.quota)

    def running(self, operation_id: str) -> RunningOperation | None:
        return self._running.get(operation_id)

    # --- state changes --------------------------------------------------------

    async def transition(
        self,
        operation_id: str,
        event: Event,
        *,
        response: StoredResponse | None = None,
        message: str | None = None,
        known: Operation | None = None,
    ) -> Operation | None:
        """Apply ``event``; None when the operation is gone or already moved on."""
        changed = False

        def change(op: Operation) -> Operation | None:
            nonlocal changed
            try:
                updated = op.apply(
                    event,
                    now=time.time(),
                    retention=self.retention,
                    response=response,
                    message=message,
                )
            except InvalidTransition:
                changed = False
                return None
            changed = True
            return updated

        running = self._running.get(operation_id)
        if known is None and running is not None:
            known = running.record
        after = await update_operation(self.store, operation_id, change, known=known)
        if running is not None and after is not None:
            running.record = after
        if after is None or not changed:
            return None
        if after.status.is_terminal:
            self.holds.notifier.notify(operation_id, after)
        return after

    async def _lose(self, operation_id: str, reason: str) -> None:
        await self.transition(
            operation_id, Event.LOSE, response=replies.lost_response(reason), message=reason
        )

    async def record_outcome(
        self,
        running: RunningOperation,
        response: StoredResponse | None,
        interrupted: BaseException | None,
    ) -> None:
        """Write how the work ended; keep trying for as long as this process lives.

        A store that is down or busy is retried with pauses growing to 15 s,
        so the outcome lands soon after the store is back. An outcome the
        store refuses for another reason is replaced by a problem saying so.
        If the process stops first, the operation is declared lost by the
        next process to open the store or by a live one (``_reap``).
        """
        pause = 0.05
        replaced = False
        while True:
            try:
                await self._write_outcome(running, response, interrupted)
                return
            except StoreUnavailable as exc:
                if self.closing:
                    logger.error("operation %s: outcome lost, store unavailable", running.id)
                    return
                self.outages.failed(f"writing the outcome of {running.id}, kept", exc)
                if self._store_back is None:
                    self._store_back = asyncio.Event()
                self._store_back.clear()
            except Exception:
                if self.closing:
                    logger.exception("operation %s: outcome lost at shutdown", running.id)
                    return
                if replaced:
                    logger.exception("operation %s: outcome could not be stored", running.id)
                else:
                    logger.exception("operation %s: outcome refused by the store", running.id)
                    response, interrupted, replaced = replies.unstorable_response(), None, True
                    continue
            if self._store_back is None:
                await asyncio.sleep(pause)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._store_back.wait(), pause)
            pause = min(pause * 2, _OUTCOME_RETRY_CAP)

    async def _write_outcome(
        self,
        running: RunningOperation,
        response: StoredResponse | None,
        interrupted: BaseException | None,
    ) -> None:
        if response is not None:
            op = await self.transition(running.id, finish_event(response.status), response=response)
            if op is not None and op.started_at is not None and op.finished_at is not None:
                history = self._history.setdefault(op.endpoint, DurationHistory())
                history.add(op.finished_at - op.started_at)
            return
        event, stored, message = replies.interrupted_outcome(
            interrupted, cancel_requested=running.cancel_requested
        )
        if event is Event.FINISH_ERROR:
            logger.error("operation %s: the endpoint raised", running.id, exc_info=interrupted)
        await self.transition(running.id, event, response=stored, message=message)

    async def store_progress(
        self, running: RunningOperation, progress: float | None, message: str | None
    ) -> None:
        def change(op: Operation) -> Operation | None:
            return op.with_progress(progress, message, now=time.time())

        after = await update_operation(self.store, running.id, change, known=running.record)
        if after is not None:
            running.record = after

    # --- answers --------------------------------------------------------------

    def interval_for(self, op: Operation, now: float) -> float:
        """The Retry-After the server advertises for ``op`` now."""
        history = self._history.get(op.endpoint)
        work = WorkSnapshot(
            age=max(now - op.created_at, 0.0),
            running_for=None if op.started_at is None else max(now - op.started_at, 0.0),
            progress=op.progress,
            typical_duration=history.mean if history else None,
            queued_ahead=self.executor.waiting,
            concurrency=self.executor.concurrency,
            load=self.admission.load,
        )
        return estimate_interval(work, self.pacing)

    def answer(
        self,
        scope: Scope,
        op: Operation,
        preferences: Preferences,
        origin: str,
        url: str | None = None,
    ) -> replies.Reply:
        """What to send for ``op`` now (pending, page, final, or expired)."""
        now = time.time()
        if op.expires_at is not None and op.expires_at <= now:
            return replies.expired(op)
        url = url or self.operation_url(scope, op.id)
        if op.status.is_terminal:
            return replies.final(
                op, operation_url=url, origin=origin, cors_origins=self.cors_origins
            )
        interval = self.interval_for(op, now)
        if wants_page(scope, preferences):
            reply = replies.progress_page(op, operation_url=url, interval=interval, now=now)
        else:
            if op.respond_async and not preferences.respond_async:
                preferences = dataclasses.replace(preferences, respond_async=True)
            reply = replies.pending(
                op, operation_url=url, preferences=preferences, interval=interval
            )
        reply.headers.extend(replies.cors_headers(origin, self.cors_origins))
        return reply

    async def status_reply(
        self,
        scope: Scope,
        operation_id: str,
        preferences: Preferences,
        receive: Receive | None = None,
    ) -> replies.Reply:
        """The answer to ``GET`` on an operation URL, after holding it if due."""
        origin = first_header(scope, b"origin")
        op = await self.visible(scope, operation_id)
        if op is None:
            return replies.with_cors(replies.not_found(), origin, self.cors_origins)
        if not op.status.is_terminal:
            advertised = self.interval_for(op, time.time())
            hold = hold_seconds(preferences, advertised, self.pacing)
            if wants_page(scope, preferences):
                hold = 0.0  # a person sees the page at once; its Refresh paces the browser
            held = await self.holds.hold(op.id, hold, receive=receive)
            if held is None:
                return replies.with_cors(replies.not_found(), origin, self.cors_origins)
            op = held
        return self.answer(scope, op, preferences, origin)

    async def cancel_reply(
        self, scope: Scope, operation_id: str, receive: Receive | None = None
    ) -> replies.Reply:
        """The answer to ``DELETE`` on an operation URL."""
        origin = first_header(scope, b"origin")
        op = await self.visible(scope, operation_id)
        if op is None:
            return replies.with_cors(replies.not_found(), origin, self.cors_origins)
        if op.expires_at is not None and op.expires_at <= time.time():
            return replies.with_cors(replies.expired(op), origin, self.cors_origins)
        if not op.status.is_terminal:
            await self._request_cancel(op)
            # Cooperative cancellation usually lands within a moment; answer
            # with the outcome when it does, else 202 and the current status.
            op = await self.holds.hold(op.id, 1.0, receive=receive) or op
        reply = replies.cancel_answer(op)
        return replies.with_cors(reply, origin, self.cors_origins)

    async def _request_cancel(self, op: Operation) -> None:
        def flag(current: Operation) -> Operation | None:
            if current.status.is_terminal or current.cancel_requested:
                return None
            return current.evolve(cancel_requested=True, updated_at=time.time())

        await update_operation(self.store, op.id, flag)
        running = self._running.get(op.id)
        if running is not None:
            running.request_cancel()
        elif self.store.shared:
            await self.store.announce_cancel(op.id)  # the process running it stops it
        if running is None and op.status is OperationStatus.QUEUED:
            await self.transition(
                op.id,
                Event.CANCEL,
                response=replies.canceled_response(),
                message="Canceled on request.",
            )
