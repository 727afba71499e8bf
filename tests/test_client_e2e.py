"""The client against the real demo server over loopback: sync, async, handles, CLI."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
import requests
from tests.services import repoll_cli as cli

import repoll
from repoll import OperationStatus, PollOptions

pytestmark = pytest.mark.slow


def test_transport_one_call(live):
    with httpx.Client(transport=repoll.PollingTransport(), timeout=60) as client:
        response = client.post(f"{live.url}/start_work", json={"seconds": 1})
    assert response.status_code == 200
    assert response.json()["result"] == "done"


def test_httpx_default_timeout_never_cuts_a_held_poll(live):
    # httpx waits 5 s for an answer by default; the client asked for 30 s
    # holds, so every poll of a job over 5 s timed out and was retried, and
    # a job over half a minute failed. Now a held poll waits out its hold.
    with httpx.Client(transport=repoll.PollingTransport()) as client:
        response = client.post(f"{live.url}/start_work", json={"seconds": 9})
    assert response.status_code == 200
    hops = response.extensions["repoll.hops"]
    assert [hop for hop in hops if hop.status == 0] == []
    assert len(hops) <= 3  # the start, then one held poll


def test_requests_timeout_never_cuts_a_held_poll(live):
    session = requests.Session()
    session.mount("http://", repoll.PollingAdapter())
    response = session.post(f"{live.url}/start_work", json={"seconds": 9}, timeout=(3, 5))
    assert response.status_code == 200
    assert [hop for hop in response.repoll_hops if hop.status == 0] == []


@pytest.mark.anyio
async def test_async_transport_one_call(live):
    async with httpx.AsyncClient(transport=repoll.AsyncPollingTransport(), timeout=60) as client:
        response = await client.post(f"{live.url}/start_work", json={"seconds": 1})
    assert response.status_code == 200
    assert response.json()["result"] == "done"


def test_requests_adapter_one_call(live):
    session = requests.Session()
    session.mount("http://", repoll.PollingAdapter())
    response = session.post(f"{live.url}/start_work", json={"seconds": 1}, timeout=60)
    assert response.status_code == 200
    assert response.json()["result"] == "done"
    assert response.history[0].status_code == 202
    assert response.repoll_hops[-1].operation_status == "succeeded"


def test_progress_callback_sees_status_progress_and_message(live):
    hops = []
    options = PollOptions(long_poll=1, on_progress=hops.append)
    with httpx.Client(transport=repoll.PollingTransport(options=options), timeout=60) as client:
        client.post(f"{live.url}/start_work", json={"seconds": 2.5})
    assert hops[0].method == "POST"
    assert any(h.progress is not None and 0 < h.progress < 1 for h in hops)
    assert any(h.message and h.message.startswith("step") for h in hops)
    assert hops[-1].operation_status == "succeeded"


def test_handle_start_poll_wait(live):
    with httpx.Client(base_url=live.url, timeout=60) as client:
        handle = repoll.OperationHandle.start(client, "POST", "/start_work", json={"seconds": 1})
        assert not handle.done
        assert handle.url.startswith(f"{live.url}/operations/")
        assert handle.poll() in {OperationStatus.QUEUED, OperationStatus.RUNNING}
        response = handle.result(timeout=30)
    assert response.json()["result"] == "done"
    assert handle.status is OperationStatus.SUCCEEDED
    assert handle.progress == 1.0


def test_handle_cancel(live):
    with httpx.Client(base_url=live.url, timeout=60) as client:
        handle = repoll.OperationHandle.start(client, "POST", "/start_work", json={"seconds": 60})
        assert handle.cancel() is OperationStatus.CANCELED
        with pytest.raises(repoll.OperationCanceled):
            handle.result(timeout=30)


def test_handle_deadline_then_resume(live):
    with httpx.Client(base_url=live.url, timeout=60) as client:
        handle = repoll.OperationHandle.start(client, "POST", "/start_work", json={"seconds": 3})
        with pytest.raises(repoll.PollingTimeout) as caught:
            handle.wait(timeout=1)
        assert caught.value.operation_url == handle.url
        again = repoll.OperationHandle.resume(client, caught.value.operation_url)
        assert again.wait(timeout=30).json()["result"] == "done"


def test_failed_operation_raises_when_asked_for_the_result(live):
    with httpx.Client(base_url=live.url, timeout=60) as client:
        handle = repoll.OperationHandle.start(
            client, "POST", "/start_work", json={"seconds": 0.2, "fail": True}
        )
        with pytest.raises(repoll.OperationFailed, match="500"):
            handle.result(timeout=30)
        assert handle.wait().status_code == 500  # wait() returns it as it is


def test_unknown_operation_raises_not_found(live):
    with httpx.Client(timeout=60) as client:
        handle = repoll.OperationHandle.resume(client, f"{live.url}/operations/{'A' * 22}")
        with pytest.raises(repoll.OperationNotFound):
            handle.result(timeout=10)


@pytest.mark.anyio
async def test_async_handle(live):
    async with httpx.AsyncClient(base_url=live.url, timeout=60) as client:
        handle = await repoll.AsyncOperationHandle.start(
            client, "POST", "/start_work", json={"seconds": 1}
        )
        assert not handle.done
        response = await handle.result(timeout=30)
        assert response.json()["result"] == "done"
        other = await repoll.AsyncOperationHandle.start(
            client, "POST", "/start_work", json={"seconds": 60}
        )
        assert await other.cancel() is OperationStatus.CANCELED


def test_resume_from_the_url_in_another_process(live):
    with httpx.Client(base_url=live.url, timeout=60) as client:
        handle = repoll.OperationHandle.start(client, "POST", "/start_work", json={"seconds": 1})
    code = (
        "import httpx, repoll, sys\n"
        "with httpx.Client(timeout=60) as c:\n"
        "    r = repoll.OperationHandle.resume(c, sys.argv[1]).result(timeout=30)\n"
        "print(r.json()['result'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, handle.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "done"


def test_cli_request_prints_the_result(live):
    result = cli("request", "-X", "POST", "--json", '{"seconds": 1}', f"{live.url}/start_work")
    assert result.returncode == 0, result.stderr
    assert '"result":"done"' in result.stdout


def test_cli_request_no_wait_then_wait(live):
    started = cli("request", "--no-wait", "--json", '{"seconds": 1}', f"{live.url}/start_work")
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip()
    assert url.startswith(f"{live.url}/operations/")
    waited = cli("wait", "-i", url)
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.startswith("HTTP/1.1 200 OK")
    assert "operation-status: succeeded" in waited.stdout


def test_cli_failing_job_exits_non_zero(live):
    result = cli("request", "--json", '{"seconds": 0.2, "fail": true}', f"{live.url}/start_work")
    assert result.returncode == 1
    assert "operation-failed" in result.stdout


def test_cli_timeout_tells_how_to_resume(live):
    result = cli("request", "--timeout", "1", "--json", '{"seconds": 5}', f"{live.url}/start_work")
    assert result.returncode == 4
    assert "repoll wait http" in result.stderr


def test_cli_bad_json_is_a_usage_error(live):
    result = cli("request", "--json", "{nope", f"{live.url}/start_work")
    assert result.returncode == 2
    assert "not valid JSON" in result.stderr


def test_cli_shows_a_progress_bar_on_a_terminal(live):
    import os
    import pty

    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "repoll",
            "request",
            "--json",
            '{"seconds": 2.5}',
            f"{live.url}/start_work",
        ],
        stdout=subprocess.PIPE,
        stderr=terminal,
        text=True,
    )
    os.close(terminal)
    out, _ = process.communicate(timeout=60)
    screen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    os.close(controller)
    assert process.returncode == 0
    assert '"result":"done"' in out
    text = screen.decode()
    assert "━" in text  # rich's bar
    assert "100%" in text  # the last frame is full
    assert "succeeded" in text
    assert "step" in text  # the server's message
