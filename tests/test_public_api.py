"""The package's public surface: exactly ``__all__``, every name importable."""

from __future__ import annotations

import subprocess
import sys

import pytest

import repoll
from repoll._errors import MissingExtraError, require

PUBLIC = {
    "CeleryExecutor",
    "cookie_principal",
    "StoreUnavailable",
    "DuplicateOperation",
    "AsyncOperationHandle",
    "OperationHandle",
    "PollingAdapter",
    "CrossOriginError",
    "is_testing",
    "set_testing",
    "testing",
    "AsyncPollingTransport",
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
    "OperationNotFound",
    "OperationStatus",
    "PacingPolicy",
    "PollOptions",
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
    "StoredResponse",
    "current_operation",
    "defer",
    "deferrable",
    "deferred",
    "install",
    "parse_prefer",
    "parse_retry_after",
    "parse_retry_after_ms",
    "report_progress",
}


def test_all_is_exactly_the_public_names():
    assert set(repoll.__all__) == PUBLIC
    assert sorted(repoll.__all__) == repoll.__all__


def test_every_public_name_resolves():
    for name in repoll.__all__:
        assert getattr(repoll, name) is not None


def test_no_public_module_leaks():
    modules = {name for name in dir(repoll) if not name.startswith("_")}
    assert modules <= PUBLIC | {"annotations", "importlib", "TYPE_CHECKING", "Any"}


def test_exception_tree():
    assert issubclass(repoll.PollingTimeout, repoll.OperationError)
    assert issubclass(repoll.PollingTimeout, TimeoutError)
    assert issubclass(repoll.OperationNotFound, repoll.RepollError)
    assert issubclass(repoll.InvalidTransition, repoll.ProtocolError)
    assert issubclass(repoll.MissingExtraError, ImportError)
    assert issubclass(repoll.NotDeferrableError, RuntimeError)


def test_missing_extra_names_the_install_command():
    with pytest.raises(MissingExtraError, match=r"pip install 'repoll\[client\]'") as caught:
        require("surely_not_an_installed_module", "client")
    assert caught.value.extra == "client"


def test_the_core_imports_without_any_extra():
    # Block the optional dependencies and import the core in a fresh interpreter.
    code = (
        "import sys\n"
        "for name in ('httpx', 'starlette', 'fastapi', 'uvicorn'):\n"
        "    sys.modules[name] = None\n"
        "import repoll\n"
        "from repoll import PollOptions, parse_prefer, MemoryStore, SQLiteStore\n"
        "try:\n"
        "    repoll.PollingTransport\n"
        "except repoll.MissingExtraError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "repoll[client]" in result.stdout
