"""The httpx transports against scripted servers (httpx.MockTransport), sleeps injected.

Every client here is given a sleeper that returns at once (and records what
it was asked to wait), so no test depends on the process-wide testing switch,
which has tests of its own at the end.
"""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

import repoll
from repoll import PollingTimeout, PollOptions


def no_sleep(seconds: float) -> None:
    """Stands in for time.sleep: these tests check decisions, not waiting."""


async def no_asleep(seconds: float) -> None:
    """Stands in for asyncio.sleep."""


def scripted(*responses, seen=None):
    """A MockTransport answering with ``responses`` in order (the last one repeats)."""
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer() if callable(answer) else answer

    return httpx.MockTransport(handler)


def pending(status=202, location="/operations/abc", **headers):
    headers = {k.replace("_", "-"): v for k, v in headers.items()}
    return httpx.Response(
        status, headers={"location": location, **headers}, json={"status": "running"}
    )


def final(status=200, **json):
    return httpx.Response(
        status, json=json or {"done": True}, headers={"operation-status": "succeeded"}
    )


def client_for(transport, sleep=no_sleep, timeout=60.0, **options):
    hops = []
    options.setdefault("on_progress", hops.append)
    polling = repoll.PollingTransport(transport, options=PollOptions(**options), sleep=sleep)
    return httpx.Client(transport=polling, base_url="http://api.test", timeout=timeout), hops


def test_non_polling_responses_pass_through_untouched():
    seen = []
    client, hops = client_for(scripted(httpx.Response(200, json={"x": 1}), seen=seen))
    response = client.get("/plain")
    assert response.json() == {"x": 1}
    assert hops == []
    assert len(seen) == 1
    assert seen[0].headers["prefer"] == "respond-async"


def test_a_plain_redirect_is_not_polling():
    client, _ = client_for(scripted(httpx.Response(303, headers={"location": "/elsewhere"})))
    assert client.post("/x").status_code == 303  # left to httpx's follow_redirects


def test_follows_to_the_final_response_in_one_call():
    seen = []
    transport = scripted(
        pending(retry_after="1", operation_status="queued"),
        pending(retry_after="1", operation_status="running"),
        final(201, made="it"),
        seen=seen,
    )
    client, hops = client_for(transport)
    response = client.post("/start", json={"a": 1})
    assert response.status_code == 201
    assert response.json() == {"made": "it"}
    assert [r.status_code for r in response.extensions["repoll.history"]] == [202, 202]
    assert [h.status for h in response.extensions["repoll.hops"]] == [202, 202, 201]
    assert hops[-1].next_poll_in is None
    assert [r.method for r in seen] == ["POST", "GET", "GET"]
    assert str(seen[1].url) == "http://api.test/operations/abc"
    assert seen[1].headers["prefer"].startswith("respond-async")


def test_credentials_follow_polls_on_the_same_origin():
    seen = []
    client, _ = client_for(scripted(pending(retry_after="1"), final(), seen=seen))
    client.post("/start", headers={"authorization": "Bearer t", "cookie": "s=1"})
    assert seen[1].headers["authorization"] == "Bearer t"
    assert seen[1].headers["cookie"] == "s=1"


def test_a_location_on_another_origin_is_refused():
    client, _ = client_for(scripted(pending(location="http://evil.test/steal", retry_after="1")))
    with pytest.raises(repoll.CrossOriginError, match="allow_cross_origin"):
        client.post("/start", headers={"authorization": "Bearer t"})


def test_another_origin_when_allowed_gets_no_credentials():
    seen = []
    transport = scripted(
        pending(location="http://other.test/op", retry_after="1"), final(), seen=seen
    )
    client, _ = client_for(transport, allow_cross_origin=True)
    response = client.post("/start", headers={"authorization": "Bearer t", "cookie": "s=1"})
    assert response.status_code == 200
    assert str(seen[1].url) == "http://other.test/op"
    assert "authorization" not in seen[1].headers
    assert "cookie" not in seen[1].headers


def test_retry_after_zero_for_ever_backs_off_and_gives_up():
    transport = scripted(pending(303, retry_after="0"))
    client, hops = client_for(transport, max_polls=15, long_poll=None)
    with pytest.raises(PollingTimeout, match="after 15 polls") as caught:
        client.post("/start")
    assert caught.value.operation_url == "http://api.test/operations/abc"
    waits = [h.next_poll_in for h in hops]
    assert all(w >= 0.1 for w in waits)  # never below min_interval: no tight loop
    # The jitter's cap grows to backoff_max: later waits may be long, early ones are short.
    assert max(waits[-5:]) > max(waits[:2])


@pytest.mark.parametrize(
    "value",
    ["-5", "abc", "99999999", "Tue, 01 Dec 2020 11:31:24 GMT", "1.5"],  # a date long past
)
def test_nonsense_retry_after_falls_back_to_backoff(value):
    client, hops = client_for(scripted(pending(retry_after=value), final()), long_poll=None)
    response = client.post("/start")
    assert response.status_code == 200
    assert 0.1 <= hops[0].next_poll_in <= 0.5  # the first backoff step, jittered


def test_retry_after_ms_wins_and_is_clamped():
    client, hops = client_for(
        scripted(
            pending(retry_after="5", retry_after_ms="1250"), pending(retry_after="9999"), final()
        ),
        long_poll=None,
        max_interval=30,
    )
    client.post("/start")
    assert hops[0].next_poll_in == 1.25
    assert hops[1].next_poll_in == 30


def test_http_date_retry_after_is_honoured():
    date = email.utils.formatdate(time.time() + 20, usegmt=True)
    client, hops = client_for(scripted(pending(retry_after=date), final()), long_poll=None)
    client.post("/start")
    assert 18 <= hops[0].next_poll_in <= 21


def test_transient_failures_while_polling_are_retried():
    transport = scripted(
        pending(retry_after="1"),
        httpx.Response(503, headers={"retry-after": "2"}),
        httpx.ConnectError("connection refused"),
        httpx.Response(502),
        final(),
    )
    client, hops = client_for(transport)
    assert client.post("/start").status_code == 200
    assert [h.status for h in hops] == [202, 503, 502, 200]


def test_transient_failures_past_the_bound_raise():
    client, _ = client_for(
        scripted(pending(retry_after="1"), httpx.ConnectError("down")), max_retries=2
    )
    with pytest.raises(httpx.ConnectError):
        client.post("/start")
    client, _ = client_for(scripted(pending(retry_after="1"), httpx.Response(503)), max_retries=2)
    with pytest.raises(repoll.OperationError, match="failed 3 times"):
        client.post("/start")


def test_a_final_5xx_is_returned_not_retried():
    failed = httpx.Response(503, headers={"operation-status": "failed"}, json={"title": "down"})
    client, _ = client_for(scripted(pending(retry_after="1"), failed))
    response = client.post("/start")
    assert response.status_code == 503
    assert response.headers["operation-status"] == "failed"


def test_the_first_response_is_never_retried():
    seen = []
    client, _ = client_for(scripted(httpx.Response(503), seen=seen))
    assert client.post("/start").status_code == 503
    assert len(seen) == 1


def test_deadline_raises_polling_timeout_with_the_url(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])

    def slow():
        clock[0] += 4
        return pending(retry_after="1", operation_status="running")

    client, _ = client_for(scripted(pending(retry_after="1"), slow), deadline=10)
    with pytest.raises(PollingTimeout) as caught:
        client.post("/start")
    assert caught.value.operation_url == "http://api.test/operations/abc"
    assert isinstance(caught.value, TimeoutError)


def test_per_request_options_override_the_transports():
    client, _ = client_for(scripted(pending(retry_after="1")), max_polls=100)
    with pytest.raises(PollingTimeout, match="after 1 polls"):
        client.post("/start", extensions={"repoll.options": PollOptions(max_polls=1)})


def test_long_poll_asks_the_server_to_hold():
    seen = []
    transport = scripted(pending(retry_after="3", operation_status="queued"), final(), seen=seen)
    client, hops = client_for(transport, long_poll=20)
    client.post("/start")
    assert hops[0].next_poll_in == 0.0  # a repoll server holds: no need to wait first
    assert seen[1].headers["prefer"] == "respond-async, wait=20"


@pytest.mark.anyio
async def test_the_async_transport_drives_the_same_flow():
    seen = []

    async def handler(request):
        seen.append(request)
        if len(seen) < 3:
            return pending(retry_after="1", operation_status="running")
        return final(made="async")

    hops = []
    polling = repoll.AsyncPollingTransport(
        httpx.MockTransport(handler), options=PollOptions(on_progress=hops.append), sleep=no_asleep
    )
    async with httpx.AsyncClient(transport=polling, base_url="http://api.test") as client:
        response = await client.post("/start")
    assert response.json() == {"made": "async"}
    assert len(response.extensions["repoll.history"]) == 2
    assert len(hops) == 3


def test_the_injected_sleeper_waits_what_the_flow_decides():
    sleeps = []
    transport = scripted(pending(retry_after="30"), pending(retry_after_ms="1250"), final())
    client, hops = client_for(transport, sleep=sleeps.append, long_poll=None)
    started = time.monotonic()
    client.post("/start")
    assert time.monotonic() - started < 5
    assert sleeps == [30.0, 1.25] == [h.next_poll_in for h in hops[:2]]
    assert not repoll.is_testing()  # no process-wide switch was needed


@pytest.mark.anyio
async def test_the_async_runner_awaits_the_injected_sleeper():
    sleeps = []

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    polling = repoll.AsyncPollingTransport(
        scripted(pending(retry_after="30"), final()),
        options=PollOptions(long_poll=None),
        sleep=record,
    )
    async with httpx.AsyncClient(transport=polling, base_url="http://api.test") as client:
        assert (await client.post("/start")).status_code == 200
    assert sleeps == [30.0]


def test_by_default_the_client_really_waits():
    transport = repoll.PollingTransport(
        scripted(pending(retry_after_ms="300"), final()), options=PollOptions(long_poll=None)
    )
    started = time.monotonic()
    with httpx.Client(transport=transport, base_url="http://api.test") as client:
        client.post("/start")
    assert time.monotonic() - started >= 0.3


def test_testing_switch_skips_sleeps():
    # The switch, for users whose clients are built where no sleep= reaches.
    transport = repoll.PollingTransport(
        scripted(pending(retry_after="30"), final()), options=PollOptions(long_poll=None)
    )
    with repoll.testing(), httpx.Client(transport=transport, base_url="http://api.test") as client:
        started = time.monotonic()
        client.post("/start")
        assert time.monotonic() - started < 5
        assert repoll.is_testing()
    assert not repoll.is_testing()


def test_no_default_deadline_nor_poll_budget():
    # google-api-core's surprise 900 s default broke long jobs; repoll sets none.
    options = PollOptions()
    assert options.deadline is None
    assert options.max_polls is None


def test_a_body_that_never_completes_is_a_timeout_not_a_hang():
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve():
        first = True
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            if first:
                first = False
                conn.sendall(
                    b"HTTP/1.1 202 Accepted\r\nLocation: /operations/x\r\nRetry-After: 1\r\n"
                    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
                conn.close()
            else:  # promise 100 bytes, send 10, then say nothing
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                stop.wait(5)
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    options = PollOptions(max_retries=1)
    transport = repoll.PollingTransport(options=options, sleep=no_sleep)
    started = time.monotonic()
    with (
        httpx.Client(transport=transport, timeout=0.5) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.post(f"http://127.0.0.1:{port}/start")
    assert time.monotonic() - started < 10
    stop.set()
    listener.close()


def test_handle_wait_retries_transient_failures_and_reads_progress():
    transport = scripted(
        httpx.Response(
            202,
            headers={
                "location": "/operations/abc",
                "retry-after": "1",
                "operation-status": "running",
            },
            json={"id": "abc", "status": "running", "progress": 0.5, "message": "half"},
        ),
        httpx.ConnectError("blip"),
        final(made="handle"),
    )
    with httpx.Client(transport=transport, base_url="http://api.test") as client:
        handle = repoll.OperationHandle.start(client, "POST", "/start", sleep=no_sleep)
        assert handle.status is repoll.OperationStatus.RUNNING
        assert (handle.progress, handle.message) == (0.5, "half")
        assert handle.url == "http://api.test/operations/abc"
        assert handle.result().json() == {"made": "handle"}
        assert handle.status is repoll.OperationStatus.SUCCEEDED


def test_handle_never_sends_the_clients_auth_to_another_origin():
    seen = []
    transport = scripted(
        pending(location="http://other.test/op", retry_after="1"), final(), seen=seen
    )
    options = PollOptions(allow_cross_origin=True)
    with httpx.Client(transport=transport, auth=("user", "secret")) as client:
        handle = repoll.OperationHandle.start(
            client, "POST", "http://api.test/start", options=options, sleep=no_sleep
        )
        handle.wait()
    assert "authorization" in seen[0].headers
    assert str(seen[-1].url) == "http://other.test/op"
    assert "authorization" not in seen[-1].headers


def test_a_held_poll_waits_out_its_hold_whatever_the_read_timeout():
    # httpx waits 5 s by default; a poll asked to be held 30 s must wait 35 s,
    # or every held poll of a long job times out (and a job over half a
    # minute failed with ReadTimeout).
    for timeout in (httpx.Timeout(5.0), httpx.Timeout(60.0)):
        seen = []
        transport = scripted(
            pending(retry_after="1", operation_status="running"), final(), seen=seen
        )
        polling = repoll.PollingTransport(transport, sleep=no_sleep)
        with httpx.Client(transport=polling, base_url="http://api.test", timeout=timeout) as client:
            assert client.post("/start").status_code == 200
        assert seen[1].headers["prefer"] == "respond-async, wait=30"
        assert seen[1].extensions["timeout"]["read"] == 30 + timeout.read
        assert seen[1].extensions["timeout"]["connect"] == timeout.connect
