"""repoll: long HTTP work, pollable for every endpoint.

The server side (``install``, ``deferred``, ``PollingMiddleware``) needs the
``server`` extra; the httpx transports need ``client``. The protocol core
needs nothing. Optional names are loaded on first use, so importing repoll
never fails for a missing extra: using the name does, with the install hint.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import (
    CrossOriginError,
    DuplicateOperation,
    InvalidTransition,
    MissingExtraError,
    NotDeferrableError,
    OperationCanceled,
    OperationError,
    OperationExpired,
    OperationFailed,
    OperationNotFound,
    PollingTimeout,
    ProtocolError,
    RepollError,
    StoreUnavailable,
)
from ._testing import is_testing, set_testing, testing
from .core._headers import Preferences, parse_prefer, parse_retry_after, parse_retry_after_ms
from .core._model import Operation, StoredResponse
from .core._pacing import PacingPolicy
from .core._poll import Hop, PollOptions
from .core._status import OperationStatus
from .executors._in_process import Executor, InProcessExecutor
from .stores._store import MemoryStore, Store

if TYPE_CHECKING:
    from .clients._handle import AsyncOperationHandle, OperationHandle
    from .clients._httpx import AsyncPollingTransport, PollingTransport
    from .clients._requests import PollingAdapter
    from .executors._celery import CeleryExecutor
    from .server._deferral import (
        RunningOperation,
        current_operation,
        defer,
        deferred,
        report_progress,
    )
    from .server._engine import PollingServer
    from .server._install import install
    from .server._middleware import PollingMiddleware
    from .server._principal import cookie_principal
    from .server._routes import deferrable
    from .stores._sqlite import SQLiteStore

__version__ = "0.1.0"

__all__ = [
    "AsyncOperationHandle",
    "AsyncPollingTransport",
    "CeleryExecutor",
    "CrossOriginError",
    "DuplicateOperation",
    "Executor",
    "Hop",
    "InProcessExecutor",
    "InvalidTransition",
    "MemoryStore",
    "MissingExtraError",
    "NotDeferrableError",
    "Operation",
    "OperationCanceled",
    "OperationError",
    "OperationExpired",
    "OperationFailed",
    "OperationHandle",
    "OperationNotFound",
    "OperationStatus",
    "PacingPolicy",
    "PollOptions",
    "PollingAdapter",
    "PollingMiddleware",
    "PollingServer",
    "PollingTimeout",
    "PollingTransport",
    "Preferences",
    "ProtocolError",
    "RepollError",
    "RunningOperation",
    "SQLiteStore",
    "Store",
    "StoreUnavailable",
    "StoredResponse",
    "cookie_principal",
    "current_operation",
    "defer",
    "deferrable",
    "deferred",
    "install",
    "is_testing",
    "parse_prefer",
    "parse_retry_after",
    "parse_retry_after_ms",
    "report_progress",
    "set_testing",
    "testing",
]

# Names whose modules import optional dependencies: loaded on first use.
_LAZY: dict[str, str] = {
    "CeleryExecutor": ".executors._celery",
    "AsyncOperationHandle": ".clients._handle",
    "OperationHandle": ".clients._handle",
    "PollingAdapter": ".clients._requests",
    "AsyncPollingTransport": ".clients._httpx",
    "PollingTransport": ".clients._httpx",
    "install": ".server._install",
    "PollingMiddleware": ".server._middleware",
    "PollingServer": ".server._engine",
    "RunningOperation": ".server._deferral",
    "cookie_principal": ".server._principal",
    "current_operation": ".server._deferral",
    "defer": ".server._deferral",
    "deferrable": ".server._routes",
    "deferred": ".server._deferral",
    "report_progress": ".server._deferral",
    "SQLiteStore": ".stores._sqlite",
}


def __getattr__(name: str) -> Any:
    try:
        module_name = _LAZY[name]
    except KeyError:
        msg = f"module 'repoll' has no attribute {name!r}"
        raise AttributeError(msg) from None
    value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
