"""The challenger beside the champion, in-process (Flask test client) on a real MLflow store:
shadow answers exactly as no challenger would, canary routes whole cards, and a challenger that
raises or cannot load changes nothing in the champion's answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.log.reader import read_predictions
from pipelines.log.record import log_folder
from pipelines.mlflow import store
from pipelines.settings import Settings
from serving.app import create_app
from serving.canary import card_share, in_canary
from tests.support.models import one_token, register_altered, train_and_register
from tests.support.settings import make_settings, private_serving
from tests.support.traffic import api_transaction

NAME = "fraud-detector"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, small_transactions: pd.DataFrame):
    """v1 the champion (Production, @champion), v2 another model set as @challenger."""
    settings = make_settings(tmp_path_factory.mktemp("challenger") / "work")
    champion, _ = train_and_register(small_transactions, settings, production="champion")
    other = make_settings(
        settings.workdir,
        training={"lightgbm": {"seed": 7, "num_leaves": 7, "learning_rate": 0.2}},
    )
    challenger, _ = train_and_register(small_transactions, other)
    store.client(settings).set_registered_model_alias(NAME, "challenger", challenger)
    return settings, champion, challenger


def serving_app(settings: Settings, folder: Path, mode: str, percent: float = 10.0):
    serving = private_serving(settings, folder)
    serving = serving.model_copy(
        update={
            "serving": serving.serving.model_copy(
                update={
                    "challenger": serving.serving.challenger.model_copy(
                        update={"mode": mode, "canary_percent": percent}
                    )
                }
            )
        }
    )
    return create_app(serving, start_polling=False), serving


def traffic(n: int, prefix: str = "t") -> list[dict]:
    """`n` transactions of many cards (several each) and terminals, time moving forward."""
    return [
        {
            **api_transaction(i, prefix),
            "customer_id": f"c{i % 397}",
            "tx_datetime": f"2018-06-{21 + i // 600:02d}T{8 + (i // 50) % 12:02d}:"
            f"{i % 60:02d}:{(i * 7) % 60:02d}",
            "tx_amount": float(5 + (i * 37) % 400),
        }
        for i in range(n)
    ]


def answers(app, transactions: list[dict]) -> list[bytes]:
    """The raw bodies: 400 single transactions (every third with explain), then batches."""
    client = app.test_client()
    bodies = []
    for i, tx in enumerate(transactions[:400]):
        url = "/predict?explain=true" if i % 3 == 0 else "/predict"
        response = client.post(url, json=tx)
        assert response.status_code == 200, response.json
        bodies.append(response.get_data())
    for start in range(400, len(transactions), 100):
        response = client.post("/predict", json=transactions[start : start + 100])
        assert response.status_code == 200, response.json
        bodies.append(response.get_data())
    return bodies


def test_shadow_answers_1000_transactions_byte_for_byte_as_without_a_challenger(
    registry, tmp_path: Path
) -> None:
    settings, champion, challenger = registry
    transactions = traffic(1000)
    off, _ = serving_app(settings, tmp_path / "off", "off")
    shadow, shadowed = serving_app(settings, tmp_path / "shadow", "shadow")
    assert shadow.extensions["fraudflow"].challenger.model.version == challenger
    assert answers(shadow, transactions) == answers(off, transactions)

    logged = read_predictions(log_folder(shadowed))
    assert len(logged) == 1000
    assert set(logged["model_version"]) == {champion}
    assert set(logged["model_role"]) == {"champion"}
    assert set(logged["challenger_version"]) == {challenger}
    assert (logged["champion_probability"] == logged["fraud_probability"]).all()
    # the challenger really scored: its own model's numbers on the logged features
    model = shadow.extensions["fraudflow"].challenger.model
    expected = model.scorer.predict_proba(logged[list(model.scorer.features)])
    np.testing.assert_allclose(logged["challenger_probability"], expected, rtol=0, atol=1e-12)
    assert not np.allclose(logged["challenger_probability"], logged["champion_probability"])
    assert logged["challenger_decision"].isin(["approve", "review", "decline"]).all()
    plain = read_predictions(log_folder(off.extensions["fraudflow"].settings))
    assert "challenger_version" not in plain or plain["challenger_version"].isna().all()


def test_a_challenger_that_raises_changes_nothing_in_shadow_or_canary(
    registry, tmp_path: Path
) -> None:
    settings, champion, _ = registry
    transactions = traffic(300, "r")
    off, _ = serving_app(settings, tmp_path / "off", "off")
    expected = answers(off, transactions)
    for mode in ("shadow", "canary"):
        app, served = serving_app(settings, tmp_path / mode, mode, percent=50.0)

        def broken(rows):
            raise RuntimeError("challenger exploded")

        app.extensions["fraudflow"].challenger.model.online.probabilities = broken
        assert answers(app, transactions) == expected, mode
        logged = read_predictions(log_folder(served))
        assert set(logged["model_version"]) == {champion}
        assert logged["challenger_probability"].isna().all()
        metrics = app.test_client().get("/metrics").get_data(as_text=True)
        assert "fraudflow_challenger_errors_total 300.0" in metrics


def test_a_challenger_that_cannot_load_changes_nothing(registry, tmp_path: Path) -> None:
    settings, champion, _ = registry
    client = store.client(settings)
    broken = register_altered(settings, champion, one_token)
    client.set_registered_model_alias(NAME, "challenger", broken)
    try:
        transactions = traffic(200, "l")
        off, _ = serving_app(settings, tmp_path / "off", "off")
        app, _ = serving_app(settings, tmp_path / "canary", "canary", percent=50.0)
        assert answers(app, transactions) == answers(off, transactions)
        described = app.test_client().get("/model").json["challenger"]
        assert described["failed_version"] == broken and described["version"] is None
        assert described["load_error"] and described["scored"] is False
        metrics = app.test_client().get("/metrics").get_data(as_text=True)
        assert "fraudflow_challenger_load_failures_total 1.0" in metrics
        assert "fraudflow_model_reload_failures_total 0.0" in metrics  # the champion's
        health = app.test_client().get("/health")
        assert health.status_code == 200 and health.json["challenger"]["failed_version"] == broken
    finally:
        client.set_registered_model_alias(NAME, "challenger", registry[2])


@pytest.mark.parametrize("percent", [2.0, 10.0, 50.0])
def test_the_canary_share_of_10000_cards_is_within_2_points(percent: float) -> None:
    cards = [f"C{i:06d}" for i in range(10_000)]
    share = 100.0 * sum(in_canary(card, percent) for card in cards) / len(cards)
    assert abs(share - percent) <= 2.0
    assert all(0.0 <= card_share(card) < 100.0 for card in cards[:100])


def test_canary_answers_every_transaction_of_a_card_with_one_model(
    registry, tmp_path: Path
) -> None:
    settings, champion, challenger = registry
    app, served = serving_app(settings, tmp_path / "canary", "canary", percent=30.0)
    transactions = traffic(800, "k")
    client = app.test_client()
    for start in range(0, len(transactions), 100):
        response = client.post("/predict", json=transactions[start : start + 100])
        assert response.status_code == 200
        for tx, answer in zip(transactions[start : start + 100], response.json["predictions"]):
            routed = in_canary(tx["customer_id"], 30.0)
            assert answer["model"]["version"] == (challenger if routed else champion)
    logged = read_predictions(log_folder(served))
    by_card = logged.groupby("customer_id")["model_version"].nunique()
    assert (by_card == 1).all()
    routed = logged["customer_id"].map(lambda card: in_canary(card, 30.0))
    assert (logged.loc[routed, "model_role"] == "challenger").all()
    assert (logged.loc[routed, "model_version"] == challenger).all()
    assert (logged.loc[~routed, "model_version"] == champion).all()
    assert (logged.loc[~routed, "model_role"] == "champion").all()
    assert 0 < routed.sum() < len(logged)
    # the champion scored the canary's cards too, in shadow: both numbers are in every record
    assert logged["champion_probability"].notna().all()
    assert (
        logged.loc[routed, "fraud_probability"] == logged.loc[routed, "challenger_probability"]
    ).all()
    described = client.get("/model").json["challenger"]
    assert described == {**described, "mode": "canary", "version": challenger, "scored": True}


def test_the_challenger_follows_its_alias_and_goes_when_it_is_removed(
    registry, tmp_path: Path
) -> None:
    settings, champion, challenger = registry
    client = store.client(settings)
    app, _ = serving_app(settings, tmp_path / "shadow", "shadow")
    holder = app.extensions["fraudflow"].challenger
    assert holder.model.version == challenger
    try:
        client.delete_registered_model_alias(NAME, "challenger")
        holder.refresh()
        assert holder.model is None
        assert app.test_client().get("/model").json["challenger"]["scored"] is False
        response = app.test_client().post("/predict", json=traffic(1, "a")[0])
        assert response.status_code == 200
        client.set_registered_model_alias(NAME, "challenger", champion)
        holder.refresh()
        # the alias on the champion's own version: nothing to compare, nothing scored twice
        assert app.test_client().get("/model").json["challenger"]["scored"] is False
    finally:
        client.set_registered_model_alias(NAME, "challenger", challenger)
    holder.refresh()
    assert holder.model.version == challenger
