"""The support page in a real browser: Debian's headless Chromium driven by Selenium
(``/usr/bin/chromium`` and ``/usr/bin/chromedriver``, named explicitly: Selenium Manager
never downloads a browser or a driver), the bridge served over a real socket.

Log in, find the customer by each identifier, read a blocked chat's story and its
sentence, see the overview and its chart, log out, with no error in the browser's
console; search with the keyboard alone; the pages fit a phone. The same run saves the
screenshots the docs show (``docs/_static/support/*.png``).
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest
import requests_mock as requests_mock_module
from werkzeug.security import generate_password_hash
from werkzeug.serving import make_server

from tests.conftest import API_KEY, TOKENS_URL
from tests.helpers import register
from tests.test_support import ANN, CHAT, PASSWORD, STAFF, SUPPORT
from tests.test_telegram import blocked, dated, send, unblocked

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "_static" / "support"
missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
pytestmark = [
    pytest.mark.real_http,
    pytest.mark.skipif(
        bool(missing),
        reason=f"{' and '.join(missing)} missing: apt-get install chromium chromium-driver",
    ),
]
BLOCKED_AT = datetime(2026, 12, 3, 14, 2, tzinfo=UTC)
SENTENCE = (
    "Blocked the bot on 3 Dec at 14:02 (Telegram); Reteno will not message this chat "
    "until the customer presses Start again."
)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.selenium_manager import SeleniumManager

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the suite may run as root in a container
        "--disable-dev-shm-usage",
        "--window-size=1200,1000",
        "--force-device-scale-factor=1",
        "--lang=en-GB",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    never = AssertionError("Selenium Manager must not run: it would download a browser")
    with mock.patch.object(SeleniumManager, "binary_paths", side_effect=never):
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.implicitly_wait(10)  # a page may load slowly on a busy machine
    yield driver
    driver.quit()


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self):
        return self.now

    def at(self, when: datetime):
        self.now = when


def _telegram(client, clock, update, when):
    clock.at(when)
    update["update_id"] = int(when.timestamp())  # the same on every run: so are the screenshots
    assert send(client, dated(update, int(when.timestamp()))).status_code == 200


@pytest.fixture
def site(make_app):
    """The bridge with the support page, a month of registrations, and Ann, who blocked
    the bot on 3 Dec at 14:02, served over a real socket; its URL."""
    app = make_app(**SUPPORT)
    bridge = app.extensions["reteno_bridge"]
    clock = Clock(datetime(2026, 11, 4, 9, 0, tzinfo=UTC))
    bridge.ledger.clock = clock
    bridge.ledger.add_staff(STAFF, generate_password_hash(PASSWORD, "pbkdf2:sha256:1000"))
    client = app.test_client()
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with requests_mock_module.Mocker() as upstream:  # Reteno, for the month's deliveries
        upstream.post(TOKENS_URL, json="OK")
        for day in range(30):
            clock.at(datetime(2026, 11, 4, 9, 0, tzinfo=UTC) + timedelta(days=day))
            chats = [900000 + day * 10 + i for i in range(1 + day % 4)]
            register(client, auth, *[{"token": c, "contactId": c} for c in chats])
            bridge.deliver_once()
            if day % 3 == 0:
                later = clock.now + timedelta(minutes=30)
                _telegram(client, clock, blocked(chats[0]), later)
            if day % 6 == 0 and day:  # the chat blocked three days ago comes back
                later = clock.now + timedelta(minutes=10)
                _telegram(client, clock, unblocked(chats[0] - 30), later)
        clock.at(datetime(2026, 12, 3, 13, 0, tzinfo=UTC))
        register(client, auth, ANN)
        bridge.deliver_once()
    _telegram(client, clock, blocked(CHAT), BLOCKED_AT)
    clock.at(datetime(2026, 12, 3, 15, 30, tzinfo=UTC))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def _navigates(driver, action) -> None:
    """Do ``action`` (a click, keys) and wait until the next page replaced this one.

    The old page is marked with a window property; the next document starts
    without it. (``staleness_of`` on an element of the old page can fail with
    chromedriver's "Node with given id does not belong to the document" while
    the old document is being torn down.)
    """
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.wait import WebDriverWait

    driver.execute_script("window.bridgeOldPage = true")
    action()
    WebDriverWait(driver, 10, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script(
            "return window.bridgeOldPage !== true && document.readyState === 'complete'"
        )
    )


def _screenshot(driver, name: str) -> None:
    """The whole page, from its top, as ``docs/_static/support/<name>.png``."""
    driver.set_window_size(1200, 600)  # the page's own height, not the window's
    driver.execute_script("window.scrollTo(0, 0)")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    frame = driver.get_window_size()["height"] - driver.execute_script("return innerHeight")
    driver.set_window_size(1200, min(2400, height + frame))
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def _console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _log_in(driver, site):
    from selenium.webdriver.common.by import By

    driver.get(f"{site}/support/login")
    driver.find_element(By.ID, "username").send_keys(STAFF)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    _navigates(driver, driver.find_element(By.CSS_SELECTOR, "main button[type=submit]").click)
    assert driver.find_element(By.TAG_NAME, "h1").text == "Find a customer"


def _search(driver, kind_label, value):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    Select(driver.find_element(By.ID, "kind")).select_by_visible_text(kind_label)
    field = driver.find_element(By.ID, "value")
    field.clear()
    field.send_keys(value)
    _navigates(driver, driver.find_element(By.CSS_SELECTOR, "form[role=search] button").click)


def test_log_in_search_read_a_story_see_the_overview_log_out(browser, site):
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get_log("browser")  # start from an empty console
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.set_window_size(1200, 720)
    driver.get(f"{site}/support/login")
    _screenshot(driver, "login")
    _log_in(driver, site)

    for label, value in (
        ("E-mail", "ann@example.com"),
        ("Phone", "+380 95 649 0955"),
        ("externalCustomerId", "cust-7"),
        ("contactId", "4242"),
        ("Telegram chat id", str(CHAT)),
    ):
        _search(driver, label, value)
        headings = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "section.story h2")]
        assert headings == [f"Chat {CHAT}"], label

    assert driver.find_element(By.CSS_SELECTOR, ".story .answer").text == SENTENCE
    first = driver.find_element(By.CSS_SELECTOR, ".lines li")
    assert "2026-12-03 14:02:00 UTC" in first.find_element(By.TAG_NAME, "time").text
    raw = first.find_element(By.TAG_NAME, "pre")
    assert not raw.is_displayed()
    first.find_element(By.TAG_NAME, "summary").click()
    assert '"cause": "telegram_blocked"' in raw.text
    _screenshot(driver, "story")

    _navigates(driver, driver.find_element(By.LINK_TEXT, "Overview").click)
    assert driver.find_element(By.TAG_NAME, "h1").text == "Overview"
    chart = driver.find_element(By.CSS_SELECTOR, "svg.chart")
    assert chart.size["width"] > 300
    assert (
        driver.find_element(By.ID, "chart-title")
        .get_attribute("textContent")
        .startswith("Registrations, removals and comebacks per day, the last 30 days")
    )
    assert driver.find_element(By.ID, "totals").text.startswith(
        "78 registrations, 11 removals and 4 comebacks"
    )
    _screenshot(driver, "overview")

    _navigates(driver, driver.find_element(By.CSS_SELECTOR, ".logout button").click)
    assert driver.find_element(By.TAG_NAME, "h1").text == "Log in"
    assert "You are logged out." in driver.find_element(By.CSS_SELECTOR, ".note").text
    driver.get(f"{site}/support/")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Log in"
    assert _console_errors(driver) == []


def test_the_search_works_with_the_keyboard_alone(browser, site):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    driver.delete_all_cookies()
    driver.get_log("browser")
    driver.set_window_size(1200, 900)
    driver.get(f"{site}/support/login")
    keys = ActionChains(driver)
    # the user name field has the focus; Tab to the password, Enter submits
    _navigates(driver, keys.send_keys(STAFF, Keys.TAB, PASSWORD, Keys.ENTER).perform)
    assert driver.find_element(By.TAG_NAME, "h1").text == "Find a customer"
    focused = []
    for _ in range(12):  # Tab through the page until the search's first field
        ActionChains(driver).send_keys(Keys.TAB).perform()
        active = driver.switch_to.active_element
        focused.append(active.get_attribute("id") or active.text)
        outline = active.value_of_css_property("outline-style")
        assert outline != "none", f"{focused[-1]!r} shows no focus"
        if active.get_attribute("id") == "kind":
            break
    assert focused[0] == "Skip to the content"
    assert focused[-1] == "kind"
    # choose "E-mail" with the arrow key, Tab to the value, type it, Enter
    ActionChains(driver).send_keys(Keys.ARROW_DOWN).perform()
    _navigates(
        driver, ActionChains(driver).send_keys(Keys.TAB, "ann@example.com", Keys.ENTER).perform
    )
    assert [h.text for h in driver.find_elements(By.CSS_SELECTOR, "section.story h2")] == [
        f"Chat {CHAT}"
    ]
    assert driver.find_element(By.CSS_SELECTOR, ".story .answer").text == SENTENCE
    assert _console_errors(driver) == []


def test_the_pages_fit_a_phone(browser, site):
    from selenium.webdriver.common.by import By

    driver = browser
    driver.delete_all_cookies()
    driver.set_window_size(1200, 900)
    _log_in(driver, site)
    driver.set_window_size(390, 844)
    _search(driver, "Telegram chat id", str(CHAT))
    for path in ("", "overview"):
        if path:
            driver.get(f"{site}/support/{path}")
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"/support/{path} scrolls sideways on a phone by {overflow}px"
    assert driver.find_element(By.CSS_SELECTOR, "svg.chart").size["width"] <= 390
