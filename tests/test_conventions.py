"""Differential: every convention's scenarios through every repoll client, and azure-core.

One real server plays the scenarios of the conventions the client claims
(core/_monitors.py, docs/client.md): status monitors (``Operation-Location``,
``Azure-AsyncOperation``), ARM's provisioning state, RFC 9110's plain 202,
a 303 to the result. Each scenario runs through the httpx transports (sync
and async), the operation handles (sync and async, ``start().result()``),
the requests adapter and the aiohttp middleware, which must all give the same outcome, the one
expected here; azure-core's ``LROPoller`` runs where it applies, to show
where repoll agrees with it and where it deliberately differs.

Every run has its own id in the path, so the server's state per scenario
is fresh for each client. Sleeps are skipped (``repoll.testing()``): the
decisions are the same, only time does not pass.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import json
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import repoll
from repoll import PollOptions
from repoll.cli._main import running_server

pytestmark = pytest.mark.slow

# --- the server ---------------------------------------------------------------------

# scenario -> what its monitor (or resource, or status URL) answers, poll by poll;
# the last answer repeats. Each answer: (status, body or None, extra headers).
Answer = tuple[int, Any, dict[str, str]]
_RUNNING: Answer = (200, {"status": "Running"}, {"retry-after": "1"})


def _ok(body: Any, **headers: str) -> Answer:
    return (200, body, headers)


MONITORS: dict[str, list[Answer]] = {
    # 1: ARM's rule: only Succeeded, Failed, Canceled end it.
    "custom-statuses": [
        _ok({"status": "Queued"}),
        _ok({"status": "Provisioning"}),
        _ok({"status": "Deleting"}),
        _ok({"status": "Succeeded", "resourceLocation": "{base}/results/{run}"}),
    ],
    # 2: malformed monitors are protocol errors, not results.
    "empty-monitor": [_RUNNING, (200, None, {})],
    "statusless-monitor": [_RUNNING, _ok({"progress": 3})],
    "text-monitor": [_RUNNING, (200, "all good", {"content-type": "text/plain"})],
    "empty-202-monitor": [(202, None, {})],
    # 4: Failed and Canceled raise, carrying the monitor's answer.
    "failed": [_RUNNING, _ok({"status": "Failed", "error": {"code": "Boom"}})],
    "canceled": [_ok({"status": "Canceled"})],
    # 5: 200/201 + Operation-Location (PUT): the result is the original URL.
    "put-201": [_RUNNING, _ok({"status": "Succeeded"})],
    # 5: 202 + Operation-Location, no Location, no resourceLocation (POST).
    "post-no-location": [_RUNNING, _ok({"status": "succeeded"})],
    # 6: DELETE: no final GET of Location (the deleted resource).
    "delete": [_RUNNING, _ok({"status": "Succeeded"})],
    # 7: resourceLocation and Location both given.
    "both-locations": [_ok({"status": "Succeeded", "resourceLocation": "{base}/results/{run}"})],
    # 503 while polling, Retry-After as an HTTP-date and as garbage.
    "503-then-ok": [
        (503, None, {"retry-after": "1"}),
        (200, {"status": "Running"}, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}),
        (200, {"status": "Running"}, {"retry-after": "soon"}),
        _ok({"status": "Succeeded", "resourceLocation": "{base}/results/{run}"}),
    ],
    # 8: the first response already succeeded: its monitor is never asked.
    "already-succeeded": [(500, {"status": "never asked"}, {})],
    "cross-origin": [_ok({"status": "Succeeded"})],
}


request_base: contextvars.ContextVar[str] = contextvars.ContextVar("request_base", default="")


@dataclass
class Plays:
    polls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    origin: str = ""


def scenario_server(plays: Plays) -> Starlette:
    def answer(key: str, script: list[Answer], run: str) -> Response:
        index = min(plays.polls[key], len(script) - 1)
        plays.polls[key] += 1
        status, body, headers = script[index]
        if isinstance(body, dict):
            base = str(request_base.get()).rstrip("/")
            text = json.dumps(body).replace("{run}", run).replace("{base}", base)
            return Response(text, status, {"content-type": "application/json", **headers})
        return Response(body or b"", status, headers)

    async def start(request: Request) -> Response:
        name, run = request.path_params["name"], request.path_params["run"]
        # Absolute URLs: azure-core fails on relative ones (Operation-Location,
        # Location, resourceLocation), which repoll resolves
        # (tests/test_interop.py has the relative case).
        here = str(request.base_url).rstrip("/")
        monitor = f"{here}/monitors/{name}/{run}"
        if name == "cross-origin":
            host = "localhost" if request.url.hostname == "127.0.0.1" else "127.0.0.1"
            monitor = f"http://{host}:{request.url.port}/monitors/{name}/{run}"
        if name in ("put-201", "already-succeeded"):
            state = "Succeeded" if name == "already-succeeded" else "Creating"
            body = {"name": run, "properties": {"provisioningState": state}}
            if request.method == "GET":
                return JSONResponse({"name": run, "ready": True})
            return JSONResponse(body, 201, {"operation-location": monitor})
        if name == "provisioning":
            if request.method == "GET":
                plays.polls[f"prov/{run}"] += 1
                state = "Succeeded" if plays.polls[f"prov/{run}"] >= 3 else "Updating"
            else:
                state = "Creating"
            return JSONResponse(
                {"name": run, "properties": {"provisioningState": state}},
                201 if request.method == "PUT" else 200,
            )
        if name == "delete":
            headers = {"operation-location": monitor, "location": f"{here}/gone/{run}"}
            return Response(status_code=202, headers=headers)
        if name == "both-locations":
            headers = {"operation-location": monitor, "location": f"{here}/elsewhere/{run}"}
            return Response(status_code=202, headers=headers)
        if name == "plain-202":
            return Response(status_code=202, headers={"location": f"{here}/plain/{run}"})
        if name == "cookies":
            response = Response(status_code=202, headers={"location": f"/sticky/{run}"})
            response.set_cookie("affinity", f"node-{run}")
            return response
        return Response(status_code=202, headers={"operation-location": monitor})

    async def monitor(request: Request) -> Response:
        name, run = request.path_params["name"], request.path_params["run"]
        request_base.set(str(request.base_url))
        return answer(f"{name}/{run}", MONITORS[name], run)

    async def result(request: Request) -> JSONResponse:
        return JSONResponse({"result": request.path_params["run"]})

    async def elsewhere(request: Request) -> JSONResponse:
        return JSONResponse({"elsewhere": request.path_params["run"]})

    async def gone(request: Request) -> JSONResponse:
        return JSONResponse({"error": "deleted"}, 404)

    async def plain(request: Request) -> Response:
        # 3: a 202 without Location means "not finished": poll the same URL.
        run = request.path_params["run"]
        plays.polls[f"plain/{run}"] += 1
        if plays.polls[f"plain/{run}"] < 3:
            return Response(status_code=202, headers={"retry-after": "1"})
        return JSONResponse({"plain": run})

    async def sticky(request: Request) -> Response:
        # 8: the affinity cookie from the start, and the one set by the first poll.
        run = request.path_params["run"]
        if request.cookies.get("affinity") != f"node-{run}":
            return JSONResponse({"error": "wrong node"}, 421)
        plays.polls[f"sticky/{run}"] += 1
        if plays.polls[f"sticky/{run}"] == 1:
            response = Response(status_code=202, headers={"location": f"/sticky/{run}"})
            response.set_cookie("step", "2")
            return response
        if request.cookies.get("step") != "2":
            return JSONResponse({"error": "lost the step cookie"}, 400)
        return JSONResponse({"sticky": run})

    return Starlette(
        routes=[
            Route("/start/{name}/{run}", start, methods=["POST", "PUT", "PATCH", "DELETE", "GET"]),
            Route("/monitors/{name}/{run}", monitor),
            Route("/results/{run}", result),
            Route("/elsewhere/{run}", elsewhere),
            Route("/gone/{run}", gone),
            Route("/plain/{run}", plain),
            Route("/sticky/{run}", sticky),
        ]
    )


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Plays]]:
    plays = Plays()
    with running_server(scenario_server(plays)) as url:
        yield url, plays


# --- the scenarios and what each must give ---------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    method: str
    expect: tuple[Any, ...]  # ("ok", status, json) or ("raises", exception type)
    options: dict[str, Any] = field(default_factory=dict)
    azure: tuple[Any, ...] | None = None  # azure-core's outcome, where it applies


SCENARIOS = [
    Scenario("custom-statuses", "POST", ("ok", 200, {"result": "{run}"}), azure=("same",)),
    Scenario("empty-monitor", "POST", ("raises", repoll.ProtocolError), azure=("raises",)),
    Scenario("statusless-monitor", "POST", ("raises", repoll.ProtocolError), azure=("raises",)),
    Scenario("text-monitor", "POST", ("raises", repoll.ProtocolError), azure=("raises",)),
    Scenario("empty-202-monitor", "POST", ("raises", repoll.ProtocolError), azure=("raises",)),
    Scenario("plain-202", "POST", ("ok", 200, {"plain": "{run}"}), azure=("same",)),
    Scenario("failed", "POST", ("raises", repoll.OperationFailed), azure=("raises",)),
    Scenario("canceled", "POST", ("raises", repoll.OperationCanceled), azure=("raises",)),
    Scenario(
        "failed",
        "POST",
        ("ok", 200, {"status": "Failed", "error": {"code": "Boom"}}),
        options={"return_failed": True},
    ),
    Scenario("put-201", "PUT", ("ok", 200, {"name": "{run}", "ready": True}), azure=("same",)),
    Scenario("post-no-location", "POST", ("ok", 200, {"status": "succeeded"}), azure=("same",)),
    Scenario("delete", "DELETE", ("ok", 200, {"status": "Succeeded"}), azure=("same",)),
    Scenario("both-locations", "POST", ("ok", 200, {"result": "{run}"}), azure=("same",)),
    Scenario(
        "both-locations",
        "POST",
        ("ok", 200, {"elsewhere": "{run}"}),
        options={"final_state_via": "location"},
    ),
    # A bare azure-core pipeline gives up on a 503 while polling; repoll
    # retries it (at most max_retries in a row).
    Scenario("503-then-ok", "POST", ("ok", 200, {"result": "{run}"}), azure=("raises",)),
    Scenario(
        "provisioning",
        "PUT",
        ("ok", 200, {"name": "{run}", "properties": {"provisioningState": "Succeeded"}}),
    ),
    Scenario(
        "already-succeeded",
        "PUT",
        ("ok", 201, {"name": "{run}", "properties": {"provisioningState": "Succeeded"}}),
    ),
    Scenario("cookies", "POST", ("ok", 200, {"sticky": "{run}"})),
    # azure-core follows a monitor on another origin (with the caller's
    # credentials); repoll refuses unless told.
    Scenario("cross-origin", "POST", ("raises", repoll.CrossOriginError), azure=("differs",)),
]

_runs = itertools.count(1)


def _outcome(call: Callable[[], tuple[int, Any]]) -> tuple[Any, ...]:
    try:
        status, body = call()
    except repoll.RepollError as exc:
        return ("raises", type(exc))
    return ("ok", status, body)


def _json(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return content.decode(errors="replace")


def via_transport(url: str, method: str, options: PollOptions) -> tuple[int, Any]:
    transport = repoll.PollingTransport(options=options)
    with httpx.Client(transport=transport, timeout=10) as client:
        response = client.request(method, url, json={} if method in ("PUT", "PATCH") else None)
    return response.status_code, _json(response.content)


def via_async_transport(url: str, method: str, options: PollOptions) -> tuple[int, Any]:
    async def go() -> tuple[int, Any]:
        transport = repoll.AsyncPollingTransport(options=options)
        async with httpx.AsyncClient(transport=transport, timeout=10) as client:
            body = {} if method in ("PUT", "PATCH") else None
            response = await client.request(method, url, json=body)
        return response.status_code, _json(response.content)

    return asyncio.run(go())


def via_handle(url: str, method: str, options: PollOptions) -> tuple[int, Any]:
    with httpx.Client(timeout=10) as client:
        body = {} if method in ("PUT", "PATCH") else None
        handle = repoll.OperationHandle.start(client, method, url, options=options, json=body)
        response = handle.result()
    return response.status_code, _json(response.content)


def via_async_handle(url: str, method: str, options: PollOptions) -> tuple[int, Any]:
    async def go() -> tuple[int, Any]:
        async with httpx.AsyncClient(timeout=10) as client:
            body = {} if method in ("PUT", "PATCH") else None
            handle = await repoll.AsyncOperationHandle.start(
                client, method, url, options=options, json=body
            )
            response = await handle.result()
        return response.status_code, _json(response.content)

    return asyncio.run(go())


def via_requests(url: str, method: str, options: PollOptions) -> tuple[int, Any]:
    with requests.Session() as session:
        session.mount("http://", repoll.PollingAdapter(options=options))
        body = {} if method in ("PUT", "PATCH") else None
        response = session.request(method, url, json=body, timeout=10)
    return response.status_code, _json(response.content)


def via_aiohttp(url: str, method: str, options: PollOptions) -> tuple[int, Any]:
    import aiohttp

    async def go() -> tuple[int, Any]:
        middleware = repoll.aiohttp_polling(options)
        async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
            body = {} if method in ("PUT", "PATCH") else None
            async with session.request(method, url, json=body) as response:
                return response.status, _json(await response.read())

    return asyncio.run(go())


CLIENTS = {
    "transport": via_transport,
    "async transport": via_async_transport,
    "handle": via_handle,
    "async handle": via_async_handle,
    "requests": via_requests,
    "aiohttp": via_aiohttp,
}


def _expected(scenario: Scenario, run: str) -> tuple[Any, ...]:
    if scenario.expect[0] == "raises":
        return scenario.expect
    _, status, body = scenario.expect
    return ("ok", status, json.loads(json.dumps(body).replace("{run}", run)))


@pytest.mark.parametrize(
    "scenario",
    SCENARIOS,
    ids=[f"{s.name}{'-' + '-'.join(s.options) if s.options else ''}" for s in SCENARIOS],
)
def test_every_client_gives_the_expected_outcome(server, scenario):
    base, _ = server
    options = PollOptions(**scenario.options)
    seen = {}
    with repoll.testing():
        for name, call in CLIENTS.items():
            run = str(next(_runs))
            url = f"{base}/start/{scenario.name}/{run}"
            seen[name] = (_outcome(lambda: call(url, scenario.method, options)), run)
    for name, (outcome, run) in seen.items():
        assert outcome == _expected(scenario, run), name


def test_an_already_succeeded_first_response_is_not_polled(server):
    base, plays = server
    run = str(next(_runs))
    with repoll.testing():
        via_transport(f"{base}/start/already-succeeded/{run}", "PUT", PollOptions())
    assert plays.polls[f"already-succeeded/{run}"] == 0


def test_a_handle_resumes_a_status_monitor_from_its_url(server):
    base, _ = server
    run = str(next(_runs))
    with repoll.testing(), httpx.Client(timeout=10) as client:
        started = repoll.OperationHandle.start(
            client, "POST", f"{base}/start/custom-statuses/{run}"
        )
        assert started.url == f"{base}/monitors/custom-statuses/{run}"
        assert started.status is repoll.OperationStatus.RUNNING
        resumed = repoll.OperationHandle.resume(client, started.url)
        response = resumed.result()
    assert response.json() == {"result": run}  # the monitor's resourceLocation
    assert resumed.status is repoll.OperationStatus.SUCCEEDED


def test_a_failed_monitor_is_a_failed_handle(server):
    base, _ = server
    run = str(next(_runs))
    with repoll.testing(), httpx.Client(timeout=10) as client:
        handle = repoll.OperationHandle.start(client, "POST", f"{base}/start/failed/{run}")
        response = handle.wait()
        assert handle.status is repoll.OperationStatus.FAILED
        assert response.json()["status"] == "Failed"
        with pytest.raises(repoll.OperationFailed) as failed:
            handle.result()
    assert failed.value.operation_url == handle.url


# --- azure-core's poller on the same scenarios --------------------------------------------


def via_azure_core(url: str, method: str) -> tuple[int, Any]:
    from azure.core import PipelineClient
    from azure.core.polling import LROPoller
    from azure.core.polling.base_polling import LROBasePolling
    from azure.core.rest import HttpRequest

    client = PipelineClient(base_url=url)
    body = {} if method in ("PUT", "PATCH") else None
    initial = client.send_request(
        HttpRequest(method, url, json=body), _return_pipeline_response=True
    )
    final: dict[str, Any] = {}

    def deserialize(pipeline_response: Any) -> None:
        response = pipeline_response.http_response
        final["status"], final["body"] = response.status_code, _json(response.content)

    poller = LROPoller(client, initial, deserialize, LROBasePolling(timeout=0))
    poller.result(timeout=30)
    return final["status"], final["body"]


AZURE = [s for s in SCENARIOS if s.azure is not None and not s.options]


@pytest.mark.parametrize("scenario", AZURE, ids=[s.name for s in AZURE])
def test_azure_core_on_the_same_scenarios(server, scenario):
    """Where azure-core agrees (``same``, ``raises``) and where repoll deliberately differs."""
    base, _ = server
    run = str(next(_runs))
    url = f"{base}/start/{scenario.name}/{run}"
    try:
        outcome: tuple[Any, ...] = ("ok", *via_azure_core(url, scenario.method))
    except Exception as exc:
        outcome = ("raises", type(exc).__name__)
    kind = scenario.azure[0]  # type: ignore[index]
    if kind == "same":
        assert outcome == _expected(scenario, run)
    elif kind == "raises":
        assert outcome[0] == "raises", outcome
    else:  # differs: azure-core followed the monitor to another origin
        assert outcome[0] == "ok", outcome


def test_repoll_request_exits_1_for_a_failed_monitor(server):
    """A monitor's Failed arrives as a 200 that says so: the command does not call it a success."""
    base, _ = server
    results = {}
    for name in ("failed", "custom-statuses", "empty-monitor"):
        run = str(next(_runs))
        results[name] = subprocess.run(
            [sys.executable, "-m", "repoll", "request", "-X", "POST", f"{base}/start/{name}/{run}"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert results["failed"].returncode == 1, results["failed"].stderr
    assert '"Failed"' in results["failed"].stdout
    assert results["custom-statuses"].returncode == 0, results["custom-statuses"].stderr
    assert results["empty-monitor"].returncode == 3  # a protocol error
    assert "without a JSON status" in results["empty-monitor"].stderr
