"""Deferred work on Celery workers: the server's side (the executor).

On the server, :class:`CeleryExecutor` takes over a deferred endpoint's call:
it encodes the endpoint's validated arguments as JSON (with pydantic, from the
endpoint's own annotations: the arguments travel, never the request's
credentials) and sends one Celery task. The worker's side (``repoll worker
MODULE:APP``), which decodes the arguments, calls the same endpoint function
and writes progress and the final response to the store, is
:mod:`repoll.executors._celery_worker`; every server instance's held polls
wake through the store's announcements.

The two halves meet only through the broker and the store, and share what
both must agree on: the task names and the argument codec, kept here. A
server imports no worker machinery, and a worker imports this module only
for those.

What happens when a worker dies is told in the worker's module.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from .._errors import MissingExtraError, RepollError
from ..core._model import Operation
from ..stores._store import Store, shared_store, update_operation
from ._in_process import RemoteCall, RemoteExecutor

try:
    import celery
except ModuleNotFoundError as exc:
    raise MissingExtraError("celery", "celery") from exc

from pydantic import TypeAdapter

if TYPE_CHECKING:
    from ..server._deferral import RunningOperation

T = TypeVar("T")

TASK = "repoll.run_operation"
RERUN_TASK = "repoll.run_operation_rerunnable"
DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"


class NotTransferable(RepollError):
    """An endpoint argument that cannot travel to a worker (a Request, a database session)."""


def type_adapter(annotation: Any) -> TypeAdapter[Any]:
    """How values of ``annotation`` become JSON and back (anything, when unannotated)."""
    return TypeAdapter(Any if annotation is inspect.Parameter.empty else annotation)


def encode_arguments(endpoint: Callable[..., Any], args: Any, kwargs: Any) -> dict[str, Any]:
    """The call's arguments as JSON-ready values, named, from the endpoint's annotations."""
    signature = inspect.signature(endpoint, eval_str=True)
    bound = signature.bind(*args, **kwargs)
    encoded = {}
    for name, value in bound.arguments.items():
        annotation = signature.parameters[name].annotation
        try:
            encoded[name] = type_adapter(annotation).dump_python(value, mode="json")
        except Exception as exc:
            msg = (
                f"argument {name!r} of {endpoint.__qualname__} cannot travel to a Celery "
                f"worker ({type(value).__name__}); pass data, not objects such as a Request"
            )
            raise NotTransferable(msg) from exc
    return encoded


def decode_arguments(endpoint: Callable[..., Any], encoded: dict[str, Any]) -> dict[str, Any]:
    signature = inspect.signature(endpoint, eval_str=True)
    return {
        name: type_adapter(signature.parameters[name].annotation).validate_python(value)
        for name, value in encoded.items()
    }


class CeleryExecutor(RemoteExecutor):
    """An executor that sends deferred work to Celery workers.

    ``repoll.install(app, store="redis://...", executor=repoll.CeleryExecutor(broker=...))``.
    The store must be shared (Redis or PostgreSQL): the workers write to it.
    """

    def __init__(
        self,
        app: celery.Celery | None = None,
        *,
        broker: str = DEFAULT_BROKER,
        queue: str = "repoll",
        concurrency: int = 64,
    ) -> None:
        if app is None:
            # The app is also the worker's (its tasks are registered on it);
            # imported here so that a server loads no more of the worker than this.
            from ._celery_worker import make_celery  # noqa: PLC0415

            app = make_celery(broker)
        self.app = app
        self.queue = queue
        self._concurrency = concurrency  # for Retry-After estimates only

    @property
    def concurrency(self) -> int:
        return self._concurrency

    @property
    def waiting(self) -> int:
        return 0

    def has_free_slot(self) -> bool:
        return False  # operations wait queued until a worker starts them

    def slot(self, operation_id: str) -> AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    async def run_sync(self, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn)

    def track(self, operation_id: str, task: asyncio.Task[None]) -> None:
        return None

    def cancel(self, operation_id: str) -> bool:
        return False  # the worker hears cancellations through the store

    async def shutdown(self, grace: float) -> list[str]:
        return []  # the work is the workers'; nothing runs here

    async def hand_off(self, running: RunningOperation, call: RemoteCall) -> None:
        server = running.server
        if shared_store(server.store) is None:
            msg = "a Celery executor needs a shared store (redis:// or postgresql://)"
            raise RepollError(msg)
        payload = {
            "operation": running.id,
            "operation_url": running.url,  # for the worker's OperationCanceled
            "endpoint": call.name,
            "arguments": encode_arguments(call.endpoint, call.args, call.kwargs),
            "status_code": call.status_code,
            "store": _store_url(server.store),
            "retention": server.retention,
            "owner_ttl": server.owner_ttl,
            "heartbeat_interval": server.heartbeat_interval,
        }

        # In the broker the work has no owner: no server may declare it lost
        # just because the instance that accepted it went away. (Not a state
        # change: the operation stays queued; only who answers for it changes.)
        def release(op: Operation) -> Operation | None:
            return op.evolve(owner=None) if op.owner else None

        await update_operation(server.store, running.id, release)
        task = RERUN_TASK if call.rerun else TASK
        await asyncio.to_thread(
            self.app.send_task, task, args=[json.dumps(payload)], queue=self.queue
        )


def _store_url(store: Store) -> str:
    url = getattr(store, "url", None)
    if not isinstance(url, str):
        msg = "the store must say how workers reach it (a `url` attribute)"
        raise RepollError(msg)
    prefix = getattr(store, "prefix", None)
    if prefix and prefix != "repoll:" and url.startswith(("redis://", "rediss://")):
        url += ("&" if "?" in url else "?") + f"prefix={prefix}"
    return url
