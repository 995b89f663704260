"""Headless Chromium for the tests that look at pages as a person does.

Debian's `chromium` and `chromedriver`, driven by Selenium with both paths given, so that
Selenium Manager never runs (it would try to download a browser, and nothing may be fetched).
The helpers wait for what a person waits for (text, a visible element), click what a person
clicks (a button by its label or tooltip), and keep the browser's console, so that a page check
and the failure artifacts (a screenshot and the console, see `save_failure_artifacts`) both see
every entry.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    ElementNotInteractableException,
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.support import REPO

WINDOW = (1400, 1000)
# Generous: an MLflow page renders in a few seconds on a quiet machine, many more on a CI runner
# busy with two other test workers. Every wait returns as soon as its condition holds.
TIMEOUT = 60.0
POLL = 0.25
# Where a failing browser test leaves its screenshot and console (ignored by git; CI uploads it)
ARTIFACTS = REPO / "test-output" / "browser"

T = TypeVar("T")

# chromedriver hands out each console entry once: everything read is kept here, per browser,
# so that a page check reading the new entries does not take them from the failure artifacts
_CONSOLE: WeakKeyDictionary[WebDriver, list[dict[str, Any]]] = WeakKeyDictionary()


class BrowserMissing(RuntimeError):
    """Chromium or its driver is not installed: the machine was not set up."""


def browser_binaries() -> tuple[str, str]:
    """The paths of Debian's Chromium and of its chromedriver, or BrowserMissing naming the
    package to install."""
    found = {name: shutil.which(name) for name in ("chromium", "chromedriver")}
    missing = [name for name, path in found.items() if not path]
    if missing:
        raise BrowserMissing(
            f"{' and '.join(missing)} not found on PATH: install Debian's chromium and "
            "chromium-driver (scripts/install-system-deps.sh); the tests never download a browser"
        )
    return str(found["chromium"]), str(found["chromedriver"])


def chrome_options(browser: str, window: tuple[int, int] = WINDOW) -> webdriver.ChromeOptions:
    """Headless, one fixed window size and language (the same page layout and words on every
    machine), the console captured."""
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    options.add_argument("--headless=new")
    # /dev/shm is 64 MB in a container: Chromium's renderers crash on big pages without this
    options.add_argument("--disable-dev-shm-usage")
    options.add_argument(f"--window-size={window[0]},{window[1]}")
    options.add_argument("--lang=en-US")
    if os.geteuid() == 0:  # CI runs the suite as root in a container: the sandbox refuses root
        options.add_argument("--no-sandbox")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


@contextmanager
def chromium(window: tuple[int, int] = WINDOW) -> Iterator[WebDriver]:
    """A headless Chromium session, always quit afterwards (each has a fresh profile: nothing a
    page stored, such as a UI switch, carries over to the next session)."""
    browser, chromedriver = browser_binaries()
    driver = webdriver.Chrome(
        service=Service(executable_path=chromedriver), options=chrome_options(browser, window)
    )
    try:
        driver.set_page_load_timeout(TIMEOUT)
        yield driver
    finally:
        _CONSOLE.pop(driver, None)
        driver.quit()


# --- waiting and reading ----------------------------------------------------------------------


def wait_until(
    driver: WebDriver, condition: Callable[[WebDriver], T], what: str, timeout: float = TIMEOUT
) -> T:
    """Poll `condition` until it returns something true and return that; a TimeoutException
    naming `what` and the page otherwise. Elements replaced while the page re-renders are
    retried, not errors."""
    waiter = WebDriverWait(
        driver,
        timeout,
        poll_frequency=POLL,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )
    try:
        return waiter.until(condition)
    except TimeoutException as exc:
        raise TimeoutException(
            f"{what}: not reached in {timeout:g} s on {driver.current_url}"
        ) from exc


def visible_text(driver: WebDriver) -> str:
    """The page's text as a person sees it (hidden elements left out)."""
    return driver.find_element(By.TAG_NAME, "body").text


def wait_for_text(driver: WebDriver, text: str, timeout: float = TIMEOUT) -> None:
    """Until `text` shows somewhere on the page."""
    wait_until(driver, lambda d: text in visible_text(d), f"text {text!r} shown", timeout)


def wait_visible(
    driver: WebDriver,
    by: str,
    value: str,
    timeout: float = TIMEOUT,
    within: WebElement | None = None,
) -> WebElement:
    """The first displayed element matching the locator (inside `within`), once there is one."""

    def displayed(_: WebDriver) -> WebElement | None:
        for element in (within or driver).find_elements(by, value):
            if element.is_displayed():
                return element
        return None

    return wait_until(driver, displayed, f"a visible {by} {value!r}", timeout)


def xpath_literal(text: str) -> str:
    """`text` as an XPath 1.0 string literal, whatever quotes it holds."""
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    parts = text.split("'")
    return "concat(" + ', "\'", '.join(f"'{part}'" for part in parts) + ")"


def image_loaded(driver: WebDriver, image: WebElement) -> bool:
    """Whether the browser decoded the image (an image that failed to load has no width)."""
    return bool(
        driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", image
        )
    )


# --- clicking like a person -------------------------------------------------------------------

# what a person sees as something to press: buttons, and elements that say they act like one
_PRESSABLE = (
    "*[self::button or @role='button' or @role='tab' or @role='menuitem' or @role='switch'"
    " or @role='link' or self::a]"
)


def click(
    driver: WebDriver,
    by: str,
    value: str,
    what: str | None = None,
    within: WebElement | None = None,
    timeout: float = TIMEOUT,
) -> WebElement:
    """Click the first displayed, enabled element matching the locator (inside `within`),
    retrying while something covers it (a dialog fading in) or it is being re-rendered."""

    def clicked(_: WebDriver) -> WebElement | None:
        for element in (within or driver).find_elements(by, value):
            if element.is_displayed() and element.is_enabled():
                try:
                    element.click()
                except (ElementClickInterceptedException, ElementNotInteractableException):
                    return None
                return element
        return None

    return wait_until(driver, clicked, f"click on {what or value}", timeout)


def click_button(
    driver: WebDriver, label: str, within: WebElement | None = None, timeout: float = TIMEOUT
) -> WebElement:
    """Click what a person knows as `label`: a button, tab, menu item or link whose visible
    text is `label`, or whose tooltip (title) or accessible name (aria-label) is."""
    literal = xpath_literal(label)
    xpath = (
        f".//{_PRESSABLE}[normalize-space()={literal} or @title={literal} "
        f"or @aria-label={literal}]"
    )
    return click(driver, By.XPATH, xpath, f"button {label!r}", within, timeout)


def click_text(
    driver: WebDriver, text: str, within: WebElement | None = None, timeout: float = TIMEOUT
) -> WebElement:
    """Click the innermost visible element whose text is exactly `text` (a tree node, a
    label: things a person clicks that are not marked as buttons)."""
    literal = xpath_literal(text)
    xpath = f".//*[normalize-space()={literal} and not(*[normalize-space()={literal}])]"
    return click(driver, By.XPATH, xpath, f"text {text!r}", within, timeout)


# --- the console, screenshots and failure artifacts -------------------------------------------


def console_entries(driver: WebDriver) -> list[dict[str, Any]]:
    """Every console entry of this browser session so far (level, source, message, timestamp
    in ms), the new ones fetched from the browser."""
    kept = _CONSOLE.setdefault(driver, [])
    kept.extend(driver.get_log("browser"))
    return list(kept)


def console_errors(driver: WebDriver, since: int = 0) -> list[dict[str, Any]]:
    """The SEVERE entries among the console entries from number `since` on (take
    `len(console_entries(driver))` before opening a page to judge that page alone)."""
    return [e for e in console_entries(driver)[since:] if e.get("level") == "SEVERE"]


def console_line(entry: dict[str, Any]) -> str:
    """One console entry on one line: UTC time, level, source, message."""
    when = datetime.fromtimestamp(entry.get("timestamp", 0) / 1000, timezone.utc)
    message = str(entry.get("message", "")).replace("\r", "\\r").replace("\n", "\\n")
    stamp = when.isoformat(timespec="milliseconds")
    return f"{stamp} {entry.get('level', '?')} {entry.get('source', '?')}: {message}"


def save_screenshot(driver: WebDriver, path: Path) -> Path:
    """A PNG of the browser window at `path` (folders made as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not driver.save_screenshot(str(path)):
        raise OSError(f"the screenshot could not be written to {path}")
    return path


def artifact_folder(nodeid: str, root: Path = ARTIFACTS) -> Path:
    """The folder of a test's failure artifacts: its node id made a safe folder name (cut,
    with a hash of the whole id, when a parametrized id is very long)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")
    if len(name) > 120:
        name = f"{name[:100]}-{hashlib.sha1(nodeid.encode()).hexdigest()[:12]}"
    return root / name


def save_failure_artifacts(driver: WebDriver, folder: Path) -> list[Path]:
    """`screenshot.png` and `console.log` (every console entry of the session, one a line) in
    `folder`. A browser that cannot answer any more is said so in console.log instead of
    raising: the artifacts must never hide the test's own failure."""
    folder.mkdir(parents=True, exist_ok=True)
    console, screenshot = folder / "console.log", folder / "screenshot.png"
    problems = []
    try:
        entries = console_entries(driver)
    except WebDriverException as exc:
        entries = list(_CONSOLE.get(driver, []))
        problems.append(f"(the rest of the console could not be read: {exc.msg})")
    try:
        save_screenshot(driver, screenshot)
    except (WebDriverException, OSError) as exc:
        problems.append(f"(no screenshot: {exc})")
    lines = [console_line(entry) for entry in entries] + problems
    console.write_text("".join(f"{line}\n" for line in lines))
    return [path for path in (screenshot, console) if path.exists()]
