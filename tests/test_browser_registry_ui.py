"""Promoting in the MLflow UI exactly as a person does, in a real headless Chromium against a
real `mlflow server`: the alias in MLflow 3's default registry UI, the stage in the legacy one.
The gesture is clicks and typing only; the registry is read afterwards (MlflowClient) to see
that it moved, and the reloaded page must show the same.

`registry` gives every test the same starting point on one module-wide server and store:
version 1 in Production holding @champion (promoted by fraudflow), version 2 with neither."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd
import pytest

from pipelines.mlflow import store
from pipelines.settings import Settings
from pipelines.training.train import train_model
from tests.support.browser import WebDriver
from tests.support.mlflow_ui import ShownVersion, add_alias, shown_version, transition_stage
from tests.support.models import train_and_register
from tests.support.servers import mlflow_server
from tests.support.settings import make_settings

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
