"""Where operations live: two small interfaces, four backends, and what a new one needs.

Memory (tests, one process), SQLite (the embedded default, one host),
Redis and PostgreSQL (several instances). Every backend passes the same
contract suite (``tests/test_store_contract.py``).

This is the namespace for people who write a store of their own: implement
:class:`Store` over :class:`Operation` records (their final responses are
:class:`StoredResponse`), and :class:`SharedStore` as well if several
processes may use one at once; raise :class:`DuplicateOperation` for a taken
idempotency key, :class:`StoreUnavailable` when the backend is down or busy
and :class:`StoreNotOpen` when used before :meth:`Store.open`, and pass the
instance as ``store=`` to ``repoll.install``. Like :mod:`repoll`, it loads
each name on first use: ``RedisStore`` needs the ``redis`` extra,
``PostgresStore`` the ``postgres`` one.
"""

import typing as _typing

from .._exports import lazy_exports as _lazy_exports

# The extension surface, defined once: each name and the module that defines it.
_PUBLIC: dict[str, str] = {
    "Store": "._store",
    "SharedStore": "._store",
    "Operation": "..core._model",
    "StoredResponse": "..core._model",
    "OperationStatus": "..core._status",
    "MemoryStore": "._store",
    "SQLiteStore": "._sqlite",
    "RedisStore": "._redis",
    "PostgresStore": "._postgres",
    "StoreError": ".._errors",
    "StoreUnavailable": ".._errors",
    "StoreNotOpen": ".._errors",
    "DuplicateOperation": ".._errors",
}

if not _typing.TYPE_CHECKING:
    # Hidden from type checkers, which read the imports below instead.
    __all__ = sorted(_PUBLIC)  # noqa: PLE0605 - derived from the table, on purpose
    __getattr__, __dir__ = _lazy_exports(__name__, _PUBLIC)
else:
    from .._errors import DuplicateOperation as DuplicateOperation
    from .._errors import StoreError as StoreError
    from .._errors import StoreNotOpen as StoreNotOpen
    from .._errors import StoreUnavailable as StoreUnavailable
    from ..core._model import Operation as Operation
    from ..core._model import StoredResponse as StoredResponse
    from ..core._status import OperationStatus as OperationStatus
    from ._postgres import PostgresStore as PostgresStore
    from ._redis import RedisStore as RedisStore
    from ._sqlite import SQLiteStore as SQLiteStore
    from ._store import MemoryStore as MemoryStore
    from ._store import SharedStore as SharedStore
    from ._store import Store as Store
