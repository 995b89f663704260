"""The browser tests' own tools on a real headless Chromium: what a failing test leaves behind
(a screenshot and the whole console), and the helpers that wait and click like a person."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from selenium.common.exceptions import TimeoutException

from tests.support.browser import (
    ARTIFACTS,
    WINDOW,
    WebDriver,
    artifact_folder,
    click_button,
    click_text,
    console_entries,
    console_errors,
    save_failure_artifacts,
    wait_for_text,
    xpath_literal,
)

# a page that logs, fails and answers a person's clicks a little later, as a real UI does
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>fixture page</title></head><body>
<p>ready to test</p>
<button onclick="later('pressed by its text')">Save aliases</button>
<button title="Edit aliases" onclick="later('pressed by its tooltip')">&#9998;</button>
<div onclick="later('a tree node')"><i></i>plots</div>
<p id="out"></p>
<script>
console.log("a line of information");
console.error("broken on purpose");
function later(text) {
  setTimeout(() => { document.getElementById("out").textContent = text; }, 300);
}
</script>
</body></html>
"""


def open_page(browser: WebDriver, folder: Path) -> None:
    page = folder / "page.html"
    page.write_text(PAGE)
    browser.get(page.as_uri())
    wait_for_text(browser, "ready to test")


@pytest.mark.browser
def test_failure_artifacts_hold_a_screenshot_and_every_console_entry(
    browser: WebDriver, tmp_path: Path
) -> None:
    open_page(browser, tmp_path)
    # a page check reads the console first: the artifacts must still get every entry
    assert [e["level"] for e in console_entries(browser)] == ["INFO", "SEVERE"]
    (error,) = console_errors(browser)
    assert "broken on purpose" in error["message"]
    assert console_errors(browser, since=2) == []

    folder = tmp_path / "artifacts" / "one-test"
    written = save_failure_artifacts(browser, folder)

    assert sorted(p.name for p in written) == ["console.log", "screenshot.png"]
    png = (folder / "screenshot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    viewport = browser.execute_script("return [window.innerWidth, window.innerHeight]")
    assert list(struct.unpack(">II", png[16:24])) == viewport  # the page, as the test saw it
    assert viewport[0] == WINDOW[0]
    lines = (folder / "console.log").read_text().splitlines()
    assert len(lines) == 2
    assert " INFO console-api: " in lines[0] and "a line of information" in lines[0]
    assert " SEVERE console-api: " in lines[1] and "broken on purpose" in lines[1]


def test_each_test_has_its_own_artifact_folder_with_a_safe_name() -> None:
    folder = artifact_folder("tests/test_browser_pages.py::test_pages[a/b c]")
    assert folder == ARTIFACTS / "tests_test_browser_pages.py_test_pages_a_b_c"
    long_ids = [f"tests/test_x.py::test_y[{'v' * 300}{end}]" for end in "12"]
    first, second = (artifact_folder(nodeid) for nodeid in long_ids)
    assert first != second and len(first.name) <= 120 and len(second.name) <= 120


@pytest.mark.browser
def test_a_person_clicks_a_button_by_its_text_or_its_tooltip_and_waits_for_the_answer(
    browser: WebDriver, tmp_path: Path
) -> None:
    open_page(browser, tmp_path)
    click_button(browser, "Save aliases")
    wait_for_text(browser, "pressed by its text")
    click_button(browser, "Edit aliases")
    wait_for_text(browser, "pressed by its tooltip")
    click_text(browser, "plots")
    wait_for_text(browser, "a tree node")
    with pytest.raises(TimeoutException, match="'nothing like this' shown"):
        wait_for_text(browser, "nothing like this", timeout=1)


def test_xpath_literals_hold_any_quote() -> None:
    assert xpath_literal("plain") == "'plain'"
    assert xpath_literal("it's") == '"it\'s"'
    assert xpath_literal("""it's "quoted\"""") == "concat('it', \"'\", 's \"quoted\"')"
