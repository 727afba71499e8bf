"""The command line, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from tests.services import repoll_cli as repoll

pytestmark = pytest.mark.slow


def test_demo_shows_the_hops_and_the_result():
    result = repoll("demo", "--seconds", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "POST" in out
    assert "-> 303" in out
    assert "Retry-After:" in out
    assert "/operations/" in out
    assert "-> 200" in out
    assert '"result":"done"' in out


def test_demo_with_a_failing_job_shows_the_problem():
    result = repoll("demo", "--seconds", "0.5", "--fail")
    assert result.returncode == 0, result.stderr
    assert "-> 500" in result.stdout
    assert "operation-failed" in result.stdout


def test_bad_arguments_are_rejected():
    result = repoll("demo", "--seconds", "soon")
    assert result.returncode == 2
    assert "is not a number" in result.stderr


def test_serve_finds_an_app_module_in_the_working_directory(tmp_path):
    import socket
    import time

    import httpx

    (tmp_path / "myapp.py").write_text(
        "import repoll\n"
        "from fastapi import FastAPI\n"
        "app = FastAPI()\n"
        "repoll.install(app, store='memory://')\n"
        "@app.post('/double')\n"
        "@repoll.deferred\n"
        "async def double(n: int) -> dict:\n"
        "    return {'n': n * 2}\n"
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "repoll", "serve", "myapp:app", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/double",
                    params={"n": 21},
                    headers={"prefer": "wait=5"},
                    timeout=10,
                )
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert response.json() == {"n": 42}
        assert response.headers["operation-status"] == "succeeded"
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stderr.close()


def test_serve_max_hold_sets_the_servers_pacing(monkeypatch):
    from repoll.cli import _main
    from repoll.server._engine import MAX_HOLD_ENV, pacing_from_environment

    ran = []
    monkeypatch.setattr(_main, "_run_server", lambda config, what: ran.append(config) or 0)
    # serve exports its settings to the environment: a copy, restored after.
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k != MAX_HOLD_ENV})
    assert _main.main(["serve", "--max-hold", "1.5"]) == 0
    assert ran
    assert os.environ[MAX_HOLD_ENV] == "1.5"
    policy = pacing_from_environment(os.environ)
    assert (policy.max_hold, policy.min_hold) == (1.5, 1.0)
    assert pacing_from_environment({MAX_HOLD_ENV: "0.3"}).min_hold == 0.3
    assert pacing_from_environment({}).max_hold == 25.0
    with pytest.raises(SystemExit) as refused:  # checked by the parser
        _main.main(["serve", "--max-hold", "-1"])
    assert refused.value.code == _main.EXIT_USAGE
