"""/docs and /redoc in a real browser with every host but the server unreachable: packaged assets, no CDN."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.client.browser import eventually
from tests.e2e.conftest import DISTILL, START_TIMEOUT_S, clean_env, spawn, wait_until
from tests.services import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("docs-home")
    port = free_port()
    process = spawn("api", [DISTILL, "api", "--port", str(port)], clean_env(DISTILL_HOME=str(home)), home / "logs")
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.alive(), process.log()
        try:
            return httpx.get(f"{url}/healthz").status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, START_TIMEOUT_S, "the API")
    yield url
    process.stop()


@pytest.fixture(scope="module")
def offline_browser() -> Iterator[webdriver.Chrome]:
    """Headless chromium whose resolver knows no host but 127.0.0.1: any CDN load fails."""
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--no-first-run", "--disable-extensions",
                     "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
    yield driver
    driver.quit()


def test_the_pages_name_no_other_origin(api_url: str) -> None:
    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{api_url}{page}").text
        assert not re.search(r"https?://", html), html  # every script, style and font from this server
    assert httpx.get(f"{api_url}/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_swagger_ui_lists_the_operations_offline(api_url: str, offline_browser: webdriver.Chrome) -> None:
    offline_browser.get(f"{api_url}/docs")

    def listed() -> list[str]:
        return [element.text for element in offline_browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")]

    paths = eventually(listed, 60, "Swagger UI's operations")

    assert "/v1/jobs" in paths and "/v1/datasets" in paths, paths


def test_redoc_lists_the_operations_offline(api_url: str, offline_browser: webdriver.Chrome) -> None:
    offline_browser.get(f"{api_url}/redoc")

    text = eventually(lambda: (body := offline_browser.find_element(By.TAG_NAME, "body").text)
                      and "Upload a dataset" in body and body, 60, "ReDoc's operations")

    assert "Submit" in text or "jobs" in text
