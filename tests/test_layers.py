"""The layers: the protocol core imports no event loop, framework, client or driver.

``repoll.core`` decides; the shells (server, clients, stores, executors)
do the I/O and carry its answers. A core module that imported asyncio or a
web framework could start doing I/O or depend on a clock the tests cannot
control, so every module under ``src/repoll/core`` is parsed (not
imported: an import inside a function counts as much as one at the top)
and so is every repoll module outside the core that it imports, however
indirectly (package ``__init__`` files aside: any import runs those).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
CORE = SRC / "repoll" / "core"

FORBIDDEN = frozenset(
    {
        "asyncio",
        "anyio",
        "starlette",
        "fastapi",
        "httpx",
        "requests",
        "uvicorn",
        "redis",
        "psycopg",
        "celery",
        "sqlite3",
        "aiohttp",
        "a2wsgi",
        "django",
        "flask",
        "litestar",
    }
)


def _module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _path_of(module: str, root: Path = SRC) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, root: Path = SRC) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, at any depth."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found.append((node.lineno, base))
            # ``from . import _headers`` names modules, not attributes.
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _offences(root: Path = SRC) -> list[str]:
    """Forbidden imports reachable from the core, as 'module:line imports name (via ...)'."""
    offences: list[str] = []
    queue: list[tuple[Path, tuple[str, ...]]] = [
        (path, ()) for path in sorted((root / "repoll" / "core").rglob("*.py"))
    ]
    seen: set[Path] = set()
    while queue:
        path, via = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        module = _module_name(path, root)
        for line, name in _imports(path, root):
            top = name.split(".")[0]
            if top in FORBIDDEN:
                route = f" (via {' -> '.join(via)})" if via else ""
                offences.append(f"{module}:{line} imports {name}{route}")
            elif top == "repoll":
                target = _path_of(name, root)
                # Packages' __init__ files are not followed: importing any
                # repoll module runs them anyway, and ``repoll/__init__``
                # re-exports the shells by design. What counts is what a core
                # module itself reaches for.
                if target is not None and target.name != "__init__.py" and target not in seen:
                    queue.append((target, (*via, module)))
    return offences


def test_the_core_imports_no_io_library():
    assert sorted(CORE.rglob("*.py")), "no core modules found: is the layout still src/repoll/core?"
    assert _offences() == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import asyncio\n", ["asyncio"]),
        ("def f():\n    import httpx.client\n", ["httpx.client"]),
        (
            "from starlette.requests import Request\n",
            ["starlette.requests", "starlette.requests.Request"],
        ),
        ("from .. import _errors\n", ["repoll", "repoll._errors"]),
        ("from ._model import Operation\n", ["repoll.core._model", "repoll.core._model.Operation"]),
    ],
)
def test_the_import_reader_sees_every_form(tmp_path, source, expected):
    # A file placed where a core module would be, so relative imports resolve.
    fake = tmp_path / "repoll" / "core" / "_fake.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(source)
    assert [name for _, name in _imports(fake, tmp_path)] == expected


def test_an_io_import_one_step_outside_the_core_is_caught(tmp_path):
    package = tmp_path / "repoll"
    (package / "core").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "core" / "__init__.py").write_text("")
    (package / "core" / "_rule.py").write_text("from .._helper import f\n")
    (package / "_helper.py").write_text("def f():\n    import sqlite3\n")
    (package / "core" / "_other.py").write_text("from .. import _errors\n")
    (package / "_errors.py").write_text("")
    assert _offences(tmp_path) == [
        "repoll._helper:2 imports sqlite3 (via repoll.core._rule)",
    ]
