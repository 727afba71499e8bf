"""What endpoints call: ``defer()``, ``defer_sync()``, ``@deferred``, progress, their operation.

The request itself (how it becomes an operation, what the app sees, how the
outcome is recorded) is :mod:`._deferral`'s; this module finds the request
the calling code belongs to and asks it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, ParamSpec, TypeVar, cast, overload

from .._errors import NotDeferrableError
from ..executors._in_process import RemoteCall, remote_executor
from ._deferral import (
    HandedOff,
    RunningOperation,
    WorkContext,
    _current_operation,
    _current_request,
)
from ._routes import DEFERRED_MARK

P = ParamSpec("P")
R = TypeVar("R")


async def defer() -> RunningOperation:
    """Turn the current request into an operation; the rest of the endpoint is its work.

    Call it after validating the input, so that bad requests still get their
    immediate 4xx. The client is answered ``303 See Other`` (or ``202``) at
    once; when the endpoint returns, its response becomes the operation's
    outcome. Calling it again returns the same operation. An endpoint that
    calls it itself is marked :func:`repoll.deferrable`.
    """
    return await _defer(handing_off=False)


async def _defer(*, handing_off: bool) -> RunningOperation:
    request = _current_request.get()
    if request is None:
        _refuse_defer()
    if asyncio.get_running_loop() is not request.loop:
        # An async view that a sync framework runs on a loop of its own
        # (Django's async views under WSGI): defer on the request's loop.
        deferring = request.defer(task=asyncio.current_task(), handing_off=handing_off)
        handed = asyncio.run_coroutine_threadsafe(deferring, request.loop)
        running = await asyncio.wrap_future(handed)
        _current_operation.set(running)
        return running
    return await request.defer(handing_off=handing_off)


def defer_sync() -> RunningOperation:
    """:func:`defer` for a view that runs in a thread: Flask, Django's sync views, DRF.

    Call it after the view has validated its input. The client is answered
    ``303 See Other`` (or ``202``) at once; the rest of the view, in the same
    thread and the same request context, is the operation's work, and what it
    returns is the operation's outcome. The app must be served through
    repoll's ASGI layer (:func:`repoll.wsgi` for a WSGI app, or
    :class:`PollingMiddleware` around an ASGI one). Sync work cannot be
    interrupted: it should check ``cancel_requested`` (or call
    ``raise_if_canceled()``) on the operation this returns.
    """
    request = _current_request.get()
    if request is None:
        return _refuse_defer()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        msg = "defer_sync() was called on the event loop: use await repoll.defer() there"
        raise NotDeferrableError(msg)
    # The rest of the view runs in this thread: the app's task is what a
    # cancellation may stop (not the short task that defers for the thread).
    deferring = request.defer(task=request.app_task, in_thread=True)
    running = asyncio.run_coroutine_threadsafe(deferring, request.loop).result()
    _current_operation.set(running)  # this thread's context, for report_progress()
    return running


def _refuse_defer() -> NoReturn:
    msg = (
        "defer() needs a request that repoll knows may defer: call repoll.install(app) "
        "(or wrap the app in repoll.PollingMiddleware, or a WSGI app in repoll.wsgi), and "
        "mark the endpoint with @repoll.deferrable when it calls repoll.defer() itself"
    )
    raise NotDeferrableError(msg)


def current_operation() -> WorkContext | None:
    """The operation the running work belongs to, or None outside deferred work."""
    return _current_operation.get()


def report_progress(progress: float | None = None, message: str | None = None) -> None:
    """Report the current operation's progress (0..1) and a message; no-op outside one."""
    running = _current_operation.get()
    if running is not None:
        running.report_progress(progress, message)


# Every deferred endpoint, by "module:qualname", for executors that run the
# work in another process (a Celery worker imports the app, which registers).
ENDPOINTS: dict[str, Callable[..., Any]] = {}


def endpoint_name(endpoint: Callable[..., Any]) -> str:
    return f"{endpoint.__module__}:{endpoint.__qualname__}"


@overload
def deferred(endpoint: Callable[P, Awaitable[R]], /) -> Callable[P, Awaitable[R]]: ...
@overload
def deferred(endpoint: Callable[P, R], /) -> Callable[P, Awaitable[R]]: ...
@overload
def deferred(
    *, rerun: bool = False
) -> Callable[[Callable[P, Any]], Callable[P, Awaitable[Any]]]: ...
def deferred(endpoint: Callable[P, Any] | None = None, /, *, rerun: bool = False) -> Any:
    """Make an endpoint deferred: it is validated as usual, then runs as an operation.

    Works for async and sync endpoints of Starlette and FastAPI; sync ones
    run on the executor's threads. Put it below the route decorator::

        @app.post("/reports")
        @repoll.deferred
        async def make_report(spec: ReportSpec) -> Report: ...

    ``@repoll.deferred(rerun=True)`` declares the work safe to run again: on a
    Celery executor, a worker that dies mid-operation leaves the task to be
    redelivered instead of failing the operation.
    """
    if endpoint is None:
        return functools.partial(deferred, rerun=rerun)
    name = endpoint_name(endpoint)
    ENDPOINTS[name] = endpoint

    async def hand_off_if_remote(running: RunningOperation, args: Any, kwargs: Any) -> None:
        remote = remote_executor(running.server.executor)
        if remote is not None:
            request = _current_request.get()
            route = request.scope.get("route") if request is not None else None
            status = getattr(route, "status_code", None) or 200
            call = RemoteCall(name, endpoint, tuple(args), dict(kwargs), status, rerun)
            await remote.hand_off(running, call)
            raise HandedOff

    if inspect.iscoroutinefunction(endpoint):

        @functools.wraps(endpoint)
        async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
            running = await _defer(handing_off=_remote())
            await hand_off_if_remote(running, args, kwargs)
            return await endpoint(*args, **kwargs)

        wrapper = run_async
    else:

        @functools.wraps(endpoint)
        async def run_sync(*args: P.args, **kwargs: P.kwargs) -> Any:
            running = await _defer(handing_off=_remote())
            await hand_off_if_remote(running, args, kwargs)
            return await running.run_sync(functools.partial(endpoint, *args, **kwargs))

        wrapper = run_sync
    setattr(cast(Any, wrapper), DEFERRED_MARK, True)
    return wrapper


def _remote() -> bool:
    """Whether the work of a @deferred endpoint goes to another process."""
    request = _current_request.get()
    return request is not None and remote_executor(request.server.executor) is not None


def is_deferred(endpoint: object) -> bool:
    return bool(getattr(endpoint, DEFERRED_MARK, False))
