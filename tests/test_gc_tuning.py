"""``repoll serve`` raises the garbage collector's first threshold, in every worker.

Real processes: ``repoll serve`` on an app that reports its own threshold,
with one process (an app without repoll: the command applies it) and with
two workers (each worker's server applies it when it opens). The setting
itself is tried in a child interpreter, so the test process keeps its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from tests.services import free_port

APP = textwrap.dedent(
    """
    import gc
    import os

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    import repoll


    async def threshold(_):
        return JSONResponse({"threshold": gc.get_threshold()[0], "pid": os.getpid()})


    plain = Starlette(routes=[Route("/gc", threshold)])
    with_repoll = Starlette(routes=[Route("/gc", threshold)])
    repoll.install(with_repoll, store=os.environ["STORE"])
    """
)


def serve(tmp_path: Path, target: str, *args: str, env: dict[str, str] | None = None) -> set[int]:
    """The thresholds the served processes report (as many requests as it takes to see two)."""
    (tmp_path / "gcapp.py").write_text(APP)
    port = free_port()
    environ = {**os.environ, "STORE": f"sqlite:///{tmp_path}/ops.db"}
    environ.pop("REPOLL_GC_THRESHOLD", None)  # repoll serve's default, unless given
    environ.update(env or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "repoll", "serve", "--port", str(port), target, *args],
        cwd=tmp_path,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        seen: dict[int, int] = {}
        deadline = time.monotonic() + 30
        workers = 2 if "--workers" in args else 1
        while len(seen) < workers:
            assert time.monotonic() < deadline, seen
            try:
                # A new connection each time: each may reach another worker.
                answer = httpx.get(f"http://127.0.0.1:{port}/gc").json()
                seen[answer["pid"]] = answer["threshold"]
            except httpx.TransportError:
                time.sleep(0.05)
        return set(seen.values())
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_repoll_serve_sets_it_for_an_app_without_repoll(tmp_path):
    assert serve(tmp_path, "gcapp:plain") == {50_000}


def test_every_worker_sets_it_when_its_server_opens(tmp_path):
    assert serve(tmp_path, "gcapp:with_repoll", "--workers", "2") == {50_000}


def test_zero_keeps_pythons_default(tmp_path):
    assert serve(tmp_path, "gcapp:plain", env={"REPOLL_GC_THRESHOLD": "0"}) == {700}


@pytest.mark.parametrize(
    ("value", "expected"), [("12345", 12345), ("", 700), ("0", 700), ("lots", 700)]
)
def test_the_setting(value, expected):
    code = (
        "import gc, os; from repoll.server._gc import tune_gc; "
        "tune_gc(os.environ); print(gc.get_threshold()[0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "REPOLL_GC_THRESHOLD": value},
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(out.stdout) == expected
    if value == "lots":
        assert "not a whole number" in out.stderr
