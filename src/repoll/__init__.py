"""repoll: long HTTP work, pollable for every endpoint.

The server side (``install``, ``deferred``, ``PollingMiddleware``) needs the
``server`` extra; the httpx transports need ``client``. The protocol core
needs nothing. Every public name is loaded on first use, so importing repoll
never fails for a missing extra: using the name does, with the install hint.

What application code uses is here; what people who write their own store
need (``Store``, ``Operation``, ``StoredResponse``, ...) is in :mod:`repoll.stores`.
"""

import typing as _typing

from ._exports import lazy_exports as _lazy_exports

__version__ = "0.1.0"

# The public surface, defined once: each name and the module that defines it.
# __all__, dir(repoll) and loading on first use all come from this table; the
# block under TYPE_CHECKING repeats it for type checkers (tests/test_public_api.py
# checks that the two agree).
_PUBLIC: dict[str, str] = {
    # Server: make endpoints pollable (the ``server`` extra).
    "install": ".server._install",
    "PollingMiddleware": ".server._middleware",
    "PollingServer": ".server._engine",
    "deferred": ".server._endpoints",
    "defer": ".server._endpoints",
    "defer_sync": ".server._endpoints",
    "wsgi": ".server._wsgi",
    "django_app": ".server._django",
    "litestar_app": ".server._litestar",
    "deferrable": ".server._routes",
    "report_progress": ".server._endpoints",
    "current_operation": ".server._endpoints",
    "WorkContext": ".server._deferral",
    "RunningOperation": ".server._deferral",
    "cookie_principal": ".server._principal",
    "PacingPolicy": ".core._pacing",
    "ClientProfile": ".core._profiles",
    "Limits": ".core._config",
    "Lifetimes": ".core._config",
    "UrlPolicy": ".core._config",
    # Where operations live and where their work runs.
    "MemoryStore": ".stores._store",
    "SQLiteStore": ".stores._sqlite",
    "Executor": ".executors._in_process",
    "InProcessExecutor": ".executors._in_process",
    "CeleryExecutor": ".executors._celery",
    # Clients: follow pollable responses (the ``client`` and ``requests`` extras).
    "PollingTransport": ".clients._httpx",
    "AsyncPollingTransport": ".clients._httpx",
    "PollingAdapter": ".clients._requests",
    "OperationHandle": ".clients._handle",
    "AsyncOperationHandle": ".clients._handle",
    "aiohttp_polling": ".clients._aiohttp",
    "PollOptions": ".core._poll",
    "BreakerPolicy": ".core._breaker",
    "Hop": ".core._poll",
    "OperationStatus": ".core._status",
    # Tests of applications: skip the client's waits.
    "testing": "._testing",
    "set_testing": "._testing",
    "is_testing": "._testing",
    # Exceptions (the tree is drawn in _errors.py).
    "RepollError": "._errors",
    "MissingExtraError": "._errors",
    "ProtocolError": "._errors",
    "CrossOriginError": "._errors",
    "NotDeferrableError": "._errors",
    "StoreError": "._errors",
    "StoreUnavailable": "._errors",
    "StoreURLError": "._errors",
    "OperationError": "._errors",
    "OperationNotFound": "._errors",
    "OperationExpired": "._errors",
    "OperationFailed": "._errors",
    "OperationCanceled": "._errors",
    "CircuitOpenError": "._errors",
    "PollingTimeout": "._errors",
}

if not _typing.TYPE_CHECKING:
    # Hidden from type checkers, which read the imports below instead: they
    # then flag a misspelt ``repoll.name`` and know what ``import *`` binds.
    __all__ = sorted(_PUBLIC)  # noqa: PLE0605 - derived from the table, on purpose
    __getattr__, __dir__ = _lazy_exports(__name__, _PUBLIC)
else:
    from ._errors import CircuitOpenError as CircuitOpenError
    from ._errors import CrossOriginError as CrossOriginError
    from ._errors import MissingExtraError as MissingExtraError
    from ._errors import NotDeferrableError as NotDeferrableError
    from ._errors import OperationCanceled as OperationCanceled
    from ._errors import OperationError as OperationError
    from ._errors import OperationExpired as OperationExpired
    from ._errors import OperationFailed as OperationFailed
    from ._errors import OperationNotFound as OperationNotFound
    from ._errors import PollingTimeout as PollingTimeout
    from ._errors import ProtocolError as ProtocolError
    from ._errors import RepollError as RepollError
    from ._errors import StoreError as StoreError
    from ._errors import StoreUnavailable as StoreUnavailable
    from ._errors import StoreURLError as StoreURLError
    from ._testing import is_testing as is_testing
    from ._testing import set_testing as set_testing
    from ._testing import testing as testing
    from .clients._aiohttp import aiohttp_polling as aiohttp_polling
    from .clients._handle import AsyncOperationHandle as AsyncOperationHandle
    from .clients._handle import OperationHandle as OperationHandle
    from .clients._httpx import AsyncPollingTransport as AsyncPollingTransport
    from .clients._httpx import PollingTransport as PollingTransport
    from .clients._requests import PollingAdapter as PollingAdapter
    from .core._breaker import BreakerPolicy as BreakerPolicy
    from .core._config import Lifetimes as Lifetimes
    from .core._config import Limits as Limits
    from .core._config import UrlPolicy as UrlPolicy
    from .core._pacing import PacingPolicy as PacingPolicy
    from .core._poll import Hop as Hop
    from .core._poll import PollOptions as PollOptions
    from .core._profiles import ClientProfile as ClientProfile
    from .core._status import OperationStatus as OperationStatus
    from .executors._celery import CeleryExecutor as CeleryExecutor
    from .executors._in_process import Executor as Executor
    from .executors._in_process import InProcessExecutor as InProcessExecutor
    from .server._deferral import RunningOperation as RunningOperation
    from .server._deferral import WorkContext as WorkContext
    from .server._django import django_app as django_app
    from .server._endpoints import current_operation as current_operation
    from .server._endpoints import defer as defer
    from .server._endpoints import defer_sync as defer_sync
    from .server._endpoints import deferred as deferred
    from .server._endpoints import report_progress as report_progress
    from .server._engine import PollingServer as PollingServer
    from .server._install import install as install
    from .server._litestar import litestar_app as litestar_app
    from .server._middleware import PollingMiddleware as PollingMiddleware
    from .server._principal import cookie_principal as cookie_principal
    from .server._routes import deferrable as deferrable
    from .server._wsgi import wsgi as wsgi
    from .stores._sqlite import SQLiteStore as SQLiteStore
    from .stores._store import MemoryStore as MemoryStore
