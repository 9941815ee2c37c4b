"""The dashboard in a real browser (headless chromium) against a real `distill serve`."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from client import DistillClient
from core.models import build_model, save_weights
from tests.api.support import npz_bytes
from tests.client.browser import chromium, console_errors, eventually
from tests.client.served import Served, tiny_demo_spec
from tests.e2e.conftest import DISTILL, START_TIMEOUT_S, clean_env, spawn, wait_until
from tests.services import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    driver = chromium()
    yield driver
    driver.quit()


def _status(browser: WebDriver, job_id: str) -> str | None:
    rows = browser.find_elements(By.CSS_SELECTOR, f'tr[data-job-id="{job_id}"]')
    return rows[0].get_attribute("data-status") if rows else None


def _click(browser: WebDriver, element_id: str) -> None:
    """Click, finding the element afresh if the page redrew it meanwhile."""
    eventually(lambda: browser.find_element(By.ID, element_id).click() or True, 10, f"a click on #{element_id}")


def test_the_page_is_static_with_a_content_security_policy(served: Served) -> None:
    root = httpx.get(f"{served.url}/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/ui/"
    page = httpx.get(f"{served.url}/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "http" not in page.text.replace(served.url, "")  # nothing fetched from another origin
    assert httpx.get(f"{served.url}/ui/js/app.js").headers["content-type"].startswith(("text/javascript",
                                                                                         "application/javascript"))


def test_list_goes_live_to_succeeded_and_the_job_page_shows_heatmaps(served: Served, browser: WebDriver) -> None:
    browser.get(f"{served.url}/")
    eventually(lambda: browser.find_element(By.ID, "jobs-table"), 30, "the jobs table")
    browser.execute_script("window.notReloaded = true;")
    with DistillClient(served.url) as client:
        job = client.submit(tiny_demo_spec("browser-live"))

    eventually(lambda: _status(browser, job.id), 30, "the new job's row (no reload)")
    eventually(lambda: _status(browser, job.id) == "succeeded", 180, "the row to turn succeeded")
    assert browser.execute_script("return window.notReloaded === true;"), "the page was reloaded"
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-job-id="{job.id}"]')
    assert "100%" in row.text and "e2kd" in row.text and "resnet8 ← resnet20" in row.text

    row.find_element(By.CSS_SELECTOR, "a.job-link").click()
    eventually(lambda: browser.find_elements(By.CSS_SELECTOR, "#heatmaps img"), 30, "the heatmap gallery")
    images = browser.find_elements(By.CSS_SELECTOR, "#heatmaps img")
    assert len(images) == 2  # report.heatmaps of the tiny spec
    eventually(lambda: all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth;", image)
                           for image in images), 30, "every heatmap to load")
    metrics = browser.find_element(By.ID, "metrics-table").text
    assert "Student top-1" in metrics and "Explanation cosine" in metrics
    assert browser.find_elements(By.CSS_SELECTOR, "#curves svg path")
    assert "metrics.json" in browser.find_element(By.ID, "downloads").text
    assert "100%" in browser.find_element(By.ID, "live").text
    assert console_errors(browser) == []  # no script error, no CSP violation


def test_sweeps_page_lists_a_sweep_with_its_children(served: Served, browser: WebDriver) -> None:
    with DistillClient(served.url) as client:
        sweep = client.submit_sweep({"base": tiny_demo_spec("browser-sweep"), "grid": {"training.seed": [0, 1]}})
        try:
            browser.get(f"{served.url}/ui/#/sweeps")
            row = eventually(lambda: browser.find_elements(By.CSS_SELECTOR, f'tr[data-sweep-id="{sweep.id}"]'), 30,
                             "the sweep's row")[0]
            assert "browser-sweep" in row.text and "/2" in row.text  # ended/total children
            assert browser.find_element(By.CSS_SELECTOR, '[data-nav="sweeps"]').get_attribute("class") == "active"
            assert console_errors(browser) == []
        finally:
            client.cancel_sweep(sweep.id)  # leave the worker to the other tests


def test_cancel_from_the_job_page_asks_first(served: Served, browser: WebDriver) -> None:
    with DistillClient(served.url) as client:
        job = client.submit(tiny_demo_spec("browser-cancel", epochs=30))
        browser.get(f"{served.url}/ui/#/jobs/{job.id}")
        eventually(lambda: "running" in browser.find_element(By.CSS_SELECTOR, ".job-head .badge").text, 90,
                   "the job page to show it running (live)")

        _click(browser, "cancel-job")
        eventually(lambda: browser.find_element(By.ID, "confirm-dialog").is_displayed(), 5, "the confirmation")
        _click(browser, "confirm-no")
        assert client.get(job.id).status == "running"  # "Keep it" keeps it

        _click(browser, "cancel-job")
        eventually(lambda: browser.find_element(By.ID, "confirm-dialog").is_displayed(), 5, "the confirmation")
        _click(browser, "confirm-yes")
        eventually(lambda: browser.find_element(By.CSS_SELECTOR, ".job-head .badge").text == "cancelled", 60,
                   "the page to show the job cancelled")
        assert client.get(job.id).status == "cancelled"


def test_with_api_keys_the_page_asks_for_the_key_once_and_uploads(tmp_path: Path, browser: WebDriver) -> None:
    """`distill api` alone with keys: the page asks, remembers the key for the tab, and the upload form works."""
    port = free_port()
    env = clean_env(DISTILL_HOME=str(tmp_path / "home"), DISTILL_API_KEYS="s3cret-key")
    api = spawn("api", [DISTILL, "api", "--port", str(port)], env, tmp_path / "logs")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url), START_TIMEOUT_S, f"distill api\n{api.log()}", 0.3)
        browser.get(f"{url}/ui/#/upload")
        key_input = eventually(lambda: browser.find_element(By.ID, "key-input") if browser.find_element(
            By.ID, "key-dialog").is_displayed() else None, 20, "the key prompt")
        key_input.send_keys("wrong")
        browser.find_element(By.ID, "key-submit").click()
        eventually(lambda: "refused" in browser.find_element(By.ID, "key-error").text, 20, "the wrong key refused")
        browser.find_element(By.ID, "key-input").send_keys("s3cret-key")
        browser.find_element(By.ID, "key-submit").click()
        eventually(lambda: "None yet." in browser.find_element(By.ID, "view").text, 20, "the lists, with the key")

        browser.refresh()  # the key stays for this tab
        eventually(lambda: "Datasets" in browser.find_element(By.ID, "view").text, 20, "the page after a reload")
        assert not browser.find_element(By.ID, "key-dialog").is_displayed()

        data = tmp_path / "arrays.npz"
        rng = np.random.default_rng(0)
        data.write_bytes(npz_bytes(x=rng.integers(0, 255, (30, 8, 8), dtype=np.uint8), y=np.arange(30) % 3))
        form = browser.find_element(By.ID, "dataset-form")
        form.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(data))
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        stored = eventually(lambda: form.find_element(By.CSS_SELECTOR, ".outcome .ok").text, 30, "the upload result")
        assert "Stored dataset ds_" in stored and "3 classes" in stored
        listed = httpx.get(f"{url}/v1/datasets", headers={"Authorization": "Bearer s3cret-key"}).json()["items"]
        assert [item["name"] for item in listed] == ["arrays"]

        weights = tmp_path / "teacher.safetensors"
        save_weights(build_model("cnn", 10, 1), weights)
        form = browser.find_element(By.ID, "model-form")
        form.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(weights))
        form.find_element(By.NAME, "arch").send_keys("cnn")  # classes and channels left to the weights
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        stored = eventually(lambda: form.find_element(By.CSS_SELECTOR, ".outcome .ok").text, 30, "the model upload")
        assert "Stored model mdl_" in stored and '"arch": "cnn"' in stored
        eventually(lambda: "10 classes, 1 ch" in browser.find_element(By.ID, "view").text, 10, "the models list")
        assert "s3cret-key" not in api.log()  # never in a URL, so never in the access log
    finally:
        api.stop(signal.SIGTERM, timeout_s=30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz").status_code == 200
    except httpx.TransportError:
        return False
