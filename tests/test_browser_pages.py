"""The pages people read, in a real headless Chromium, on one store built for the module: the
monitor's report (its front page and the Evidently pages it links, opened from disk as a person
opens them) and a training run's page in the MLflow UI of a real `mlflow server` (its metrics,
its precision-recall and ROC plots). Clicks only: nothing calls the API behind a page."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from selenium.webdriver.common.by import By

from drift.monitor import run_monitor
from drift.reference import load_champion
from drift.window import Window
from pipelines.mlflow import store
from pipelines.training.train import train_model
from tests.support.browser import (
    WebDriver,
    click_button,
    console_entries,
    console_errors,
    wait_for_text,
    wait_visible,
)
from tests.support.mlflow_ui import open_artifact, open_run, shown_metric
from tests.support.models import train_and_register
from tests.support.servers import mlflow_server
from tests.support.settings import make_settings
from tests.support.traffic import log_traffic, split_days

pytestmark = [pytest.mark.integration, pytest.mark.browser]
# nothing reads the store once the module is done: the server need not wait for idle clients
STOP_GRACE = 3.0

NAME = "fraud-detector"

# Every page of the MLflow UI asks who is signed in (GET ajax-api/2.0/mlflow/users/current, for
# its account menu). Only the basic-auth app (`mlflow server --app-name basic-auth`) serves that
# route: a plain server answers 404, and Chromium logs the failed load as SEVERE. The UI asks
# once, does not retry, and renders everything else; no other error is accepted.
MLFLOW_UI_WITHOUT_AUTH = re.compile(
    r"/ajax-api/2\.0/mlflow/users/current - Failed to load resource: "
    r"the server responded with a status of 404"
)


@dataclass(frozen=True)
class Pages:
    tracking: str  # the `mlflow server` (UI and API)
    experiment_id: str
    run_id: str  # the champion's training run
    metrics: dict[str, float]  # as the run logged them (read from the store, for assertions)
    report: Path  # the monitor's index.html
    summary: dict[str, Any]  # the monitor's summary.json beside it


@pytest.fixture(scope="module")
def pages(
    tmp_path_factory: pytest.TempPathFactory, small_transactions: pd.DataFrame
) -> Iterator[Pages]:
    """One store for the module, behind a real `mlflow server`: a champion trained on all but
    the last simulated day (while the server starts), logged and promoted through it, and a
    challenger beside it in shadow; that day's traffic with every amount x2.5, scored by both
    and logged as the API logs it, with its labels; the monitor's report on it (drift,
    performance assessed on the labels, champion vs challenger: every page has something to
    show)."""
    root = tmp_path_factory.mktemp("pages")
    history, traffic = split_days(small_transactions, 1)
    with ThreadPoolExecutor(1) as pool:
        # the model trains while the server starts
        training = pool.submit(train_model, history, make_settings(root / "work"))
        with mlflow_server(root / "mlflow", grace=STOP_GRACE) as (tracking, _):
            settings = make_settings(root / "work", mlflow={"tracking_uri": tracking})
            version, _ = train_and_register(
                history, settings, result=training.result(), production="the champion monitored"
            )
            other = make_settings(
                root / "work",
                mlflow={"tracking_uri": tracking},
                training={"lightgbm": {"seed": 7, "num_leaves": 7}},
            )
            challenger, trained = train_and_register(history, other)
            store.client(settings).set_registered_model_alias(NAME, "challenger", challenger)
            champion = load_champion(settings)
            shifted = traffic.assign(tx_amount=traffic["tx_amount"] * 2.5)
            scored = log_traffic(
                settings,
                history,
                shifted,
                champion.scorer,
                version,
                challenger=(challenger, trained.scorer),
            )
            labels = root / "labels.csv"
            scored[["transaction_id", "tx_fraud"]].to_csv(labels, index=False)
            result = run_monitor(settings, Window.last_hours(24), [labels])
            client = store.client(settings)
            run = client.get_run(client.get_model_version(NAME, version).run_id)
            yield Pages(
                tracking=tracking,
                experiment_id=run.info.experiment_id,
                run_id=run.info.run_id,
                metrics=dict(run.data.metrics),
                report=result.index,
                summary=json.loads((result.folder / "summary.json").read_text()),
            )


def console_mark(browser: WebDriver) -> int:
    """Where the console stands now: errors after this mark belong to the next page."""
    return len(console_entries(browser))


def fetched_from_elsewhere(browser: WebDriver) -> list[str]:
    """Whatever the open page loaded that is not in the page's own files."""
    names = browser.execute_script(
        "return performance.getEntriesByType('resource').map(entry => entry.name)"
    )
    return [name for name in names if not name.startswith(("file:", "data:", "blob:"))]


# --- the monitor's report -----------------------------------------------------------------------


def test_the_report_front_page_shows_the_verdict_and_every_feature_as_the_summary_says(
    browser: WebDriver, pages: Pages
) -> None:
    summary = pages.summary
    mark = console_mark(browser)
    browser.get(pages.report.as_uri())
    wait_for_text(browser, "Feature drift")

    verdict = wait_visible(browser, By.CSS_SELECTOR, ".verdict")
    assert verdict.text == f"verdict: {summary['verdict']}"
    table = browser.find_element(By.XPATH, "//h2[.='Feature drift']/following-sibling::table[1]")
    shown = {
        cells[0]: cells[1:3]
        for row in table.find_elements(By.XPATH, ".//tr[td]")
        for cells in [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")]]
    }
    expected = {
        column["column"]: ["yes" if column["drifted"] else "no", f"{column['score']:.4f}"]
        for column in summary["drift"]["columns"]
    }
    assert shown == expected
    assert {"tx_amount", "amount_to_customer_avg_30d"} <= set(summary["drift"]["drifted_features"])
    degraded = summary["performance"]["degraded_metrics"]
    assert degraded, "the scenario is meant to show a degraded metric too"
    for metric in degraded:
        row = browser.find_element(By.XPATH, f"//tr[td[1][.='{metric}']]")
        assert row.find_elements(By.TAG_NAME, "td")[-1].text == "degraded"

    assert console_errors(browser, since=mark) == []
    assert fetched_from_elsewhere(browser) == []


def test_the_report_shows_champion_vs_challenger_as_the_summary_says(
    browser: WebDriver, pages: Pages
) -> None:
    live = pages.summary["live"]
    mark = console_mark(browser)
    browser.get(pages.report.as_uri())
    wait_for_text(browser, "Champion vs challenger")

    heading = "//h2[.='Champion vs challenger']"
    verdict = browser.find_element(By.XPATH, f"{heading}/following-sibling::p[@class][1]")
    assert verdict.text == f"live verdict: {live['verdict']}"
    table = browser.find_element(By.XPATH, f"{heading}/following-sibling::table[1]")
    shown = [
        [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in table.find_elements(By.XPATH, ".//tr[td]")
    ]
    assert shown[0] == [
        "average precision",
        f"{live['champion']['average_precision']:.4f}",
        f"{live['challenger']['average_precision']:.4f}",
    ]
    assert len(shown) == 3
    assert live["rows"] == pages.summary["rows"]["current"]  # shadow: both scored every one
    wait_for_text(browser, f"both scored {live['rows']:,} logged transactions")
    assert console_errors(browser, since=mark) == []
    assert fetched_from_elsewhere(browser) == []


@pytest.mark.parametrize(
    "link, headline",
    [
        ("Evidently drift report", "Data Drift Summary"),
        ("Evidently classification report", "Classification Model Performance"),
    ],
)
def test_each_evidently_page_the_front_page_links_opens_without_console_errors(
    browser: WebDriver, pages: Pages, link: str, headline: str
) -> None:
    """Evidently's pages carry their scripts and data inline: opened from disk on a machine
    without network they render, load nothing from elsewhere and log no error."""
    browser.get(pages.report.as_uri())
    wait_for_text(browser, link)
    mark = console_mark(browser)
    click_button(browser, link)
    wait_for_text(browser, headline)

    drift = pages.summary["drift"]
    if link == "Evidently drift report":
        # Evidently's own count of drifted columns, at the same threshold, and its table (10
        # rows a page, the largest drift first) with every feature the verdict names
        wait_for_text(browser, f"({drift['drifted_count']} out of {len(drift['columns'])})")
        assert len(drift["drifted_features"]) <= 10, "the table's first page shows them all"
        for feature in drift["drifted_features"]:
            wait_for_text(browser, feature)
    else:
        for title in ("Precision-Recall Curve", "ROC Curve", "Confusion Matrix"):
            wait_for_text(browser, title)
    plots = browser.execute_script("return document.querySelectorAll('.js-plotly-plot').length")
    assert plots >= 1, "Evidently's plots were not drawn"

    assert console_errors(browser, since=mark) == []
    assert fetched_from_elsewhere(browser) == []


# --- a training run in the MLflow UI ------------------------------------------------------------


def unexplained_errors(browser: WebDriver, since: int) -> list[dict[str, Any]]:
    return [
        entry
        for entry in console_errors(browser, since)
        if not MLFLOW_UI_WITHOUT_AUTH.search(entry["message"])
    ]


def test_the_run_page_shows_the_metrics_training_logged(browser: WebDriver, pages: Pages) -> None:
    mark = console_mark(browser)
    open_run(browser, pages.tracking, pages.experiment_id, pages.run_id)

    wait_for_text(browser, f"Metrics ({len(pages.metrics)})")
    for name in (
        "test_average_precision",
        "test_roc_auc",
        "test_precision",
        "test_recall",
        "test_card_precision_at_100",
        "validation_average_precision",
        "threshold",
    ):
        assert float(shown_metric(browser, name)) == pytest.approx(pages.metrics[name], rel=1e-9)
    assert unexplained_errors(browser, mark) == []


def test_the_run_page_shows_the_pr_and_roc_plots_in_its_artifacts(
    browser: WebDriver, pages: Pages
) -> None:
    mark = console_mark(browser)
    open_run(browser, pages.tracking, pages.experiment_id, pages.run_id)

    for plot in ("plots/precision_recall_curve.png", "plots/roc_curve.png"):
        image = open_artifact(browser, plot)
        size = [int(image.get_attribute(side)) for side in ("naturalWidth", "naturalHeight")]
        assert size == [600, 500], plot  # the 6 x 5 inch figure at matplotlib's 100 dpi
    assert unexplained_errors(browser, mark) == []
