"""The documentation's runnable blocks, run as written.

A fenced ``sh`` or ``python`` block in README.md or docs/*.md preceded by
``<!-- doc-test -->`` is run; ``<!-- doc-test: file NAME -->`` saves the block
as NAME for later blocks. A document's blocks run in order, in one directory
of their own, as a reader pasting them one after another would:

- README.md runs in a copy of the project without a virtualenv: its first
  block (the demo command) makes one, and its Quickstart installs into it;
  nothing of the test's environment leaks in (PATH has no venv on it).
- docs/*.md are read from the repository root with the project's virtualenv
  active (they say so), so their blocks run in a directory whose ``.venv`` and
  ``examples`` are this project's and whose ``.venv/bin`` is first on PATH.

What the test changes, and only this: port numbers 8000-8099 become free
ports (the same number maps to the same port throughout a document), the
Redis database URL gets a key prefix of its own, and ``REPOLL_QUEUE`` names a
Celery queue of its own, so that a run shares nothing with another and leaves
nothing behind. Every shell block runs under ``bash -e``: a failing command
fails the test, where a reader's interactive shell would go on.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.conftest import need_service
from tests.services import delete_amqp_queues, delete_redis_keys, free_port

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK_TIMEOUT = 240.0

_MARKED = re.compile(
    r"<!-- doc-test(?::[ \t]*(?P<args>[^>\n]*?))?[ \t]*-->[ \t]*\n"
    r"```(?P<lang>[a-z]*)[^\n]*\n(?P<body>.*?)^```",
    re.DOTALL | re.MULTILINE,
)
_FENCE = re.compile(r"^```(?P<lang>[a-z]*)[^\n]*\n(?P<body>.*?)^```", re.DOTALL | re.MULTILINE)
_PORT = re.compile(r"(?<![\d.])80\d\d(?!\d)")
_REDIS = re.compile(r"redis://127\.0\.0\.1:6379/\d+")
_SHELLS = {"sh", "bash", "shell"}


@dataclass(frozen=True)
class Block:
    lang: str  # "sh" or "python"
    body: str
    save_as: str | None  # doc-test: file NAME
    line: int


def marked_blocks(text: str) -> list[Block]:
    blocks = []
    for match in _MARKED.finditer(text):
        args = (match["args"] or "").split()
        lang = "sh" if match["lang"] in _SHELLS else match["lang"]
        save_as = args[1] if args[:1] == ["file"] and len(args) == 2 else None
        if args and save_as is None:
            msg = f"unknown doc-test marker arguments: {args}"
            raise ValueError(msg)
        if lang not in {"sh", "python"} and save_as is None:
            msg = f"a doc-test block must be sh or python, not {match['lang']!r}"
            raise ValueError(msg)
        line = text.count("\n", 0, match.start("body")) + 1
        blocks.append(Block(lang, match["body"], save_as, line))
    return blocks


class Reader:
    """One document's blocks, run in order in one directory; cleans up after itself."""

    def __init__(self, directory: Path, env: dict[str, str], namespace: str) -> None:
        self.directory = directory
        self.env = env
        self.namespace = namespace
        self.ports: dict[str, str] = {}
        self.groups: list[int] = []  # process groups started (background servers live on)
        self.redis_urls: set[str] = set()
        self.log = directory / "doc-test.log"

    def rewrite(self, body: str) -> str:
        body = _PORT.sub(lambda m: self.ports.setdefault(m[0], str(free_port())), body)

        def prefixed(match: re.Match[str]) -> str:
            self.redis_urls.add(match[0])
            return f"{match[0]}?prefix={self.namespace}:"

        return _REDIS.sub(prefixed, body)

    def run(self, block: Block, where: str) -> None:
        body = self.rewrite(block.body)
        if block.save_as is not None:
            (self.directory / block.save_as).write_text(body)
            return
        if block.lang == "sh":
            argv = ["bash", "-e", "-o", "pipefail", "-c", body]
        else:
            script = self.directory / f"doc_block_{block.line}.py"
            script.write_text(body)
            argv = [str(self.directory / ".venv" / "bin" / "python"), script.name]
        with self.log.open("a") as log:
            log.write(f"\n===== {where} =====\n{body}\n----- output -----\n")
            log.flush()
            process = subprocess.Popen(
                argv,
                cwd=self.directory,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.groups.append(process.pid)
            try:
                code = process.wait(timeout=BLOCK_TIMEOUT)
            except subprocess.TimeoutExpired:
                code = None
        if code != 0:
            outcome = "did not end" if code is None else f"exited {code}"
            pytest.fail(f"{where} {outcome}:\n{self.log.read_text()[-6000:]}", pytrace=False)

    def close(self) -> None:
        for group in self.groups:
            _kill_group(group, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(g) for g in self.groups):
            time.sleep(0.1)
        for group in self.groups:
            _kill_group(group, signal.SIGKILL)
        for url in self.redis_urls:
            delete_redis_keys(url, f"{self.namespace}:")


def _kill_group(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, sig)


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _services_named(text: str) -> None:
    if "curl " in text and shutil.which("curl") is None:
        pytest.skip("needs curl (not installed)")
    if "redis://" in text:
        need_service("Redis", "127.0.0.1", 6379)
    if "amqp://" in text:
        need_service("RabbitMQ", "127.0.0.1", 5672)
    if "postgresql://" in text:
        need_service("PostgreSQL", "127.0.0.1", 5432)


def _copy_project(target: Path) -> None:
    """What a fresh clone has, without the local virtualenv and caches."""
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"):
        shutil.copy2(ROOT / name, target / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.sqlite3*")
    for name in ("src", "examples", "docs"):
        shutil.copytree(ROOT / name, target / name, ignore=ignore)


def _base_env(path: str, queue: str) -> dict[str, str]:
    keep = ("HOME", "LANG", "LC_ALL", "TMPDIR", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env.update(PATH=path, REPOLL_QUEUE=queue, TERM="dumb", PYTHONUNBUFFERED="1")
    return env


def _system_path() -> str:
    """PATH without any virtualenv: as a new shell has it."""
    venv = os.environ.get("VIRTUAL_ENV")
    parts = [
        part
        for part in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
        if part and not (venv and part.startswith(venv)) and ".venv" not in part
    ]
    # python3 must be the one this suite runs under (3.11+), not an older system one.
    interpreter = str(Path(sys.base_prefix) / "bin")
    return os.pathsep.join([interpreter, *[p for p in parts if p != interpreter]])


@pytest.fixture
def reader(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Reader]:
    document: Path = request.param
    namespace = f"repoll-doctest-{uuid.uuid4().hex[:12]}"
    if document.name == "README.md":
        _copy_project(tmp_path)
        env = _base_env(_system_path(), namespace)
    else:
        (tmp_path / ".venv").symlink_to(Path(sys.prefix))
        (tmp_path / "examples").symlink_to(ROOT / "examples")  # "from the repository root"
        env = _base_env(f"{tmp_path / '.venv' / 'bin'}{os.pathsep}{_system_path()}", namespace)
        env["VIRTUAL_ENV"] = str(tmp_path / ".venv")
    runner = Reader(tmp_path, env, namespace)
    try:
        yield runner
    finally:
        runner.close()
        if "amqp://" in document.read_text():
            delete_amqp_queues("amqp://guest:guest@127.0.0.1:5672//", [namespace])


RUNNABLE = [doc for doc in DOCUMENTS if marked_blocks(doc.read_text())]


@pytest.mark.parametrize(
    "reader", RUNNABLE, ids=[str(d.relative_to(ROOT)) for d in RUNNABLE], indirect=True
)
def test_runnable_blocks_run_as_written(reader: Reader, request: pytest.FixtureRequest) -> None:
    document: Path = request.node.callspec.params["reader"]
    text = document.read_text()
    _services_named("".join(block.body for block in marked_blocks(text)))
    for block in marked_blocks(text):
        reader.run(block, f"{document.relative_to(ROOT)}:{block.line}")


def test_every_python_block_in_the_readme_is_run() -> None:
    """The README promises snippets that run as written: none may escape the test."""
    text = (ROOT / "README.md").read_text()
    marked = {block.line for block in marked_blocks(text)}
    for match in _FENCE.finditer(text):
        if match["lang"] == "python":
            line = text.count("\n", 0, match.start("body")) + 1
            assert line in marked, f"README.md:{line}: a Python block without <!-- doc-test -->"


def test_markers_are_well_formed() -> None:
    """A marker not directly above a fence would silently run nothing."""
    for document in DOCUMENTS:
        text = document.read_text()
        assert text.count("<!-- doc-test") == len(marked_blocks(text)), document.name
