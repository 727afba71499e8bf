"""In real headless Chromium (Debian's package, driven by Selenium with the installed
chromedriver; nothing is downloaded): the form, the ES module, the event stream."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "bench" / "results"


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        message = (
            "needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium fetch a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="repoll-chromium-")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=900,700",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_until(driver, condition, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def test_a_form_post_shows_the_progress_page_then_the_result(browser, live):
    from selenium.webdriver.common.by import By

    browser.get(f"{live.url}/")
    field = browser.find_element(By.ID, "seconds")
    field.clear()
    field.send_keys("4")
    browser.find_element(By.ID, "submit").click()
    wait_until(browser, lambda d: "being processed" in d.page_source)
    assert "/operations/" in browser.current_url or "start_work_form" in browser.current_url
    progress = browser.find_element(By.ID, "progress")
    status = browser.find_element(By.ID, "status").text
    assert "Status:" in status
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "progress-page.png"))
    assert progress.tag_name == "progress"
    wait_until(browser, lambda d: d.find_elements(By.ID, "result"), timeout=40)
    assert browser.find_element(By.ID, "result").text == "Result: done"
    assert "/operations/" in browser.current_url  # the Refresh brought it to the operation


def test_the_es_module_completes_a_job_from_a_page_script(browser, live):
    from selenium.webdriver.common.by import By

    browser.get(f"{live.url}/")
    browser.find_element(By.ID, "run-script").click()
    wait_until(browser, lambda d: d.find_element(By.ID, "script-result").text, timeout=40)
    result = browser.find_element(By.ID, "script-result").text
    assert result.startswith("200 ")
    assert '"result":"done"' in result
    hops = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#script-log li")]
    assert hops[0].startswith("202 ")  # the start, asked for respond-async
    assert hops[-1].startswith("200 succeeded")


def test_the_event_stream_delivers_progress(browser, live):
    from selenium.webdriver.common.by import By

    browser.get(f"{live.url}/")
    browser.find_element(By.ID, "watch-events").click()
    wait_until(
        browser,
        lambda d: any(
            li.text.startswith("outcome")
            for li in d.find_elements(By.CSS_SELECTOR, "#event-log li")
        ),
        timeout=40,
    )
    events = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#event-log li")]
    progresses = [float(e.split()[1]) for e in events[:-1] if e.split()[1] != "null"]
    assert len(progresses) >= 2  # several progress events before the outcome
    assert progresses == sorted(progresses)
    assert events[-1] == "outcome succeeded 200"


BEARER_SCRIPT = """
const done = arguments[arguments.length - 1];
import("/operations/client.js").then(async ({ request, watch }) => {
  const auth = { Authorization: "Bearer token-of-alice", "X-Custom": "tenant-7" };
  const json = { ...auth, "Content-Type": "application/json" };
  const body = JSON.stringify({ seconds: 2 });
  const response = await request("/start_work", { method: "POST", headers: json, body });
  const answer = await response.text();
  const started = await fetch("/start_work", {
    method: "POST", headers: { ...json, Prefer: "respond-async" }, body,
  });
  const operation = started.headers.get("Location");
  const events = [];
  const outcome = await watch(operation, (event) => events.push(event.status), { headers: auth });
  const stranger = await fetch(operation);
  done({ status: response.status, answer, outcome: outcome.status, events,
         stranger: stranger.status });
}).catch((error) => done({ error: String(error) }));
"""


def test_a_bearer_token_page_script_completes_through_the_module_and_its_stream(browser, live):
    # The operation is the token's: polls and the event stream must carry it,
    # or they are another principal's 404 (the last fetch shows it).
    browser.get(f"{live.url}/")
    browser.set_script_timeout(60)
    result = browser.execute_async_script(BEARER_SCRIPT)
    assert "error" not in result, result
    assert result["status"] == 200, result
    assert '"result":"done"' in result["answer"]
    assert result["outcome"] == "succeeded"
    assert result["events"][-1] == "succeeded"
    assert result["stranger"] == 404
    polls = [path for method, path in live.seen() if method == "GET" and "/operations/" in path]
    assert polls


def header_echo_app():
    """A page, the module, and a start whose operation (same origin or not) records its polls."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    module = Path(__file__).resolve().parent.parent / "src/repoll/server/static/repoll.js"
    polls: list[dict[str, str]] = []

    async def page(request):
        return HTMLResponse("<!doctype html><title>echo</title>")

    async def client_js(request):
        return Response(module.read_text(), media_type="text/javascript")

    async def start(request):
        host = "localhost" if request.query_params.get("cross") else "127.0.0.1"
        location = f"http://{host}:{request.url.port}/op"
        headers = {"location": location, "retry-after": "1", "retry-after-ms": "100"}
        return JSONResponse({"status": "running"}, status_code=202, headers=headers)

    async def op(request):
        polls.append(dict(request.headers))
        return JSONResponse({"done": True})

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/client.js", client_js),
            Route("/start", start, methods=["POST"]),
            Route("/op", op),
        ],
        middleware=[Middleware(CORSMiddleware, allow_origins=["*"], allow_headers=["*"])],
    )
    return app, polls


ECHO_SCRIPT = """
const [cross, done] = [arguments[0], arguments[arguments.length - 1]];
import("/client.js").then(async ({ request }) => {
  const headers = {
    Authorization: "Bearer secret", "X-API-Key": "k1", "api-key": "k2", "X-Custom": "tenant-7",
    traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "Content-Type": "application/json", "Idempotency-Key": '"k-1"',
  };
  const response = await request(cross ? "/start?cross=1" : "/start",
    { method: "POST", headers, body: "{}" }, { allowCrossOrigin: cross });
  done({ status: response.status });
}).catch((error) => done({ error: String(error) }));
"""


@pytest.mark.parametrize("cross", [False, True], ids=["same-origin", "cross-origin"])
def test_the_module_polls_with_the_callers_headers(browser, cross):
    from repoll.cli._main import running_server

    app, polls = header_echo_app()
    with running_server(app) as url:
        browser.get(f"{url}/")
        browser.set_script_timeout(30)
        result = browser.execute_async_script(ECHO_SCRIPT, cross)
    assert result == {"status": 200}, result
    poll = polls[-1]
    assert poll["x-custom"] == "tenant-7"
    assert poll["traceparent"].startswith("00-0af7651916cd43dd")
    assert poll["prefer"].startswith("respond-async")
    assert "content-type" not in poll
    assert "idempotency-key" not in poll
    credentials = {"authorization", "x-api-key", "api-key", "cookie"}
    if cross:
        assert not credentials & set(poll), poll
    else:
        assert poll["authorization"] == "Bearer secret"
        assert poll["x-api-key"] == "k1"
        assert poll["api-key"] == "k2"
    # A browser writes its own User-Agent; fetch cannot replace it.
    assert "Chrome" in poll["user-agent"]
