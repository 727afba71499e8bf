"""The state every request shares: store, executor, admission, pacing, wake-ups.

:class:`PollingServer` is the engine below the ASGI shell (``_middleware``) and
the deferral mechanics (``_deferral``): it opens and maintains the store,
applies state transitions, keeps outcomes until the store has them, holds
polls and wakes them, and turns records into answers. What to answer is
decided in the I/O-free core (``_replies``, ``_pacing``, ``_status``,
``_admission``, ``_origin``, ``_liveness``); this module moves records, time
and tasks. Each reply is one core call fed what only the shell can gather:
the record read from the store, the clock, the interval advertised (from this
process's history and load), the request's headers. The answers to status
polls and cancellations, which wait, are in ``_answers``.

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
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .. import _telemetry as telemetry
from .._errors import InvalidTransition, MissingExtraError, StoreUnavailable
from ..core import _liveness as liveness
from ..core import _replies as replies
from ..core._admission import Admission
from ..core._config import Lifetimes, Limits, UrlPolicy
from ..core._headers import Preferences, is_valid_operation_id
from ..core._model import Operation, StoredResponse
from ..core._origin import OperationUrls
from ..core._pacing import (
    DurationHistory,
    PacingPolicy,
    estimate_interval,
    follows_again,
    refusal_interval,
    work_snapshot,
)
from ..core._profiles import ClientProfile, hop_url, profile_for
from ..core._status import Event, finish_event
from ..executors._in_process import Executor, InProcessExecutor
from ..executors._work import outcome_of_raised
from ..stores._store import Store, shared_store, store_from_url, update_operation
from ._gc import tune_gc
from ._holds import Holds
from ._outage_log import OutageLog
from ._scope import Scope, first_header, wants_page

try:
    from starlette.requests import HTTPConnection
except ModuleNotFoundError as exc:
    raise MissingExtraError("server", "starlette") from exc

from ._principal import PrincipalDigests, PrincipalFunction, default_principal

if TYPE_CHECKING:
    from ._deferral import RunningOperation

logger = logging.getLogger("repoll")


DEFAULT_STORE_URL = "sqlite:///repoll.sqlite3"
PRINCIPAL_KEY_ENV = "REPOLL_PRINCIPAL_KEY"
MAX_HOLD_ENV = "REPOLL_MAX_HOLD"  # set by ``repoll serve --max-hold``
# Writing an outcome is retried with pauses growing to this cap, for as long
# as this process lives: an outcome is never given up while it can be kept.
_OUTCOME_RETRY_CAP = 15.0
_PURGE_EVERY = 60.0


def pacing_from_environment(environ: Mapping[str, str]) -> PacingPolicy:
    """The default pacing, with ``max_hold`` from ``$REPOLL_MAX_HOLD`` when set."""
    value = environ.get(MAX_HOLD_ENV)
    if not value:
        return PacingPolicy()
    max_hold = float(value)
    return PacingPolicy(max_hold=max_hold, min_hold=min(PacingPolicy().min_hold, max_hold))


class PollingServer:
    """The state every request shares: store, executor, pacing, wake-ups.

    Create one with :func:`install` (Starlette/FastAPI) or pass it to
    :class:`PollingMiddleware` (any ASGI app). Settings come grouped:
    ``pacing`` (:class:`PacingPolicy`), ``limits`` (:class:`Limits`),
    ``lifetimes`` (:class:`Lifetimes`) and ``urls`` (:class:`UrlPolicy`);
    each defaults to its class's defaults. Options are in docs/deployment.md.
    """

    def __init__(
        self,
        *,
        store: Store | str | None = None,
        executor: Executor | None = None,
        pacing: PacingPolicy | None = None,
        limits: Limits | None = None,
        lifetimes: Lifetimes | None = None,
        urls: UrlPolicy | None = None,
        principal: PrincipalFunction = default_principal,
        principal_key: str | bytes | None = None,
        cors_origins: Iterable[str] = (),
    ) -> None:
        if store is None:
            store = DEFAULT_STORE_URL
        self.store: Store = store_from_url(store) if isinstance(store, str) else store
        self.executor: Executor = executor or InProcessExecutor()
        self.pacing = pacing or pacing_from_environment(os.environ)
        self.limits = limits or Limits()
        self.lifetimes = lifetimes or Lifetimes()
        # Settings left unset come from $REPOLL_PUBLIC_URL and $FORWARDED_ALLOW_IPS.
        self.urls = (urls or UrlPolicy()).with_environment(os.environ)
        self.principal = principal
        if principal_key is None:
            principal_key = os.environ.get(PRINCIPAL_KEY_ENV) or None
        self._principal_key = principal_key.encode() if isinstance(principal_key, str) else None
        if isinstance(principal_key, bytes):
            self._principal_key = principal_key
        self.admission = Admission(
            self.limits.max_operations,
            self.limits.max_operations_per_principal,
            self.limits.max_held_polls,
        )
        self.holds = Holds(self.store, self.admission)
        # This process's name in the store; with a shared store, its work is
        # declared lost once the store no longer sees it alive.
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.owner_ttl = liveness.owner_ttl(self.heartbeat_interval)
        self.cors_origins = frozenset(cors_origins)
        self._operation_urls = OperationUrls(
            operations_path=self.operations_path,
            absolute=self.urls.absolute_urls,
            public_url=self.urls.public_url,
            trusted=self.urls.trusted_proxies,
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

    # The settings most read, by their names in the settings objects.
    @property
    def operations_path(self) -> str:
        return self.urls.operations_path

    @property
    def max_body_size(self) -> int:
        return self.limits.max_body_size

    @property
    def max_response_size(self) -> int:
        return self.limits.max_response_size

    @property
    def retention(self) -> float:
        return self.lifetimes.retention

    @property
    def shutdown_grace(self) -> float:
        return self.lifetimes.shutdown_grace

    @property
    def heartbeat_interval(self) -> float:
        return self.lifetimes.heartbeat_interval

    # The limits, as admission counts them.
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
            tune_gc(os.environ)
            await self.store.open()
            executor = self.executor
            telemetry.watch_queue(lambda: executor.waiting)
            try:
                key = self._principal_key or await self.store.secret()
                self._digests = PrincipalDigests(key)
                self.closing = False
                shared = shared_store(self.store)
                if shared is not None:
                    await shared.heartbeat(self.instance_id, ttl=self.owner_ttl)
                    self._healthy_since = time.monotonic()
                    await shared.subscribe(self._on_store_event)
                    if self._may_reap():
                        await self._reap()
                else:
                    # This process is the store's only user: whatever is
                    # unfinished was left by its previous life.
                    for op in await self.store.unfinished():
                        await self._lose(op.id, replies.lost_at_restart(op.status))
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
                await self._lose(op_id, replies.LOST_AT_SHUTDOWN)
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
                shared = shared_store(self.store)
                if shared is not None:
                    await shared.heartbeat(self.instance_id, ttl=self.owner_ttl)
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
        """Whether the store's list of live owners can be believed now (see ``core._liveness``)."""
        shared = shared_store(self.store)
        if shared is not None and shared.exact_liveness:
            return True
        return liveness.heartbeats_settled(self._healthy_since, time.monotonic(), self.owner_ttl)

    async def reap(self) -> int:
        """Declare lost the unfinished operations of owners that stopped; returns how many."""
        await self.open()
        return await self._reap()

    async def _reap(self) -> int:
        shared = shared_store(self.store)
        live = set() if shared is None else await shared.live_owners()
        live.add(self.instance_id)
        lost = liveness.orphaned(await self.store.unfinished(), live)
        for op_id, reason in lost:
            await self._lose(op_id, reason)
        return len(lost)

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
        return self._operation_urls(scope, operation_id)

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
        # The same decision a Celery worker makes (executors/_work).
        event, stored, message = outcome_of_raised(
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
        work = work_snapshot(
            op,
            now,
            typical_duration=history.mean if history else None,
            queued_ahead=self.executor.waiting,
            concurrency=self.executor.concurrency,
            load=self.admission.load,
        )
        return estimate_interval(work, self.pacing)

    def profile_of(self, scope: Scope) -> ClientProfile:
        """What the client of this request can wait for, from its ``User-Agent``."""
        return profile_for(first_header(scope, b"user-agent"), self.pacing.profiles)

    def answer(
        self,
        scope: Scope,
        op: Operation | None,
        preferences: Preferences,
        origin: str,
        url: str | None = None,
        *,
        followed: int = 0,
    ) -> replies.Reply:
        """What to send for ``op`` now (not found, expired, final, page or pending).

        The decision is :func:`repoll.core._replies.answer`; this gathers its
        inputs: the time, the interval advertised, the URL, the request's
        ``Accept``, and for a client that follows redirects by itself (it
        has ``followed`` so many), the hop URL of its next redirect or, when
        its profile allows no more, the graceful 202.
        """
        now = time.time()
        redirect: str | None = None
        ran_out_after: float | None = None
        interval = 0.0
        page = False
        if op is not None:
            url = url or self.operation_url(scope, op.id)
        # Only a pending answer is paced: an outcome (the common poll of a
        # finished operation) needs no interval, hop URL or client profile.
        if op is not None and not op.status.is_terminal and not op.is_expired(now):
            assert url is not None
            redirect = hop_url(url, followed + 1)
            if preferences.wait is None and not follows_again(
                self.profile_of(scope), followed, max(now - op.created_at, 0.0), self.pacing
            ):
                ran_out_after = self.retention
            interval = self.interval_for(op, now)
            page = wants_page(scope, preferences)
        return replies.answer(
            op,
            now=now,
            interval=interval,
            page=page,
            preferences=preferences,
            operation_url=url or "",
            origin=origin,
            cors_origins=self.cors_origins,
            redirect=redirect,
            ran_out_after=ran_out_after,
        )
