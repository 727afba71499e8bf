"""The package as a user installs it: ``python -m build``, then the wheel in clean venvs.

The distributions are built once (the sdist, then the wheel from the sdist, as
``python -m build`` does, so a file missing from the sdist breaks the wheel).
The wheel is installed (not editable) into two new venvs: one with no extras,
where the core works and every server or client name raises
:class:`repoll.MissingExtraError` naming its ``pip install``; and one with every
extra but ``dev``, where every public name loads, each extra's smoke check
passes and the ``repoll`` command runs. The venvs' commands run in an empty
directory, and each checks that ``repoll`` came from its venv, not this tree.
"""

from __future__ import annotations

import email
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest

import repoll

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
# dev and bench serve the source tree (its tests, its benchmark suite), not the wheel.
TREE_ONLY = {"dev", "bench"}
EXTRAS = sorted(set(PROJECT["optional-dependencies"]) - TREE_ONLY)

# One smoke check per extra (every extra but dev and bench): it runs in the venv with all
# of them, after ``import repoll, repoll.stores``, in an empty working directory.
SMOKE = {
    "server": "from starlette.applications import Starlette; repoll.install(Starlette())",
    "fastapi": "from fastapi import FastAPI; repoll.install(FastAPI())",
    "wsgi": "repoll.wsgi(lambda environ, start_response: [])",
    "flask": "import flask; repoll.wsgi(flask.Flask('smoke'))",
    "django": "from django.conf import settings; settings.configure(); repoll.django_app()",
    "litestar": "import litestar; repoll.litestar_app(litestar.Litestar([]))",
    "client": "repoll.PollingTransport(); repoll.AsyncPollingTransport()",
    "requests": "import requests; requests.Session().mount('http://', repoll.PollingAdapter())",
    "aiohttp": "repoll.aiohttp_polling()",
    "otel": "import repoll._telemetry as t; assert t.ENABLED and not t.active()",
    "cli": "from repoll.cli._demo import create_app; create_app(store='memory://')",
    "redis": "repoll.stores.RedisStore('redis://127.0.0.1:6379/0')",
    "postgres": "repoll.stores.PostgresStore('postgresql://127.0.0.1:5432/repoll')",
    "celery": "import celery; repoll.CeleryExecutor(celery.Celery('smoke'))",
}

# What both venvs report: where repoll came from, its version, and every public
# name of repoll and repoll.stores that a missing extra keeps from loading.
REPORT = """
import importlib.metadata, importlib.resources, json, sys
import repoll, repoll.stores

missing = {}
for module in (repoll, repoll.stores):
    for name in module.__all__:
        try:
            getattr(module, name)
        except repoll.MissingExtraError as exc:
            missing[f"{module.__name__}.{name}"] = str(exc)
package = importlib.resources.files("repoll")
report = {
    "prefix": sys.prefix,
    "file": repoll.__file__,
    "version": repoll.__version__,
    "metadata_version": importlib.metadata.version("repoll"),
    "missing": missing,
    "py_typed": package.joinpath("py.typed").is_file(),
    "js": package.joinpath("server/static/repoll.js").read_text(encoding="utf-8"),
}
"""

BARE = (
    REPORT
    + """
from repoll.core._headers import parse_retry_after, retry_after_headers
from repoll.core._status import Event, OperationStatus, transition

report["core"] = [
    parse_retry_after("3", now=0.0),
    retry_after_headers(0.75),
    transition(OperationStatus.QUEUED, Event.START),
]
try:
    repoll.install(object())
except repoll.MissingExtraError as exc:
    report["install"] = [type(exc).__name__, isinstance(exc, ImportError), str(exc)]
print(json.dumps(report))
"""
)

FULL = (
    REPORT
    + """
failures = {}
for extra, code in json.loads(sys.argv[1]).items():
    try:
        exec(code, {"repoll": repoll})
    except Exception as exc:
        failures[extra] = f"{type(exc).__name__}: {exc}"
report["failures"] = failures
print(json.dumps(report))
"""
)


def run(args: list[str], cwd: Path, timeout: float = 600) -> str:
    """Run ``args`` away from this tree (no PYTHONPATH, no active venv); its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        pytest.fail(
            f"{args} exited {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        )
    return done.stdout


@dataclass(frozen=True)
class Dists:
    sdist: Path
    wheel: Path


@dataclass(frozen=True)
class Venv:
    root: Path
    cwd: Path  # an empty directory to run in

    @property
    def bin(self) -> Path:
        return self.root / ("Scripts" if os.name == "nt" else "bin")

    @property
    def python(self) -> Path:
        return self.bin / ("python.exe" if os.name == "nt" else "python")

    def report(self, script: str, *args: str) -> dict[str, object]:
        report: dict[str, object] = json.loads(
            run([str(self.python), "-c", script, *args], cwd=self.cwd)
        )
        # From the venv, not from the source tree.
        assert Path(str(report["prefix"])).resolve() == self.root.resolve()
        assert Path(str(report["file"])).resolve().is_relative_to(self.root.resolve())
        return report


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # Removed at the end (pytest keeps its temporary directories, and these venvs are large).
    with tempfile.TemporaryDirectory(prefix="repoll-wheel-") as path:
        yield Path(path)


@pytest.fixture(scope="module")
def dists(workdir: Path) -> Dists:
    out = workdir / "dist"
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], cwd=workdir)
    (sdist,) = out.glob("repoll-*.tar.gz")
    (wheel,) = out.glob("repoll-*.whl")
    return Dists(sdist=sdist, wheel=wheel)


def make_venv(workdir: Path, name: str, requirement: str) -> Venv:
    """A new venv with ``requirement`` installed by pip, as a user would."""
    venv = Venv(root=workdir / name, cwd=workdir / f"{name}-cwd")
    venv.cwd.mkdir()
    # No pip inside (ensurepip takes seconds): this interpreter's pip installs
    # into it with --python. --no-compile: the bytecode would go unused.
    run([sys.executable, "-m", "venv", "--without-pip", str(venv.root)], cwd=workdir)
    pip = [sys.executable, "-m", "pip", "--python", str(venv.python), "install"]
    quiet = ["--disable-pip-version-check", "-q", "--progress-bar", "off", "--no-compile"]
    run([*pip, *quiet, requirement], cwd=venv.cwd)
    return venv


@pytest.fixture(scope="module")
def bare(workdir: Path, dists: Dists) -> Venv:
    return make_venv(workdir, "bare", str(dists.wheel))


@pytest.fixture(scope="module")
def full(workdir: Path, dists: Dists) -> Venv:
    return make_venv(workdir, "full", f"{dists.wheel}[{','.join(EXTRAS)}]")


def metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = (n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(archive.read(name))


def test_every_extra_has_a_smoke_check() -> None:
    assert sorted(SMOKE) == EXTRAS


def test_the_sdist_has_the_sources_docs_and_license(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for name in [
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        "LICENSE",
        "PKG-INFO",
        "src/repoll/__init__.py",
        "src/repoll/py.typed",
        "src/repoll/server/static/repoll.js",
        "docs/protocol.md",
        "examples/flask_app.py",
        "tests/test_wheel.py",
    ]:
        assert name in names, name
    assert not [n for n in names if "__pycache__" in n or n.startswith("repoll.sqlite3")]


def test_the_wheel_has_the_package_data_and_metadata(dists: Dists) -> None:
    assert dists.wheel.name == f"repoll-{repoll.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(dists.wheel) as archive:
        names = set(archive.namelist())
    dist_info = f"repoll-{repoll.__version__}.dist-info"
    for name in [
        "repoll/py.typed",
        "repoll/server/static/repoll.js",
        "repoll/core/__init__.py",
        f"{dist_info}/licenses/LICENSE",
        f"{dist_info}/entry_points.txt",
    ]:
        assert name in names, name
    # Only the package and its metadata: no tests, docs or bench.
    assert {n.split("/", 1)[0] for n in names} == {"repoll", dist_info}

    meta = metadata(dists.wheel)
    assert meta["Version"] == repoll.__version__
    assert meta["License-Expression"] == "MIT"
    assert meta["Requires-Python"] == ">=3.11"
    assert "# repoll" in str(meta.get_payload())  # the README is the long description
    urls = {url.split(",", 1)[0] for url in meta.get_all("Project-URL", [])}
    assert {"Homepage", "Documentation", "Changelog", "Issues"} <= urls
    classifiers = meta.get_all("Classifier", [])
    for classifier in [
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Typing :: Typed",
    ]:
        assert classifier in classifiers
    assert sorted(set(meta.get_all("Provides-Extra", [])) - TREE_ONLY) == EXTRAS


def test_without_extras_the_core_works_and_extras_are_named(bare: Venv) -> None:
    report = bare.report(BARE)
    assert report["version"] == report["metadata_version"] == repoll.__version__
    assert report["py_typed"]
    assert "export" in str(report["js"])
    assert report["core"] == [3.0, {"retry-after": "1", "retry-after-ms": "750"}, "running"]
    assert report["install"] == [
        "MissingExtraError",
        True,
        "'starlette' is not installed; it comes with repoll's 'server' extra: "
        "pip install 'repoll[server]'",
    ]
    missing = report["missing"]
    assert isinstance(missing, dict)
    for name, extra in [
        ("repoll.install", "server"),
        ("repoll.django_app", "server"),
        ("repoll.PollingTransport", "client"),
        ("repoll.PollingAdapter", "requests"),
        ("repoll.aiohttp_polling", "aiohttp"),
        ("repoll.CeleryExecutor", "celery"),
        ("repoll.stores.RedisStore", "redis"),
        ("repoll.stores.PostgresStore", "postgres"),
    ]:
        assert f"pip install 'repoll[{extra}]'" in missing.get(name, ""), name
    # What needs no extra loads without one.
    for name in ["repoll.PollOptions", "repoll.MemoryStore", "repoll.SQLiteStore"]:
        assert name not in missing


def test_with_every_extra_every_name_loads_and_the_command_runs(full: Venv) -> None:
    report = full.report(FULL, json.dumps(SMOKE))
    assert report["version"] == report["metadata_version"] == repoll.__version__
    assert report["missing"] == {}
    assert report["failures"] == {}
    assert report["py_typed"]
    source = (ROOT / "src/repoll/server/static/repoll.js").read_text(encoding="utf-8")
    assert report["js"] == source

    script = full.bin / ("repoll.exe" if os.name == "nt" else "repoll")
    assert "demo" in run([str(script), "--help"], cwd=full.cwd)
    assert "demo" in run([str(full.python), "-m", "repoll", "--help"], cwd=full.cwd)
