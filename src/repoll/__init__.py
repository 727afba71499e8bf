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
from ._executor import Executor, InProcessExecutor
from ._headers import Preferences, parse_prefer, parse_retry_after, parse_retry_after_ms
from ._model import Operation, StoredResponse
from ._pacing import PacingPolicy
from ._poll import Hop, PollOptions
from ._status import OperationStatus
from ._store import MemoryStore, Store
from ._testing import is_testing, set_testing, testing

if TYPE_CHECKING:
    from ._celery import CeleryExecutor
    from ._deferral import (
        RunningOperation,
        current_operation,
        defer,
        deferred,
        report_progress,
    )
    from ._handle import AsyncOperationHandle, OperationHandle
    from ._httpx import AsyncPollingTransport, PollingTransport
    from ._install import install
    from ._middleware import PollingMiddleware
    from ._principal import cookie_principal
    from ._requests import PollingAdapter
    from ._routes import deferrable
    from ._server import PollingServer
    from ._sqlite_store import SQLiteStore

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
    "CeleryExecutor": "._celery",
    "AsyncOperationHandle": "._handle",
    "OperationHandle": "._handle",
    "PollingAdapter": "._requests",
    "AsyncPollingTransport": "._httpx",
    "PollingTransport": "._httpx",
    "install": "._install",
    "PollingMiddleware": "._middleware",
    "PollingServer": "._server",
    "RunningOperation": "._deferral",
    "cookie_principal": "._principal",
    "current_operation": "._deferral",
    "defer": "._deferral",
    "deferrable": "._routes",
    "deferred": "._deferral",
    "report_progress": "._deferral",
    "SQLiteStore": "._sqlite_store",
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
