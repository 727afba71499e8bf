"""End to end over real sockets: one uvicorn server, real curl, requests and httpx."""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import pytest
import requests

import repoll

pytestmark = pytest.mark.slow

JOB = {"seconds": 3}
# Generous: a 3 s job takes 1 start + about one poll per held interval.
MAX_REQUESTS = 8


def job_requests(live):
    return [r for r in live.seen() if r[1] == "/start_work" or r[1].startswith("/operations/")]


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl on the PATH")
def test_curl_follows_to_the_result_without_spinning(live):
    result = subprocess.run(
        [
            "curl",
            "-sL",
            "--max-time",
            "60",
            "-d",
            json.dumps(JOB),
            "-H",
            "Content-Type: application/json",
            "-w",
            "\n%{http_code} %{num_redirects}",
            f"{live.url}/start_work",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    body, status_line = result.stdout.rsplit("\n", 1)
    assert status_line.split()[0] == "200"
    assert json.loads(body)["result"] == "done"
    seen = job_requests(live)
    assert seen[0] == ("POST", "/start_work")
    assert all(method == "GET" for method, _ in seen[1:])
    assert 2 <= len(seen) <= MAX_REQUESTS


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl on the PATH")
def test_curl_with_x_post_is_told_what_to_type_instead(live):
    """``curl -L -X POST`` keeps POST through the 303: the 405 says to use -d, not -X."""
    result = subprocess.run(
        ["curl", "-sL", "-X", "POST", "--max-time", "30", "-H", "Content-Type: application/json",
         "--data", json.dumps({"seconds": 0}), "-w", "\n%{http_code}", f"{live.url}/start_work"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    body, status = result.stdout.rsplit("\n", 1)
    assert status == "405"
    problem = json.loads(body)
    assert problem["status"] == 405
    assert "leave out -X POST" in problem["detail"]


def test_requests_follows_to_the_result_without_spinning(live):
    response = requests.post(f"{live.url}/start_work", json=JOB, timeout=60)
    assert response.status_code == 200
    assert response.json()["result"] == "done"
    assert all(r.status_code == 303 for r in response.history)
    assert 2 <= len(job_requests(live)) <= MAX_REQUESTS


def test_httpx_follow_redirects_gets_the_result_without_spinning(live):
    with httpx.Client(follow_redirects=True, timeout=60) as client:
        response = client.post(f"{live.url}/start_work", json=JOB)
    assert response.status_code == 200
    assert response.json()["result"] == "done"
    assert 2 <= len(job_requests(live)) <= MAX_REQUESTS


def test_polling_transport_over_the_network(live):
    with httpx.Client(transport=repoll.PollingTransport(), base_url=live.url, timeout=60) as c:
        response = c.post("/start_work", json={"seconds": 1.5})
    assert response.status_code == 200
    assert response.headers["operation-status"] == "succeeded"
    # Long-poll: the start, then one held poll that returns when the work ends.
    assert len(job_requests(live)) == 2


def test_failing_job_is_a_500_problem_over_the_network(live):
    response = requests.post(f"{live.url}/start_work", json={"seconds": 0.2, "fail": True})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["operation-status"] == "failed"


def test_invalid_body_is_an_immediate_422(live):
    response = requests.post(f"{live.url}/start_work", json={"seconds": "soon"}, timeout=10)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["loc"] == ["body", "seconds"]
    assert not response.history
    assert job_requests(live) == [("POST", "/start_work")]


def test_healthz_is_not_deferred(live):
    response = requests.get(f"{live.url}/healthz", timeout=10)
    assert response.json() == {"status": "ok"}
    assert "operation-status" not in response.headers
