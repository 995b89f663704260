"""The MLflow 3.17 UI as a person uses it: a training run's metrics and plots, and the two ways
a person promotes in the registry (the alias in the new registry UI, the stage in the legacy
one), then what the version page shows. Clicks and typing only: nothing here calls the REST
API behind a page. The selectors were read off the pages of a real `mlflow server` 3.17.2
(/work/shared/FIELD-NOTES.md, "The MLflow 3.17.2 UI, as a person sees it")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.support.browser import (
    TIMEOUT,
    WebDriver,
    WebElement,
    click,
    click_button,
    image_loaded,
    wait_for_text,
    wait_until,
    wait_visible,
    xpath_literal,
)

REGISTRY_UI_SWITCH = "button[role='switch'][aria-label='New model registry UI']"
STAGE_DROPDOWN = ".mlflow-stage-transition-dropdown"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def version_url(base: str, name: str, version: str) -> str:
    return f"{base}/#/models/{quote(name, safe='')}/versions/{version}"


def _reload(driver: WebDriver, url: str) -> None:
    """Open `url` as a fresh page load: a route change inside the open single-page app alone
    could show what the app fetched earlier."""
    same_document = driver.current_url.split("#")[0] == url.split("#")[0]
    driver.get(url)
    if same_document:
        driver.refresh()


# --- a run's page -----------------------------------------------------------------------------


def open_run(driver: WebDriver, base: str, experiment_id: str, run_id: str) -> None:
    """A run's page, once its metrics table has rendered."""
    _reload(driver, run_url(base, experiment_id, run_id))
    wait_for_text(driver, "Metrics (")


def shown_metric(driver: WebDriver, name: str, timeout: float = TIMEOUT) -> str:
    """The value the run page's metrics table shows for metric `name`, as text."""
    row = f"//div[@role='row'][div[@role='cell'][normalize-space()={xpath_literal(name)}]]"
    return wait_visible(driver, By.XPATH, f"{row}/div[@role='cell'][2]", timeout).text.strip()


def open_artifact(driver: WebDriver, path: str, timeout: float = TIMEOUT) -> WebElement:
    """On a run's page: the Artifacts tab, each folder of `path` opened in the tree, the file
    clicked; returns the preview image once the browser has decoded it (MLflow previews a PNG
    as an <img> whose alt is the artifact path, its source a blob fetched from the server)."""
    click_button(driver, "Artifacts", timeout=timeout)
    parts = path.split("/")
    for folder, child in zip(parts, parts[1:]):
        if not _tree_nodes(driver, child):  # clicking an open folder would close it
            click(driver, By.XPATH, _tree_node_xpath(folder), f"folder {folder!r}", None, timeout)
    click(driver, By.XPATH, _tree_node_xpath(parts[-1]), f"file {parts[-1]!r}", None, timeout)
    image = wait_visible(driver, By.CSS_SELECTOR, f'img[alt="{path}"]', timeout)
    wait_until(driver, lambda d: image_loaded(d, image), f"the image {path} decoded", timeout)
    return image


def _tree_node_xpath(name: str) -> str:
    return f"//*[@data-testid='artifact-tree-node'][normalize-space()={xpath_literal(name)}]"


def _tree_nodes(driver: WebDriver, name: str) -> list[WebElement]:
    return [e for e in driver.find_elements(By.XPATH, _tree_node_xpath(name)) if e.is_displayed()]


# --- a model version's page -------------------------------------------------------------------


@dataclass(frozen=True)
class ShownVersion:
    """What a model version's page shows: its stage, its aliases (None in the legacy UI, which
    shows none) and which registry UI is on."""

    stage: str
    aliases: tuple[str, ...] | None
    new_ui: bool


def open_version(driver: WebDriver, base: str, name: str, version: str) -> None:
    """A model version's page (reloaded), once its details have rendered."""
    _reload(driver, version_url(base, name, version))
    wait_for_text(driver, f"Version {version}")
    wait_visible(driver, By.XPATH, _detail_xpath("Stage"))


def _detail_xpath(label: str) -> str:
    """The content of the version's detail row whose label starts with `label` ("Stage" is
    "Stage (deprecated)" in the new UI)."""
    return (
        "//*[@data-testid='descriptions-item']"
        f"[*[@data-testid='descriptions-item-label'][starts-with(normalize-space(), "
        f"{xpath_literal(label)})]]/*[@data-testid='descriptions-item-content']"
    )


def _detail(driver: WebDriver, label: str) -> WebElement | None:
    found = [e for e in driver.find_elements(By.XPATH, _detail_xpath(label)) if e.is_displayed()]
    return found[0] if found else None


def new_registry_ui_on(driver: WebDriver) -> bool:
    switch = wait_visible(driver, By.CSS_SELECTOR, REGISTRY_UI_SWITCH)
    return switch.get_attribute("aria-checked") == "true"


def use_new_registry_ui(driver: WebDriver, on: bool) -> None:
    """Switch "New model registry UI" on or off on the open version page, as a person does
    (switching it off asks for a confirmation: "Disable")."""
    if new_registry_ui_on(driver) == on:
        return
    click(driver, By.CSS_SELECTOR, REGISTRY_UI_SWITCH, "the switch 'New model registry UI'")
    if not on:
        dialog = _dialog(driver, "Disable the new model stages")
        click_button(driver, "Disable", within=dialog)
    wait_until(driver, lambda d: new_registry_ui_on(d) == on, f"new registry UI {on}")
    if not on:
        wait_visible(driver, By.CSS_SELECTOR, STAGE_DROPDOWN)


def _dialog(driver: WebDriver, title: str) -> WebElement:
    """The open dialog whose title is `title`."""
    xpath = f"//div[@role='dialog'][.//*[normalize-space()={xpath_literal(title)}]]"
    return wait_visible(driver, By.XPATH, xpath)


def _closed(driver: WebDriver, dialog: WebElement, what: str) -> None:
    wait_until(driver, lambda d: not _displayed(dialog), f"the dialog {what} closed")


def _displayed(element: WebElement) -> bool:
    try:
        return element.is_displayed()
    except StaleElementReferenceException:  # gone from the page: closed
        return False


def read_version(driver: WebDriver) -> ShownVersion:
    """The stage, aliases and registry UI of the open version page."""
    stage = _detail(driver, "Stage")
    if stage is None:
        raise AssertionError(f"no Stage row on {driver.current_url}")
    aliases = _detail(driver, "Aliases")
    return ShownVersion(
        stage=stage.text.strip(),
        aliases=None if aliases is None else _alias_tags(aliases),
        new_ui=new_registry_ui_on(driver),
    )


def shown_version(
    driver: WebDriver, base: str, name: str, version: str, new_ui: bool | None = None
) -> ShownVersion:
    """Reload a version's page and read what it shows; with `new_ui`, the registry UI switched
    on (aliases shown) or off (the stage dropdown) first."""
    open_version(driver, base, name, version)
    if new_ui is not None:
        use_new_registry_ui(driver, new_ui)
    return read_version(driver)


def add_alias(
    driver: WebDriver,
    base: str,
    name: str,
    version: str,
    alias: str,
    before_save: Callable[[WebDriver], None] | None = None,
) -> None:
    """The new registry UI's promotion: on the version's page, Aliases "Add" (or the pencil,
    "Edit aliases", when it has some), type the alias in the dialog, Enter, "Save aliases".
    Returns once the page shows the alias on the version. `before_save` sees the dialog filled
    in, just before the click (a screenshot of the gesture)."""
    open_version(driver, base, name, version)
    use_new_registry_ui(driver, True)
    has_aliases = bool(read_version(driver).aliases)
    click_button(driver, "Edit aliases" if has_aliases else "Add aliases")
    dialog = _dialog(driver, f"Add/Edit alias for model version {version}")
    box = wait_visible(driver, By.CSS_SELECTOR, "input[role='combobox']", within=dialog)
    box.click()
    box.send_keys(alias)
    box.send_keys(Keys.ENTER)
    wait_until(
        driver,
        lambda d: alias in _alias_tags(dialog),
        f"alias {alias!r} chosen in the dialog",
    )
    if before_save is not None:
        before_save(driver)
    click_button(driver, "Save aliases", within=dialog)
    _closed(driver, dialog, "Add/Edit alias")
    wait_until(driver, lambda d: alias in (read_version(d).aliases or ()), f"alias {alias!r} shown")


def _alias_tags(element: WebElement) -> tuple[str, ...]:
    """The aliases shown as tags ("@ champion", the alias in its title) inside `element`: the
    Aliases row of the page, or the alias dialog's select."""
    return tuple(
        tag.get_attribute("title") or ""
        for tag in element.find_elements(By.CSS_SELECTOR, "[role='status'][title]")
        if tag.is_displayed()
    )


def transition_stage(
    driver: WebDriver,
    base: str,
    name: str,
    version: str,
    stage: str,
    archive_existing: bool = True,
    comment: str = "",
) -> None:
    """The legacy UI's promotion: "New model registry UI" off, the Stage dropdown, "Transition
    to → STAGE", in the dialog the checkbox "Transition existing STAGE model version to
    Archived" as asked, a comment if any, "OK". Returns once the page shows the new stage."""
    open_version(driver, base, name, version)
    use_new_registry_ui(driver, False)
    click(driver, By.CSS_SELECTOR, STAGE_DROPDOWN, "the Stage dropdown")
    item = (
        "//*[@role='menuitem'][contains(., 'Transition to')]"
        f"[.//*[normalize-space()={xpath_literal(stage)}]]"
    )
    click(driver, By.XPATH, item, f"Transition to {stage}")
    dialog = _dialog(driver, "Stage transition")
    if comment:
        wait_visible(driver, By.CSS_SELECTOR, "textarea[name='comment']", within=dialog).send_keys(
            comment
        )
    # shown on a move to Production (seen on this page); not required on any other move
    found = dialog.find_elements(By.CSS_SELECTOR, "input[name='archiveExistingVersions']")
    checkbox = found[0] if found else None
    if checkbox is None and archive_existing and stage in ("Production", "Staging"):
        raise AssertionError(f"no 'Transition existing {stage} …' checkbox in the dialog")
    if checkbox is not None and checkbox.is_selected() != archive_existing:
        label = ".//label[.//input[@name='archiveExistingVersions']]"
        click(driver, By.XPATH, label, "Transition existing … to Archived", within=dialog)
        wait_until(
            driver,
            lambda d: checkbox.is_selected() == archive_existing,
            "the archive checkbox set",
        )
    click_button(driver, "OK", within=dialog)
    _closed(driver, dialog, "Stage transition")
    wait_until(driver, lambda d: read_version(d).stage == stage, f"stage {stage} shown")
