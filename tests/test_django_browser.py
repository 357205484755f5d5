"""The try-it page in a real headless Chromium, against gunicorn, Redis and an embed worker.

Needs Debian's chromium and chromium-driver (``scripts/install_browser.sh``)
and selenium; in CI their absence is a failure, elsewhere a skip that says
how to install them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.demo_site import WebServer, demo_site, embed_worker, site_env, tiny_checkpoint  # noqa: F401 - fixtures

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Headless, sandbox-free (we run as root in a container), and quiet: no network beyond loopback.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,1400",
]


def require_browser() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        message = f"missing {', '.join(missing)}: run scripts/install_browser.sh and pip install selenium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def site(redis_server, tiny_checkpoint, embed_worker, tmp_path_factory) -> Iterator[WebServer]:
    # Fill-mask left unconfigured, as on a fresh machine: the page must say how to turn it on.
    env = {**site_env(redis_server, tiny_checkpoint), "FILL_MASK_CHECKPOINT": ""}
    server = WebServer(env, str(tmp_path_factory.mktemp("web") / "gunicorn.log")).start()
    yield server
    server.stop()


@pytest.fixture
def browser(tmp_path) -> Iterator:
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_similarity_in_the_browser(site, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # Given the page, with the health line filled in from /healthz
    browser.get(site.url + "/")
    WebDriverWait(browser, 20).until(lambda d: "Redis ok" in d.find_element(By.ID, "health").text)

    # When a query and sentences are typed and Compare is clicked
    query = browser.find_element(By.ID, "query")
    query.clear()
    query.send_keys("How do I bake bread at home?")
    candidates = browser.find_element(By.ID, "candidates")
    candidates.clear()
    candidates.send_keys("The stock market fell sharply.\nA simple recipe for homemade bread.\nMy cat sleeps all day.")
    browser.find_element(By.ID, "compare").click()

    # Then the sentences come back ranked, with scores and the timing
    rows = WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#similarity-results tr") or None
    )
    assert len(rows) == 3
    assert rows[0].text.startswith("A simple recipe for homemade bread.")
    timing = browser.find_element(By.ID, "similarity-timing").text
    assert timing.startswith("server ") and "round trip" in timing
    assert browser.find_element(By.ID, "similarity-error").text == ""
    browser.save_screenshot(str(tmp_path / "similarity.png"))


def test_fill_mask_explains_how_to_turn_it_on(site, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # Given a server without FILL_MASK_CHECKPOINT, the page says so up front
    browser.get(site.url + "/")
    assert "FILL_MASK_CHECKPOINT" in browser.find_element(By.ID, "fill-mask-notice").text

    # When Predict is clicked anyway, the endpoint's message is shown
    browser.find_element(By.ID, "predict").click()
    error = WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "fill-mask-error").text or None)
    assert error.startswith("503: fill-mask is not configured: set FILL_MASK_CHECKPOINT")
