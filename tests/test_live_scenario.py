"""Promotion on live evidence, end to end on a simulated scenario: the champion was trained long
ago on a short window; two weeks of production traffic go through the API in shadow mode (the
real app, its online state, its prediction log), their labels arrive through /feedback, and
`fraudflow promote --auto` with live evidence required decides.

- a challenger trained on the most recent data wins the comparison and is promoted;
- a challenger trained on a week whose labels were shuffled loses and stays the challenger.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraudflow.cli import main
from pipelines.mlflow import store
from pipelines.mlflow.promotion import set_challenger
from pipelines.mlflow.registry import challenger_version, served_version
from pipelines.settings import Settings
from serving.app import create_app
from tests.support.models import train_and_register
from tests.support.settings import make_settings, private_serving, write_config
from tests.support.traffic import split_days

pytestmark = pytest.mark.integration
TRAFFIC_DAYS = 14
LIVE = {
    "required": True,
    "min_days": 10,
    "min_labelled_frauds": 40,
    "bootstrap_samples": 1000,
    "seed": 0,
}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, small_transactions: pd.DataFrame):
    """The store: the champion (trained on 7 days that ended two months before the traffic),
    `recent` (28 days up to the traffic) and `shuffled` (a week with its labels shuffled)."""
    root = tmp_path_factory.mktemp("live-scenario")
    settings = make_settings(root / "work", promotion={"live_evidence": LIVE})
    history, traffic = split_days(small_transactions, TRAFFIC_DAYS)
    old = make_settings(settings.workdir, training={"train_days": 7, "end_date": "2018-05-10"})
    champion, _ = train_and_register(history, old, production="the champion")
    recent, _ = train_and_register(history, settings)
    rng = np.random.default_rng(0)
    shuffled_labels = history.assign(tx_fraud=rng.permutation(history["tx_fraud"].to_numpy()))
    week = make_settings(settings.workdir, training={"train_days": 7})
    shuffled, _ = train_and_register(shuffled_labels, week)
    data = root / "transactions.parquet"
    small_transactions.to_parquet(data)
    return (
        settings,
        history,
        traffic,
        data,
        {"champion": champion, "recent": recent, "shuffled": shuffled},
    )


def live_period(settings: Settings, history: pd.DataFrame, traffic: pd.DataFrame) -> None:
    """The history warmed into a fresh online state, the traffic scored by the API in shadow
    mode in time order, then every label sent to /feedback."""
    app = create_app(settings, start_polling=False)
    service = app.extensions["fraudflow"]
    assert service.challenger.model is not None
    service.state.warm(history)
    client = app.test_client()
    rows = traffic.sort_values("tx_datetime", kind="stable")
    bodies = [
        {
            "transaction_id": str(r.transaction_id),
            "tx_datetime": r.tx_datetime.isoformat(),
            "customer_id": str(r.customer_id),
            "terminal_id": str(r.terminal_id),
            "tx_amount": float(r.tx_amount),
        }
        for r in rows.itertuples()
    ]
    for start in range(0, len(bodies), 100):
        response = client.post("/predict", json=bodies[start : start + 100])
        assert response.status_code == 200, response.json
    labels = [
        {"transaction_id": str(t), "tx_fraud": int(y)}
        for t, y in rows[["transaction_id", "tx_fraud"]].itertuples(index=False)
    ]
    for start in range(0, len(labels), 100):
        response = client.post("/feedback", json=labels[start : start + 100])
        assert response.json["known_transactions"] == len(labels[start : start + 100])


def promote_auto(settings: Settings, data: Path, folder: Path) -> dict:
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    output = folder / "decision.json"
    config = write_config(folder / "config.yaml", settings)
    command = ["promote", "--auto", "--config", str(config), "--data", str(data)]
    assert main([*command, "--output", str(output)]) in (0, 1)
    return json.loads(output.read_text())


def test_a_challenger_on_recent_data_wins_live_and_one_on_shuffled_labels_stays(
    scenario, tmp_path: Path
) -> None:
    settings, history, traffic, data, versions = scenario
    client = store.client(settings)

    # the shuffled-label week in shadow for two weeks: it loses and stays the challenger
    shadowed = private_serving(settings, tmp_path / "shuffled")
    set_challenger(shadowed, versions["shuffled"], "trained on a shuffled-label week", "test")
    live_period(shadowed, history, traffic)
    held = promote_auto(shadowed, data, tmp_path / "shuffled")
    assert held["version"] == versions["shuffled"] and not held["promoted"]
    evidence = held["live_evidence"]
    assert evidence["verdict"] == "champion holds"
    assert evidence["challenger"]["average_precision"] < evidence["champion"]["average_precision"]
    assert str(served_version(client, settings).version) == versions["champion"]
    assert str(challenger_version(client, settings).version) == versions["shuffled"]

    # the recent model in shadow over the same two weeks: it wins and is promoted
    shadowed = private_serving(settings, tmp_path / "recent")
    set_challenger(shadowed, versions["recent"], "trained on the latest data", "test")
    live_period(shadowed, history, traffic)
    won = promote_auto(shadowed, data, tmp_path / "recent")
    evidence = won["live_evidence"]
    assert won["version"] == versions["recent"] and won["promoted"], won["reason"]
    assert evidence["verdict"] == "challenger better"
    assert evidence["ap_difference_low"] > 0
    assert evidence["days"] >= LIVE["min_days"]
    assert evidence["labelled_frauds"] >= LIVE["min_labelled_frauds"]
    assert str(served_version(client, settings).version) == versions["recent"]
    assert challenger_version(client, settings) is None
    assert "live" in won["reason"]
