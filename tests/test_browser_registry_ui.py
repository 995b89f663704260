"""Promoting in the MLflow UI exactly as a person does, in a real headless Chromium against a
real `mlflow server`: the alias in MLflow 3's default registry UI, the stage in the legacy one.
The gesture is clicks and typing only; the registry is read afterwards (MlflowClient) to see
that it moved, and the reloaded page must show the same.

`registry` gives every test the same starting point on one module-wide server and store:
version 1 in Production holding @champion (promoted by fraudflow), version 2 with neither."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import requests

from pipelines.mlflow import store
from pipelines.mlflow.markers import read_markers
from pipelines.mlflow.promotion import OUTSIDE_ACTOR, promotion_history
from pipelines.settings import Settings
from pipelines.training.train import train_model
from tests.support.browser import ARTIFACTS, WebDriver, save_screenshot
from tests.support.mlflow_ui import ShownVersion, add_alias, shown_version, transition_stage
from tests.support.models import train_and_register
from tests.support.processes import BIN, background, poll_until
from tests.support.servers import (
    gunicorn_api,
    mlflow_server,
    wait_every_worker,
    wait_every_worker_gauge,
)
from tests.support.settings import make_settings, private_serving, write_config

pytestmark = [pytest.mark.integration, pytest.mark.browser]
# nothing reads the store once the module is done: the server need not wait for idle clients
STOP_GRACE = 3.0


@dataclass(frozen=True)
class Registry:
    url: str  # the `mlflow server`: its UI, and the tracking URI of `settings`
    settings: Settings
    name: str
    alias: str  # the champion alias the API follows when model_source is "alias"
    champion: str  # version "1": Production and @champion when a test starts
    challenger: str  # version "2": no stage, no alias when a test starts

    def client(self) -> store.MlflowClient:
        return store.client(self.settings)


@pytest.fixture(scope="module")
def served_registry(
    tmp_path_factory: pytest.TempPathFactory, small_transactions: pd.DataFrame
) -> Iterator[Registry]:
    """One `mlflow server` for the module on a store with two versions of the model: one
    training (while the server starts), logged and registered twice through the server, the
    first promoted by fraudflow (stage and alias, with its promotion record)."""
    root = tmp_path_factory.mktemp("registry-ui")
    with ThreadPoolExecutor(1) as pool:
        # the model trains while the server starts
        training = pool.submit(train_model, small_transactions, make_settings(root / "work"))
        with mlflow_server(root / "mlflow", grace=STOP_GRACE) as (url, _):
            settings = make_settings(root / "work", mlflow={"tracking_uri": url})
            result = training.result()
            champion, _ = train_and_register(
                small_transactions, settings, result=result, production="the first champion"
            )
            challenger, _ = train_and_register(small_transactions, settings, result=result)
            yield Registry(
                url=url,
                settings=settings,
                name=settings.mlflow.model_name,
                alias=settings.mlflow.champion_alias,
                champion=champion,
                challenger=challenger,
            )


@pytest.fixture
def registry(served_registry: Registry) -> Registry:
    """The module's registry put back to the starting point (whatever an earlier test
    promoted): the champion in Production holding the alias, the challenger with neither."""
    reg = served_registry
    client = reg.client()
    client.transition_model_version_stage(
        reg.name, reg.champion, "Production", archive_existing_versions=True
    )
    client.transition_model_version_stage(reg.name, reg.challenger, "None")
    for alias in client.get_registered_model(reg.name).aliases:
        client.delete_registered_model_alias(reg.name, alias)
    client.set_registered_model_alias(reg.name, reg.alias, reg.champion)
    return reg


def registry_state(reg: Registry, version: str) -> tuple[str, list[str]]:
    """A version's stage and aliases as the registry holds them (get_model_version fills the
    aliases; search_model_versions leaves them empty on SQLite)."""
    found = reg.client().get_model_version(reg.name, version)
    return found.current_stage, sorted(found.aliases)


def test_the_alias_moves_when_a_person_adds_it_in_the_new_registry_ui(
    browser: WebDriver, registry: Registry
) -> None:
    reg = registry
    assert shown_version(browser, reg.url, reg.name, reg.challenger) == ShownVersion(
        stage="None", aliases=(), new_ui=True
    )

    add_alias(browser, reg.url, reg.name, reg.challenger, reg.alias)

    assert registry_state(reg, reg.challenger) == ("None", [reg.alias])
    assert registry_state(reg, reg.champion) == ("Production", [])  # one version per alias
    assert shown_version(browser, reg.url, reg.name, reg.challenger) == ShownVersion(
        stage="None", aliases=(reg.alias,), new_ui=True
    )
    assert shown_version(browser, reg.url, reg.name, reg.champion).aliases == ()


def test_the_stage_moves_when_a_person_transitions_it_in_the_legacy_registry_ui(
    browser: WebDriver, registry: Registry
) -> None:
    reg = registry

    transition_stage(
        browser, reg.url, reg.name, reg.challenger, "Production", comment="better on last week"
    )

    assert registry_state(reg, reg.challenger) == ("Production", [])
    assert registry_state(reg, reg.champion) == ("Archived", [reg.alias])  # the UI moves no alias
    # the legacy UI stays on across reloads (the browser remembers the switch) and shows no
    # aliases; switched back on, the page shows where the alias still is
    assert shown_version(browser, reg.url, reg.name, reg.challenger) == ShownVersion(
        stage="Production", aliases=None, new_ui=False
    )
    assert shown_version(browser, reg.url, reg.name, reg.champion, new_ui=True) == ShownVersion(
        stage="Archived", aliases=(reg.alias,), new_ui=True
    )


# --- what follows a gesture: the API, the registry sync, the record, the page ------------------

WORKERS = 2
# the README's screenshot of the alias dialog is made here: `make screenshots` sets this to
# docs/images (it is always saved under test-output/browser/screenshots/)
SCREENSHOTS_ENV = "FRAUDFLOW_SCREENSHOTS_TO"


def api_config(reg: Registry, folder: Path, with_sync: bool) -> Path:
    """The API on the module's registry (through its `mlflow server`), polling every second,
    with state, log, cache and metrics of its own; the registry sync beside it or not."""
    settings = private_serving(
        make_settings(
            reg.settings.workdir,
            mlflow={"tracking_uri": reg.url},
            serving={"poll_interval_s": 1.0, "metrics_dir": str(folder / "prom")},
            registry_sync={
                "interval_s": 1.0,
                "with_api": with_sync,
                # this test's sync remembers nothing of another test's
                "heartbeat": str(folder / "sync-heartbeat.json"),
            },
        ),
        folder,
    )
    return write_config(folder / "api.yaml", settings)


def screenshot_the_dialog(driver: WebDriver) -> None:
    saved = save_screenshot(driver, ARTIFACTS / "screenshots" / "promote-alias.png")
    target = os.environ.get(SCREENSHOTS_ENV)
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(saved, Path(target) / saved.name)


def markers_on(reg: Registry, version: str, timeout: float = 60) -> None:
    """Until the registry shows `version` in Production, alone, holding the alias."""

    def check():
        found = read_markers(reg.client(), reg.name, reg.alias)
        return found.alias == version and found.production_versions == (version,), found

    poll_until(check, f"both markers on v{version}", timeout)


def sync_passed(heartbeat: Path, since: float, timeout: float = 120) -> None:
    """Until the registry sync has made a pass since `since` (its heartbeat)."""

    def check():
        beat = json.loads(heartbeat.read_text()) if heartbeat.is_file() else {}
        return beat.get("at", 0) > since and beat.get("ok") is True, beat

    poll_until(check, "a pass of the registry sync", timeout)


def records(reg: Registry) -> int:
    return len(promotion_history(reg.settings))


def outside_record(reg: Registry, version: str, before: int, timeout: float = 60) -> dict:
    """Until a promotion record newer than the `before` first ones is the registry sync's of
    `version` (it writes the record just after the markers)."""

    def check():
        history = promotion_history(reg.settings)
        newest = history.iloc[0].to_dict()
        done = len(history) > before and newest["actor"] == OUTSIDE_ACTOR
        return done and newest["version"] == version, newest

    return poll_until(check, f"the sync's record of v{version}", timeout)


def test_an_alias_added_in_the_ui_is_served_then_the_stage_follows_and_is_recorded(
    browser: WebDriver, registry: Registry, tmp_path: Path
) -> None:
    """The API follows the alias itself (no registry sync runs until it serves the version:
    with the rule that follows the stage only, it would not), then the sync brings the stage
    along, records the promotion, and the page shows both after a reload."""
    reg = registry
    config = api_config(reg, tmp_path, with_sync=False)
    with gunicorn_api(config, tmp_path / "api.log", version=reg.champion, workers=WORKERS) as url:
        before = records(reg)
        add_alias(
            browser, reg.url, reg.name, reg.challenger, reg.alias, before_save=screenshot_the_dialog
        )
        wait_every_worker(url, WORKERS, reg.challenger, timeout=120)
        model = requests.get(f"{url}/model", timeout=10).json()
        assert model["version"] == reg.challenger
        assert model["markers"] == {
            "alias": reg.challenger,
            "production": [reg.champion],
            "agree": False,
            "followed": reg.challenger,
            "by": "alias",
        }
        assert registry_state(reg, reg.challenger) == ("None", [reg.alias])  # nothing aligned yet
        with background(
            [str(BIN / "fraudflow"), "registry-sync", "--config", str(config)],
            tmp_path / "sync.log",
        ):
            markers_on(reg, reg.challenger)
            record = outside_record(reg, reg.challenger, before)
        assert registry_state(reg, reg.champion) == ("Archived", [])
        assert record["gesture"] == "alias"
        assert record["champion_before"] == reg.champion and record["gates"] == "passed"
        # the API stays on it, every worker now seeing both markers agree
        wait_every_worker_gauge(url, "fraudflow_registry_markers_disagree", WORKERS, 0.0, 30)
        wait_every_worker(url, WORKERS, reg.challenger, timeout=5)
    assert shown_version(browser, reg.url, reg.name, reg.challenger, new_ui=True) == ShownVersion(
        stage="Production", aliases=(reg.alias,), new_ui=True
    )


def test_a_stage_transition_in_the_legacy_ui_is_served_and_the_alias_follows(
    browser: WebDriver, registry: Registry, tmp_path: Path
) -> None:
    """`fraudflow serve` as the embedded default runs it: the registry sync beside the API."""
    reg = registry
    config = api_config(reg, tmp_path, with_sync=True)
    started = time.time()
    with gunicorn_api(config, tmp_path / "api.log", version=reg.champion, workers=WORKERS) as url:
        sync_passed(
            tmp_path / "sync-heartbeat.json", started
        )  # a sync that starts after a gesture takes the alias's side
        before = records(reg)
        transition_stage(
            browser, reg.url, reg.name, reg.challenger, "Production", comment="better last week"
        )
        wait_every_worker(url, WORKERS, reg.challenger, timeout=120)
        markers_on(reg, reg.challenger)
        assert outside_record(reg, reg.challenger, before)["gesture"] == "stage"
        assert requests.get(f"{url}/model", timeout=10).json()["version"] == reg.challenger
    assert "registry sync started" in (tmp_path / "api.log").read_text()
    assert shown_version(browser, reg.url, reg.name, reg.challenger, new_ui=True) == ShownVersion(
        stage="Production", aliases=(reg.alias,), new_ui=True
    )
