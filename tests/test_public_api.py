"""The public surfaces: ``repoll`` for applications, ``repoll.stores`` for store writers.

Each package lists its names once, in its ``_PUBLIC`` table; these tests
check that everything else (``__all__``, ``dir()``, the imports type checkers
read, where each name is defined) agrees with that table.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest

import repoll
import repoll.stores
from repoll._errors import MissingExtraError, require

PACKAGES = [repoll, repoll.stores]

# What application code imports from repoll today: these must keep working.
COMPATIBLE = {
    "install",
    "deferred",
    "defer",
    "deferrable",
    "report_progress",
    "current_operation",
    "PollingTransport",
    "AsyncPollingTransport",
    "PollingAdapter",
    "OperationHandle",
    "AsyncOperationHandle",
    "PollOptions",
    "PacingPolicy",
    "Limits",
    "Lifetimes",
    "UrlPolicy",
    "RepollError",
    "OperationError",
    "OperationFailed",
    "OperationCanceled",
    "OperationExpired",
    "OperationNotFound",
    "PollingTimeout",
    "ProtocolError",
    "CrossOriginError",
    "NotDeferrableError",
    "StoreUnavailable",
    "MissingExtraError",
    "CeleryExecutor",
    "InProcessExecutor",
    "Executor",
    "MemoryStore",
    "SQLiteStore",
    "PollingMiddleware",
    "PollingServer",
    "RunningOperation",
    "cookie_principal",
    "OperationStatus",
    "testing",
    "set_testing",
    "is_testing",
}

# Internals that left repoll's surface, and where the ones store writers need went.
INTERNAL = {
    "parse_prefer",
    "Preferences",
    "InvalidTransition",
    "parse_retry_after",
    "parse_retry_after_ms",
}
FOR_STORE_WRITERS = {"Store", "Operation", "StoredResponse", "DuplicateOperation", "StoreNotOpen"}


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _type_checking_imports(package: types.ModuleType) -> dict[str, str]:
    """What the TYPE_CHECKING branch of the package's __init__.py imports: name -> module."""
    tree = ast.parse(Path(package.__file__).read_text())
    blocks = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
    ]
    assert len(blocks) == 1, "one `if TYPE_CHECKING` block"
    block = blocks[0]
    # `if not TYPE_CHECKING: <runtime> else: <imports>`, or `if TYPE_CHECKING: <imports>`.
    branch = block.orelse if isinstance(block.test, ast.UnaryOp) else block.body
    found: dict[str, str] = {}
    for statement in branch:
        if not isinstance(statement, ast.ImportFrom):
            continue
        for alias in statement.names:
            # `import X as X` marks a re-export for mypy --strict and pyright.
            assert alias.asname == alias.name, f"{alias.name}: import it `as {alias.name}`"
            assert alias.name not in found, f"{alias.name} imported twice"
            found[alias.name] = "." * statement.level + (statement.module or "")
    return found


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_all_is_the_table(package):
    assert package.__all__ == sorted(package._PUBLIC)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_the_type_checking_imports_match_the_table(package):
    assert _type_checking_imports(package) == package._PUBLIC


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_every_name_comes_from_the_module_that_defines_it(package):
    for name, module in package._PUBLIC.items():
        value = getattr(package, name)
        assert not isinstance(value, types.ModuleType), name
        expected = importlib.util.resolve_name(module, package.__name__)
        assert value.__module__ == expected, f"{name} is defined in {value.__module__}"


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_dir_lists_exactly_the_public_names(package):
    public = [name for name in dir(package) if not name.startswith("_")]
    assert public == package.__all__
    assert "__version__" in dir(repoll)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_an_unknown_name_is_an_attribute_error(package):
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        package.nope


def test_every_name_imports_in_a_fresh_interpreter():
    code = (
        "import json, sys, types\n"
        "import repoll, repoll.stores\n"
        "loaded = sorted(n for n in vars(repoll) if not n.startswith('_'))\n"
        "before = [n for n in dir(repoll) if not n.startswith('_')]\n"
        "for package in (repoll, repoll.stores):\n"
        "    for name in package.__all__:\n"
        "        exec(f'from {package.__name__} import {name}')\n"
        "from repoll import *\n"
        "extra = sorted(\n"
        "    n for n, v in vars(repoll).items()\n"
        "    if not n.startswith('_') and n not in repoll.__all__\n"
        "    and not (isinstance(v, types.ModuleType) and v.__name__ == f'repoll.{n}')\n"
        ")\n"
        "print(json.dumps({'loaded': loaded, 'before': before, 'extra': extra}))\n"
    )
    seen = json.loads(_run(code))
    # `import repoll` binds nothing public: every name loads on first use ...
    assert seen["loaded"] == ["stores"]  # (the subpackage imported by the code above)
    assert seen["before"] == repoll.__all__
    # ... and once all are loaded, nothing else has appeared but repoll's subpackages.
    assert seen["extra"] == []


def test_no_module_or_private_helper_leaks():
    for package in PACKAGES:
        for name in dir(package):
            if name.startswith("__"):
                continue
            assert not name.startswith("_"), f"{package.__name__}.{name} is listed"
            assert not isinstance(getattr(package, name), types.ModuleType), name
    for helper in ("annotations", "importlib", "TYPE_CHECKING", "Any", "require", "typing"):
        assert not hasattr(repoll, helper), helper


def test_names_users_import_keep_working():
    assert set(repoll.__all__) >= COMPATIBLE
    for name in COMPATIBLE:
        assert getattr(repoll, name) is not None


def test_internals_are_not_public():
    for name in INTERNAL | FOR_STORE_WRITERS:
        assert name not in repoll.__all__, name
        assert not hasattr(repoll, name), name
    assert set(repoll.stores.__all__) >= FOR_STORE_WRITERS
    assert not set(repoll.stores.__all__) & INTERNAL


def test_what_users_receive_is_public():
    # current_operation() returns a WorkContext; PollOptions.on_progress gets Hops.
    returned = typing.get_type_hints(repoll.current_operation)["return"]
    assert returned == repoll.WorkContext | None
    callback = typing.get_type_hints(repoll.PollOptions)["on_progress"]
    assert repoll.Hop in typing.get_args(typing.get_args(callback)[0])[0]
    # What a store hands back and takes is in the store writers' namespace.
    hints = typing.get_type_hints(repoll.stores.Store.get)
    assert hints["return"] == repoll.stores.Operation | None
    assert repoll.stores.MemoryStore is repoll.MemoryStore
    assert repoll.stores.SQLiteStore is repoll.SQLiteStore


def test_exception_tree():
    assert issubclass(repoll.PollingTimeout, repoll.OperationError)
    assert issubclass(repoll.PollingTimeout, TimeoutError)
    assert issubclass(repoll.OperationNotFound, repoll.RepollError)
    assert issubclass(repoll.CrossOriginError, repoll.ProtocolError)
    assert issubclass(repoll.MissingExtraError, ImportError)
    assert issubclass(repoll.NotDeferrableError, RuntimeError)
    for store_error in (
        repoll.StoreUnavailable,
        repoll.StoreURLError,
        repoll.stores.StoreNotOpen,
        repoll.stores.DuplicateOperation,
    ):
        assert issubclass(store_error, repoll.StoreError)
    assert issubclass(repoll.StoreError, repoll.RepollError)
    assert issubclass(repoll.StoreURLError, ValueError)
    assert issubclass(repoll.stores.StoreNotOpen, RuntimeError)
    assert repoll.stores.StoreError is repoll.StoreError


def test_every_exception_is_in_the_documented_tree():
    import repoll._errors as errors

    lines = errors.__doc__.splitlines()
    for value in vars(errors).values():
        if not isinstance(value, type) or not issubclass(value, errors.RepollError):
            continue
        name = value.__name__
        [line] = [line for line in lines if re.search(rf"(── |^    ){name}\b", line)]
        exported = name in repoll.__all__ or name in repoll.stores.__all__
        assert exported != ("internal:" in line), f"{name}: exported, or drawn as internal"


def test_missing_extra_names_the_install_command():
    with pytest.raises(MissingExtraError, match=r"pip install 'repoll\[client\]'") as caught:
        require("surely_not_an_installed_module", "client")
    assert caught.value.extra == "client"


def test_the_core_imports_without_any_extra():
    # Block the optional dependencies and import the core in a fresh interpreter.
    code = (
        "import sys\n"
        "for name in ('httpx', 'starlette', 'fastapi', 'uvicorn', 'redis', 'psycopg'):\n"
        "    sys.modules[name] = None\n"
        "import repoll\n"
        "from repoll import PollOptions, MemoryStore, SQLiteStore, RepollError\n"
        "from repoll.stores import Store, Operation, StoredResponse\n"
        "for name in ('PollingTransport', 'install'):\n"
        "    try:\n"
        "        getattr(repoll, name)\n"
        "    except repoll.MissingExtraError as exc:\n"
        "        print(exc)\n"
        "try:\n"
        "    from repoll.stores import RedisStore\n"
        "except repoll.MissingExtraError as exc:\n"
        "    print(exc)\n"
    )
    out = _run(code)
    for extra in ("client", "server", "redis"):
        assert f"repoll[{extra}]" in out
