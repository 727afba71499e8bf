"""A user's mistakes on the command line: one line on stderr, a documented exit code.

Each case runs the real ``repoll`` command in a process, as a user would. The
exit codes are README.md's: 1 for an answer that is an error (or a URL that is
not an operation where one is expected), 2 for bad arguments, 3 for a server
or store that cannot be reached, 130 for Ctrl-C.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from tests.services import repoll_cli as repoll

pytestmark = pytest.mark.slow


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("repoll: "), lines[0]
    return lines[0]


BAD_ARGUMENTS = [
    (["check", "notaurl"], "is not an http:// or https:// URL"),
    (["check", "http://127.0.0.1:1/x", "--timeout", "-1"], "above 0"),
    (["request", "notaurl"], "is not an http:// or https:// URL"),
    (["request", "localhost:8000/x"], "did you mean http://localhost:8000/x"),
    (["request", "http://127.0.0.1:1/x", "--timeout", "0"], "above 0"),
    (["request", "http://127.0.0.1:1/x", "--timeout", "-1"], "above 0"),
    (["request", "http://127.0.0.1:1/x", "--json", "{not json"], "not valid JSON"),
    (["request", "http://127.0.0.1:1/x", "-H", "no colon"], "bad header"),
    (["request", "http://127.0.0.1:1/x", "-d", "@/no/such/file"], "cannot read"),
    (["wait", ""], "the URL is empty"),
    (["wait", "http://127.0.0.1:1/x", "--timeout", "-1"], "above 0"),
    (["wait", "http://127.0.0.1:99999/x"], "port"),
    (["serve", "--port", "99999"], "not a port number"),
    (["serve", "--workers", "0"], "1 or more"),
    (["serve", "--store", "bogus://x"], "unsupported store URL scheme"),
    (["serve", "--max-hold", "-1"], "0 or more"),
    (["demo", "--seconds", "-1"], "0 or more"),
    (["demo", "--seconds", "soon"], "is not a number"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize(
    ("args", "says"), BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS]
)
def test_bad_arguments_exit_2_with_one_line(args: list[str], says: str) -> None:
    result = repoll(*args)
    assert says in one_line(result)
    assert result.returncode == 2


UNREACHABLE = [
    (["check", "http://127.0.0.1:1/x"], "cannot connect to 127.0.0.1:1"),
    (["check", "http://no-such-host.invalid/x"], "cannot connect to no-such-host.invalid:80"),
    (["request", "http://127.0.0.1:1/x"], "cannot connect to 127.0.0.1:1"),
    (["wait", "http://127.0.0.1:1/operations/x"], "cannot connect to 127.0.0.1:1"),
    (["serve", "--store", "redis://127.0.0.1:1/0"], "cannot open the store redis://127.0.0.1:1/0"),
    (["serve", "--store", "sqlite:////proc/no/ops.db"], "cannot open the store"),
]


@pytest.mark.parametrize(("args", "says"), UNREACHABLE, ids=[" ".join(a) for a, _ in UNREACHABLE])
def test_what_cannot_be_reached_exits_3_with_one_line(args: list[str], says: str) -> None:
    pytest.importorskip("redis")
    result = repoll(*args)
    assert says in one_line(result)
    assert result.returncode == 3


def test_serve_on_a_taken_port_exits_3(live) -> None:
    port = live.url.rsplit(":", 1)[1]
    result = repoll("serve", "--port", port, timeout=30)
    assert "Traceback" not in result.stderr
    assert "address already in use" in result.stderr
    assert result.returncode == 3


def test_serve_says_where_it_listens_once_it_does(tmp_path) -> None:
    import httpx
    from tests.services import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "repoll", "serve", "--port", str(port), "--store", "memory://"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until it listens
        assert line.strip() == (
            f"repoll serve: the demo app listening on http://127.0.0.1:{port} (Ctrl-C stops it)"
        )
        # No wait, no retry: the port accepts the moment the line is out.
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        process.terminate()
        process.wait(15)


def test_wait_on_a_url_that_is_not_an_operation_exits_1(live) -> None:
    result = repoll("wait", f"{live.url}/healthz")
    assert "is not an operation URL" in one_line(result)
    assert result.returncode == 1
    assert '"ok"' in result.stdout  # its answer, not lost


def test_no_wait_on_an_ordinary_endpoint_prints_no_url(live) -> None:
    result = repoll("request", "--no-wait", f"{live.url}/healthz")
    assert "is not a deferred endpoint" in one_line(result)
    assert result.returncode == 1
    assert "/operations/" not in result.stdout


def test_no_wait_prints_the_operation_url_that_wait_resumes(live) -> None:
    started = repoll("request", "--no-wait", "--json", '{"seconds": 0.5}', f"{live.url}/start_work")
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip()
    assert url.startswith(f"{live.url}/operations/")
    waited = repoll("wait", "-q", url)
    assert waited.returncode == 0, waited.stderr
    assert '"result":"done"' in waited.stdout.replace(" ", "")


def test_ctrl_c_says_how_to_resume(live) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "repoll",
            "request",
            "--json",
            '{"seconds": 4}',
            live.url + "/start_work",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2.0)  # started, and polling
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "Traceback" not in stderr
    resume = [line for line in stderr.splitlines() if "interrupted" in line]
    assert len(resume) == 1, stderr
    url = resume[0].rsplit("repoll wait ", 1)[1]
    waited = repoll("wait", "-q", url)  # the operation went on
    assert waited.returncode == 0, waited.stderr


def test_help_shows_defaults_and_every_option_has_help() -> None:
    serve = " ".join(repoll("serve", "--help").stdout.split())
    assert "default 127.0.0.1" in serve
    assert "default 8000" in serve
    assert "redis://" in serve
    assert "postgresql://" in serve
    assert "--queue" in serve
    worker = " ".join(repoll("worker", "--help").stdout.split())
    assert "default amqp://" in worker
    assert "default repoll" in worker
    check = " ".join(repoll("check", "--help").stdout.split())
    assert "polls included" in check  # -H
    assert "JSON for programs" in check  # --format
    assert repoll("--version").stdout.startswith("repoll ")
