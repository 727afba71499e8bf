"""Other conventions, both ways: repoll's client against Azure-style and plain-202
services (small real servers), and azure-core's own poller against the demo server."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

import repoll
from repoll import PollOptions
from repoll.cli._main import running_server

pytestmark = pytest.mark.slow


def azure_style_service() -> Starlette:
    """PUT creates a resource behind an Azure-AsyncOperation monitor; POST runs an action
    behind Operation-Location with the result at Location; 'fail' ends Failed."""
    monitors: dict[str, dict] = {}

    def monitor(name: str, **extra) -> str:
        monitors[name] = {"polls": 0, **extra}
        return f"/monitors/{name}"

    async def put_resource(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        headers = {"azure-asyncoperation": monitor(name), "retry-after": "0"}
        return JSONResponse({"name": name, "state": "Creating"}, status_code=201, headers=headers)

    async def get_resource(request: Request) -> JSONResponse:
        return JSONResponse({"name": request.path_params["name"], "state": "Ready"})

    async def post_action(request: Request) -> Response:
        headers = {"operation-location": monitor("action"), "location": "/results/action"}
        return Response(status_code=202, headers=headers)

    async def post_failing(request: Request) -> Response:
        return Response(status_code=202, headers={"operation-location": monitor("bad", fail=True)})

    async def get_monitor(request: Request) -> JSONResponse:
        state = monitors[request.path_params["name"]]
        state["polls"] += 1
        if state["polls"] < 3:
            return JSONResponse({"status": "InProgress"}, headers={"retry-after": "0"})
        if state.get("fail"):
            return JSONResponse({"status": "Failed", "error": {"code": "Boom"}})
        return JSONResponse({"status": "Succeeded"})

    async def get_result(request: Request) -> JSONResponse:
        return JSONResponse({"action": "done"})

    return Starlette(
        routes=[
            Route("/resources/{name}", put_resource, methods=["PUT"]),
            Route("/resources/{name}", get_resource, methods=["GET"]),
            Route("/actions", post_action, methods=["POST"]),
            Route("/failing", post_failing, methods=["POST"]),
            Route("/monitors/{name}", get_monitor),
            Route("/results/{name}", get_result),
        ]
    )


def plain_service() -> Starlette:
    """202 + Location, no Retry-After; /jobs/{id} answers 202 until done, then 200.
    /reports finishes with a 303 to the report (the JSON:API recommendation)."""
    started: dict[str, float] = {}

    async def post_job(request: Request) -> Response:
        job = str(len(started) + 1)
        started[job] = time.monotonic()
        return Response(status_code=202, headers={"location": f"/jobs/{job}"})

    async def get_job(request: Request) -> Response:
        job = request.path_params["job"]
        if time.monotonic() - started[job] < 0.6:
            return JSONResponse(
                {"state": "pending"}, status_code=202, headers={"location": request.url.path}
            )
        if request.url.path.startswith("/reports"):
            return RedirectResponse(f"/report-files/{job}", status_code=303)
        return JSONResponse({"job": job, "state": "done"})

    async def report_file(request: Request) -> JSONResponse:
        return JSONResponse({"report": request.path_params["job"]})

    async def post_report(request: Request) -> Response:
        job = str(len(started) + 1)
        started[job] = time.monotonic()
        return Response(status_code=202, headers={"location": f"/reports/{job}"})

    return Starlette(
        routes=[
            Route("/jobs", post_job, methods=["POST"]),
            Route("/jobs/{job}", get_job),
            Route("/reports", post_report, methods=["POST"]),
            Route("/reports/{job}", get_job),
            Route("/report-files/{job}", report_file),
        ]
    )


@pytest.fixture(scope="module")
def azure_url():
    with running_server(azure_style_service()) as url:
        yield url


@pytest.fixture(scope="module")
def plain_url():
    with running_server(plain_service()) as url:
        yield url


def polling_client(**options) -> httpx.Client:
    transport = repoll.PollingTransport(options=PollOptions(**options))
    return httpx.Client(transport=transport, timeout=30)


def test_azure_put_follows_the_monitor_then_gets_the_resource(azure_url):
    with polling_client() as client:
        response = client.put(f"{azure_url}/resources/db1", json={})
    assert response.status_code == 200
    assert response.json() == {"name": "db1", "state": "Ready"}
    hops = response.extensions["repoll.hops"]
    assert [h.status for h in hops] == [201, 200, 200, 200, 200]


def test_azure_post_gets_the_result_at_location(azure_url):
    with polling_client() as client:
        response = client.post(f"{azure_url}/actions")
    assert response.json() == {"action": "done"}


def test_azure_failure_raises_with_the_monitors_answer(azure_url):
    with polling_client() as client, pytest.raises(repoll.OperationFailed) as failed:
        client.post(f"{azure_url}/failing")
    assert failed.value.response.json()["status"] == "Failed"
    assert failed.value.operation_url.endswith("/monitors/bad")


def test_azure_failure_is_returned_when_asked(azure_url):
    with polling_client(return_failed=True) as client:
        response = client.post(f"{azure_url}/failing")
    assert response.json()["status"] == "Failed"


def test_plain_202_services_are_followed_with_backoff(plain_url):
    with polling_client() as client:
        response = client.post(f"{plain_url}/jobs")
    assert response.status_code == 200
    assert response.json()["state"] == "done"
    assert len(response.extensions["repoll.hops"]) >= 2


def test_a_status_url_that_ends_with_303_leads_to_the_result(plain_url):
    with polling_client() as client:
        response = client.post(f"{plain_url}/reports")
    assert response.status_code == 200
    assert set(response.json()) == {"report"}
    assert response.extensions["repoll.hops"][-2].status == 303


def test_azure_cores_poller_drives_the_demo_server(live):
    from azure.core import PipelineClient
    from azure.core.polling import LROPoller
    from azure.core.polling.base_polling import LROBasePolling
    from azure.core.rest import HttpRequest

    client = PipelineClient(base_url=live.url)
    request = HttpRequest(
        "POST", f"{live.url}/start_work", json={"seconds": 1}, headers={"Prefer": "respond-async"}
    )
    initial = client.send_request(request, _return_pipeline_response=True)
    assert initial.http_response.status_code == 202
    poller = LROPoller(
        client,
        initial,
        lambda response: json.loads(response.http_response.text()),
        LROBasePolling(timeout=1),
    )
    result = poller.result(timeout=60)
    assert result["result"] == "done"
    assert poller.status().lower() == "succeeded"
