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
