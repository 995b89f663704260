"""The scoring API in-process (Flask test client) on a real MLflow store and a real state file."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from redis import connection as redis_connection

from pipelines.features import build_features, feature_names
from pipelines.log.reader import read_predictions
from pipelines.mlflow import models, store
from pipelines.settings import ApiToken, StateSettings
from serving.app import create_app
from tests.support.models import train_and_register
from tests.support.settings import make_settings, private_serving

NAME = "fraud-detector"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, small_transactions: pd.DataFrame):
    """A store with v1 in Production, and the training result for its test features."""
    root = tmp_path_factory.mktemp("served")
    settings = make_settings(root / "work")
    _, result = train_and_register(small_transactions, settings, production="serve it")
    return settings, result


@pytest.fixture
def app(trained, tmp_path: Path, request):
    """A fresh app per test: its own online state, prediction log and metrics registry. The
    state is a SQLite file unless the test asks for "redis" (indirect parametrization)."""
    settings, _ = trained
    serving = {}
    if getattr(request, "param", "sqlite") == "redis":
        url = request.getfixturevalue("redis_url")
        serving["state"] = StateSettings(backend="redis", url=url)
    settings = private_serving(settings, tmp_path, **serving)
    application = create_app(settings, start_polling=False)
    yield application
    application.extensions["fraudflow"].holder.stop()


@pytest.fixture
def client(app):
    return app.test_client()


def tx(i: int = 0, **changes) -> dict:
    body = {
        "transaction_id": f"t{i}",
        "tx_datetime": "2018-06-20T10:15:00",
        "customer_id": "c1",
        "terminal_id": "m1",
        "tx_amount": 42.5,
    }
    body.update(changes)
    return body


def stored_rows(app) -> int:
    path = app.extensions["fraudflow"].state.path
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM transactions").fetchone()[0]


def test_predict_returns_probability_decision_reasons_and_version(client) -> None:
    response = client.post("/predict?explain=true", json=tx(amount := 1, tx_amount=480.0))
    assert response.status_code == 200, response.json
    body = response.json
    assert body["transaction_id"] == f"t{amount}"
    assert 0.0 <= body["fraud_probability"] <= 1.0
    assert body["decision"] in ("approve", "review", "decline")
    assert body["model"] == {"name": NAME, "version": "1"}
    assert body["reasons"] and body["reasons"][0]["contribution"] > 0
    assert any(r["feature"] == "tx_amount" for r in body["reasons"])


def test_a_list_is_scored_in_order_each_seeing_the_previous(client) -> None:
    batch = [tx(i, tx_datetime=f"2018-06-20T10:1{i}:00") for i in range(3)]
    response = client.post("/predict", json=batch)
    assert response.status_code == 200
    predictions = response.json["predictions"]
    assert [p["transaction_id"] for p in predictions] == ["t0", "t1", "t2"]


def test_decisions_follow_the_thresholds(client, app) -> None:
    threshold = app.extensions["fraudflow"].holder.model.scorer.threshold
    for i, body in enumerate(
        client.post("/predict", json=[tx(i, tx_amount=a) for i, a in enumerate([5.0, 900.0])]).json[
            "predictions"
        ]
    ):
        p = body["fraud_probability"]
        expected = "decline" if p >= 0.9 else "review" if p >= threshold else "approve"
        assert body["decision"] == expected, (i, p)


@pytest.mark.parametrize(
    "app", ["sqlite", pytest.param("redis", marks=pytest.mark.multihost)], indirect=True
)
def test_online_features_equal_offline_on_a_replayed_stream(
    client, app, small_transactions
) -> None:
    """Parity: warm the state with history, replay a stream with late labels; the logged online
    feature vectors equal build_features on the same history + stream, to 1e-9. On both
    backends: the SQLite file and a Redis server."""
    svc = app.extensions["fraudflow"]
    split = len(small_transactions) - 2000
    history, stream = small_transactions.iloc[:split], small_transactions.iloc[split:]
    assert svc.state.warm(history) == len(history)
    for start in range(0, len(stream), 100):
        chunk = stream.iloc[start : start + 100]
        body = [
            {
                "transaction_id": r.transaction_id,
                "tx_datetime": r.tx_datetime.isoformat(),
                "customer_id": r.customer_id,
                "terminal_id": r.terminal_id,
                "tx_amount": r.tx_amount,
            }
            for r in chunk.itertuples()
        ]
        assert client.post("/predict", json=body).status_code == 200
        labels = [
            {"transaction_id": r.transaction_id, "tx_fraud": int(r.tx_fraud)}
            for r in chunk.itertuples()
        ]
        assert client.post("/feedback", json=labels).status_code == 200
    # read back as the monitor reads the log: the record the route built, through its reader
    logged = read_predictions(svc.log.folder, features=feature_names(svc.settings.features))
    assert list(logged["transaction_id"]) == list(stream["transaction_id"])
    offline = build_features(small_transactions, svc.settings.features).iloc[split:]
    online = logged[list(offline.columns)].astype(float)
    assert (offline["terminal_risk_30d"] > 0).sum() > 50  # matured labels are really used
    assert (offline["terminal_risk_half_life_7d"] > 0).sum() > 50  # issue 22's, online too
    assert offline["amount_to_customer_max_30d"].notna().sum() > 1000
    np.testing.assert_allclose(
        online.to_numpy(), offline.to_numpy(), rtol=0, atol=1e-9, equal_nan=True
    )
    scorer = svc.holder.model.scorer
    np.testing.assert_allclose(
        logged["fraud_probability"], scorer.predict_proba(offline), atol=1e-12
    )


@pytest.mark.multihost
@pytest.mark.parametrize("app", ["redis"], indirect=True)
def test_a_prediction_reads_its_online_features_in_one_round_trip_to_redis(
    client, app, small_transactions, monkeypatch
) -> None:
    """Every feature of a transaction (issue 22's quantiles and decayed risk among them) comes
    from the one script call that stores it and returns its card's and terminal's history:
    one request written to Redis per /predict."""
    svc = app.extensions["fraudflow"]
    svc.state.warm(small_transactions.iloc[:-30])
    sent: list[list] = []
    original = redis_connection.AbstractConnection.send_packed_command

    def counting(connection, command, check_health=True):
        sent[-1].append(command if isinstance(command, bytes) else b"".join(command))
        return original(connection, command, check_health)

    monkeypatch.setattr(redis_connection.AbstractConnection, "send_packed_command", counting)
    for row in small_transactions.iloc[-30:].itertuples():
        sent.append([])
        body = {
            "transaction_id": row.transaction_id,
            "tx_datetime": row.tx_datetime.isoformat(),
            "customer_id": row.customer_id,
            "terminal_id": row.terminal_id,
            "tx_amount": row.tx_amount,
        }
        assert client.post("/predict", json=body).status_code == 200
    # the first also loads the script into this new server (EVALSHA, NOSCRIPT, EVAL): once
    assert [len(requests) for requests in sent[1:]] == [1] * 29
    assert all(b"EVALSHA" in requests[0] for requests in sent[1:])


def test_resent_transaction_is_not_counted_twice(client, app) -> None:
    first = client.post("/predict", json=tx(7)).json
    client.post("/predict", json=tx(8, tx_datetime="2018-06-20T11:00:00"))
    again = client.post("/predict", json=tx(7)).json
    assert again["fraud_probability"] == first["fraud_probability"]
    assert stored_rows(app) == 2


def test_feedback_is_idempotent_and_reports_known_transactions(client) -> None:
    client.post("/predict", json=tx(1))
    label = {"transaction_id": "t1", "tx_fraud": 1}
    for _ in range(2):
        response = client.post(
            "/feedback", json=[label, {"transaction_id": "never-seen", "tx_fraud": 0}]
        )
        assert response.status_code == 200
        assert response.json == {"received": 2, "known_transactions": 1}


BAD_BODIES = [
    ("not json", "{oops", "application/json", 400, "not valid JSON"),
    ("empty body", "", "application/json", 400, "empty"),
    ("wrong content type", json.dumps(tx()), "text/plain", 415, "application/json"),
    (
        "missing field",
        json.dumps({k: v for k, v in tx().items() if k != "terminal_id"}),
        "application/json",
        422,
        "terminal_id",
    ),
    (
        "misspelt field",
        json.dumps({**{k: v for k, v in tx().items() if k != "tx_amount"}, "tx_amout": 3}),
        "application/json",
        422,
        "tx_amout",
    ),
    ("amount as text", json.dumps(tx(tx_amount="12.5")), "application/json", 422, "tx_amount"),
    ("NaN amount", json.dumps(tx(tx_amount=float("nan"))), "application/json", 422, "tx_amount"),
    (
        "infinite amount",
        json.dumps(tx(tx_amount=float("inf"))),
        "application/json",
        422,
        "tx_amount",
    ),
    ("negative amount", json.dumps(tx(tx_amount=-1)), "application/json", 422, "tx_amount"),
    (
        "unparsable date",
        json.dumps(tx(tx_datetime="2018-13-45 25:00")),
        "application/json",
        422,
        "tx_datetime",
    ),
    (
        "date as number",
        json.dumps(tx(tx_datetime=1529489700)),
        "application/json",
        422,
        "tx_datetime",
    ),
    ("boolean id", json.dumps(tx(transaction_id=True)), "application/json", 422, "transaction_id"),
    ("oversized batch", json.dumps([tx(i) for i in range(101)]), "application/json", 413, "101"),
    ("empty list", "[]", "application/json", 422, "empty"),
    ("a bare number", "3", "application/json", 422, "object"),
    (
        "one bad item in a list",
        json.dumps([tx(1), tx(2, tx_amount=-5)]),
        "application/json",
        422,
        "[1].tx_amount",
    ),
]


@pytest.mark.parametrize(
    "case, data, content_type, status, phrase", BAD_BODIES, ids=[b[0] for b in BAD_BODIES]
)
def test_bad_input_gets_a_4xx_naming_the_problem_and_changes_nothing(
    client, app, case, data, content_type, status, phrase
) -> None:
    response = client.post("/predict", data=data, content_type=content_type)
    assert response.status_code == status, (case, response.json)
    assert phrase in json.dumps(response.json), response.json
    assert stored_rows(app) == 0
    assert read_predictions(app.extensions["fraudflow"].log.folder).empty


def test_bad_feedback_is_refused(client) -> None:
    for label in (
        {"transaction_id": "t", "tx_fraud": 2},
        {"transaction_id": "t", "tx_fraud": "1"},
        {"transaction_id": "t"},
    ):
        response = client.post("/feedback", json=label)
        assert response.status_code == 422 and "tx_fraud" in json.dumps(response.json)


def test_invocations_speaks_mlflows_payload_formats(client, trained) -> None:
    settings, result = trained
    features = result.test.features.head(5)
    store.use_store(settings)
    expected = models.load_scorer(settings, f"models:/{NAME}/1").predict_proba(features)
    split = json.loads(features.to_json(orient="split"))
    payloads = [
        {"dataframe_split": {"columns": split["columns"], "data": split["data"]}},
        {"dataframe_records": json.loads(features.to_json(orient="records"))},
        {"inputs": json.loads(features.to_json(orient="records"))},
        {"instances": json.loads(features.to_json(orient="values"))},
    ]
    for payload in payloads:
        response = client.post("/invocations", json=payload)
        assert response.status_code == 200, (payload.keys(), response.json)
        np.testing.assert_allclose(response.json["predictions"], expected, atol=1e-12)
    missing = {"dataframe_records": [{"tx_amount": 3.0}]}
    response = client.post("/invocations", json=missing)
    assert response.status_code == 422 and "missing feature column" in response.json["error"]


def test_auth_protects_scoring_but_not_health(trained, tmp_path) -> None:
    settings, _ = trained
    token = {"name": "checkout", "scopes": ["score", "label"], "token": "s3cret-s3cret-s3cret"}
    secured = private_serving(settings, tmp_path, tokens=(ApiToken.model_validate(token),))
    client = create_app(secured, start_polling=False).test_client()
    assert client.post("/predict", json=tx()).status_code == 401
    assert (
        client.post("/predict", json=tx(), headers={"Authorization": "Bearer nope"}).status_code
        == 401
    )
    assert client.post("/feedback", json={"transaction_id": "t", "tx_fraud": 1}).status_code == 401
    assert client.post("/invocations", json={"inputs": []}).status_code == 401
    ok = client.post(
        "/predict", json=tx(), headers={"Authorization": "Bearer s3cret-s3cret-s3cret"}
    )
    assert ok.status_code == 200
    assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200


def test_without_a_production_model_the_service_starts_but_is_not_ready(tmp_path) -> None:
    settings = make_settings(tmp_path / "empty")
    client = create_app(settings, start_polling=False).test_client()
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 503
    response = client.post("/predict", json=tx())
    assert response.status_code == 503 and "promote" in response.json["error"]
    assert client.get("/model").status_code == 503


def test_metrics_count_predictions_by_decision(client) -> None:
    client.post("/predict", json=[tx(i) for i in range(4)])
    text = client.get("/metrics").get_data(as_text=True)
    counts = {
        (line.split('"')[1], line.split('"')[3]): float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("fraudflow_predictions_total{")
    }
    decisions = ("approve", "review", "decline")
    assert set(counts) == {(d, r) for d in decisions for r in ("champion", "challenger")}
    assert sum(counts[d, "champion"] for d in decisions) == 4
    assert sum(counts[d, "challenger"] for d in decisions) == 0  # none is loaded
    assert 'fraudflow_model_version{model_role="champion"} 1.0' in text
    assert "flask_http_request_duration_seconds_bucket" in text


def test_openapi_describes_every_route_the_service_has(app, client) -> None:
    document = client.get("/openapi.json").json
    assert document["openapi"].startswith("3.")
    routes = {r.rule for r in app.url_map.iter_rules() if r.endpoint != "static"}
    assert routes - {"/openapi.json"} == set(document["paths"])
    required = document["components"]["schemas"]["Transaction"]["required"]
    assert set(required) == {
        "transaction_id",
        "tx_datetime",
        "customer_id",
        "terminal_id",
        "tx_amount",
    }


def test_a_version_that_cannot_load_is_reported_as_such_and_fails_health(trained, tmp_path) -> None:
    """The registry serves a version this service cannot load (a model trained on other
    features) and nothing else is served: it is refused, the
    503s name the version and its error (not "nothing in the registry"), /health turns 503 so
    the orchestrator sees a replica that can never score, the metric counts each try."""
    settings, _ = trained
    other = private_serving(settings, tmp_path).model_copy(
        update={
            "features": settings.features.model_copy(update={"terminal_windows_days": (1, 7)}),
        }
    )
    app = create_app(other, start_polling=False)
    holder = app.extensions["fraudflow"].holder
    version = holder.status.failed_version
    assert version is not None and holder.failing and holder.model is None
    assert holder.status.reload_failures == 1 and "other features" in holder.status.last_error
    client = app.test_client()
    assert client.get("/ready").status_code == 503
    for answer in (client.post("/predict", json=tx(0)), client.get("/model")):
        assert answer.status_code == 503
        error = answer.json["error"]
        assert f"version {version}" in error and "failed to load" in error, error
        assert "other features" in error and "in the registry yet" not in error, error
    health = client.get("/health")
    assert health.status_code == 503, health.json
    assert health.json["status"] == "failing" and health.json["failed_version"] == version
    assert "other features" in health.json["load_error"]
    # the poller does not try it again at every poll: it backs off, doubling the wait
    first_delay = holder.status.retry_delay_s
    assert first_delay == 2 * other.serving.poll_interval_s
    holder.refresh()
    assert holder.status.reload_failures == 1 and holder.status.failed_version == version
    holder.status.retry_at = time.monotonic()  # the wait is over
    holder.refresh()  # tried again: still failing, counted again, the next wait twice as long
    assert holder.status.reload_failures == 2 and client.get("/health").status_code == 503
    assert holder.status.retry_delay_s == min(2 * first_delay, other.model.retry_max_s)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "fraudflow_model_reload_failures_total 2.0" in metrics


def test_single_row_probability_equals_the_matrix_path(app) -> None:
    """The fast one-row LightGBM call gives exactly the batch probability."""
    model = app.extensions["fraudflow"].holder.model
    assert model.online.row_probability is not None
    matrix = np.random.default_rng(0).uniform(0, 500, size=(200, len(model.scorer.features)))
    matrix[::5, 3] = np.nan
    expected = model.scorer.predict_rows(matrix)
    for row, want in zip(matrix, expected):
        assert model.online.probabilities([row]) == [want]
    assert model.online.probabilities(list(matrix)) == expected.tolist()


def test_single_row_contributions_equal_the_matrix_path(app) -> None:
    """The fast one-row LightGBM call gives exactly the batch numbers, so reasons don't move."""
    svc = app.extensions["fraudflow"]
    model = svc.holder.model
    assert model.online.row_contributions is not None
    matrix = np.random.default_rng(1).uniform(0, 500, size=(200, len(model.scorer.features)))
    matrix[::5, 3] = np.nan
    expected = model.scorer.contribution_rows(matrix)
    for row, want in zip(matrix, expected):
        np.testing.assert_array_equal(model.online.row_contributions(row), want)
        [contributions] = model.online.contributions([row])
        np.testing.assert_array_equal(contributions, want[:-1])


def expected_reasons(model, features: list[float], count: int) -> list[dict]:
    """The reasons of one feature row, straight from LightGBM's matrix path."""
    contributions = model.scorer.contribution_rows(np.array([features]))[0, :-1]
    order = np.argsort(-contributions, kind="stable")[:count]
    return [
        {
            "feature": model.scorer.features[i],
            "value": None if np.isnan(features[i]) else features[i],
            "contribution": round(float(contributions[i]), 6),
        }
        for i in order
        if contributions[i] > 0
    ]


def logged_features(app) -> list[list[float]]:
    svc = app.extensions["fraudflow"]
    names = list(svc.holder.model.scorer.features)
    logged = read_predictions(svc.log.folder, features=names)
    return logged[names].astype(float).to_numpy().tolist()


def test_approvals_get_reasons_only_when_explained(trained, tmp_path) -> None:
    """Reasons cost a TreeSHAP pass: approvals skip it unless `?explain=true` asks."""
    settings, _ = trained
    thresholds = {"review_threshold": 1.0, "decline_threshold": 1.0}  # everything approved
    app = create_app(private_serving(settings, tmp_path, **thresholds), start_polling=False)
    client = app.test_client()
    model = app.extensions["fraudflow"].holder.model
    plain = client.post("/predict", json=tx(1, tx_amount=5.0)).json
    same = client.post("/predict?explain=false", json=tx(2, tx_amount=5.0)).json
    explained = client.post("/predict?explain=true", json=tx(3, tx_amount=5.0)).json
    assert [b["decision"] for b in (plain, same, explained)] == ["approve"] * 3
    assert plain["reasons"] == [] and same["reasons"] == []
    # the log keeps the features of every prediction, approvals included
    features = logged_features(app)
    assert len(features) == 3
    assert explained["reasons"] == expected_reasons(model, features[2], 3)
    assert explained["reasons"], "an approval has features that pushed its score up"
    other = client.post("/predict?unrelated=1", json=tx(4, tx_amount=5.0)).json
    assert other["decision"] == "approve" and other["reasons"] == []
    app.extensions["fraudflow"].holder.stop()


@pytest.mark.parametrize(
    "thresholds, decision",
    [
        ({"review_threshold": 0.0, "decline_threshold": 1.0}, "review"),
        ({"review_threshold": 0.0, "decline_threshold": 0.0}, "decline"),
    ],
)
def test_review_and_decline_decisions_get_reasons(trained, tmp_path, thresholds, decision):
    settings, _ = trained
    app = create_app(private_serving(settings, tmp_path, **thresholds), start_polling=False)
    client = app.test_client()
    model = app.extensions["fraudflow"].holder.model
    batch = client.post("/predict", json=[tx(i, tx_amount=5.0 + 90 * i) for i in range(3)]).json
    answers = batch["predictions"]
    assert [a["decision"] for a in answers] == [decision] * 3
    for answer, features in zip(answers, logged_features(app)):
        assert answer["reasons"] and answer["reasons"] == expected_reasons(model, features, 3)
    app.extensions["fraudflow"].holder.stop()


@pytest.mark.parametrize("value", ["yes", "True", "1", ""])
def test_an_invalid_explain_value_is_refused_naming_the_parameter(client, app, value) -> None:
    response = client.post(f"/predict?explain={value}", json=tx(1))
    assert response.status_code == 400, response.json
    assert "'explain'" in response.json["error"]
    assert response.json["details"] == [{"field": "explain", "message": "must be true or false"}]
    assert stored_rows(app) == 0


def test_the_prediction_does_not_depend_on_the_reasons(trained, tmp_path) -> None:
    """The same stream with and without `explain`: the same probabilities and decisions."""
    settings, _ = trained
    answers = []
    for query in ("", "?explain=true"):
        app = create_app(private_serving(settings, tmp_path / query.strip("?=")), False)
        stream = [tx(i, tx_amount=float(5 + 61 * i)) for i in range(8)]
        answers.append([app.test_client().post(f"/predict{query}", json=t).json for t in stream])
        app.extensions["fraudflow"].holder.stop()
    plain, explained = answers
    assert [a["fraud_probability"] for a in plain] == [a["fraud_probability"] for a in explained]
    assert [a["decision"] for a in plain] == [a["decision"] for a in explained]
    for a, b in zip(plain, explained):
        assert a["reasons"] == (b["reasons"] if a["decision"] != "approve" else [])


def test_a_body_over_the_size_limit_is_refused_before_it_is_parsed(trained, tmp_path) -> None:
    settings, _ = trained
    app = create_app(private_serving(settings, tmp_path, max_body_bytes=2_000), start_polling=False)
    client = app.test_client()
    garbage = "{" + "x" * 5_000  # 413, not 400: the size is checked before anything is parsed
    assert client.post("/predict", data=garbage, content_type="application/json").status_code == 413
    batch = json.dumps([tx(i) for i in range(20)])  # a valid batch, under max_batch, too large
    assert len(batch) > 2_000
    for route in ("/predict", "/feedback", "/invocations"):
        response = client.post(route, data=batch, content_type="application/json")
        assert response.status_code == 413 and response.is_json, route
    assert stored_rows(app) == 0
    assert client.post("/predict", json=tx(0)).status_code == 200  # a small body still passes
    app.extensions["fraudflow"].holder.stop()


def test_invocations_refuses_more_rows_than_the_batch_limit(client, trained) -> None:
    _, result = trained
    rows = json.loads(result.test.features.head(101).to_json(orient="records"))
    response = client.post("/invocations", json={"dataframe_records": rows})
    assert response.status_code == 413 and "101" in response.json["error"]
    response = client.post("/invocations", json={"dataframe_records": rows[:100]})
    assert response.status_code == 200 and len(response.json["predictions"]) == 100


def test_errors_never_show_the_registry_address_or_its_error(tmp_path, monkeypatch) -> None:
    """/health says `unreachable`, the 503s say what to do; the detail (hosts, credentials in
    a tracking URI) goes to the server log only."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    registry = "http://fraud-admin:hunter2@127.0.0.1:9"  # nothing listens on port 9
    settings = make_settings(tmp_path / "work", mlflow={"tracking_uri": registry})
    app = create_app(private_serving(settings, tmp_path), start_polling=False)
    client = app.test_client()
    health = client.get("/health")
    assert health.status_code == 200 and health.json["registry"] == "unreachable"
    answers = [
        health,
        client.get("/ready"),
        client.get("/model"),
        client.post("/predict", json=tx(0)),
        client.post("/invocations", json={"inputs": []}),
    ]
    assert [a.status_code for a in answers[1:]] == [503, 503, 503, 503]
    for answer in answers:
        text = answer.get_data(as_text=True)
        for secret in ("hunter2", "fraud-admin", "127.0.0.1", "Connection"):
            assert secret not in text, (answer.request.path, text)
    app.extensions["fraudflow"].holder.stop()


def test_a_full_disk_for_the_log_answers_503_and_leaves_no_torn_record(
    client, app, monkeypatch
) -> None:
    """The disk takes half the record, then no more: /predict answers 503 naming the log, the
    file is cut back to its last whole record, and the next request is logged normally."""
    import errno
    import os

    from pipelines.log import reader, writer

    assert client.post("/predict", json=tx(1)).status_code == 200
    folder = app.extensions["fraudflow"].log.folder
    (path,) = reader.log_files(folder)
    size = path.stat().st_size
    real = os.write

    def full(fd: int, data) -> int:
        if "predictions-" not in os.readlink(f"/proc/self/fd/{fd}"):
            return real(fd, data)
        if len(data) > 64:
            return real(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.os, "write", full)
    response = client.post("/predict", json=[tx(2), tx(3)])
    monkeypatch.undo()
    assert response.status_code == 503
    assert response.get_json() == {"error": "prediction log unavailable: No space left on device"}
    assert path.stat().st_size == size and path.read_bytes().endswith(b"\n")
    assert client.post("/predict", json=tx(4)).status_code == 200
    read = reader.read_log(folder)
    assert list(read.predictions["transaction_id"]) == ["t1", "t4"] and not read.torn_files


def test_a_short_write_on_predict_is_completed(client, app, monkeypatch) -> None:
    import os

    from pipelines.log import reader, writer

    real = os.write
    monkeypatch.setattr(writer.os, "write", lambda fd, data: real(fd, bytes(data[:100])))
    response = client.post("/predict", json=[tx(5), tx(6)])
    monkeypatch.undo()
    assert response.status_code == 200
    read = reader.read_log(app.extensions["fraudflow"].log.folder)
    assert list(read.predictions["transaction_id"]) == ["t5", "t6"] and not read.torn_files


def test_metrics_show_the_data_volume_and_the_state_size(client, app) -> None:
    import os

    client.post("/predict", json=tx(7))
    text = client.get("/metrics").get_data(as_text=True)
    values = {
        line.split(" ")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("fraudflow_") and " " in line and not line.startswith("#")
    }
    svc = app.extensions["fraudflow"]
    volume = os.statvfs(svc.log.folder)
    assert (
        0 < values["fraudflow_data_volume_free_bytes"] <= values["fraudflow_data_volume_size_bytes"]
    )
    assert values["fraudflow_data_volume_size_bytes"] == volume.f_blocks * volume.f_frsize
    state = svc.state.path
    expected = sum(
        Path(f"{state}{s}").stat().st_size
        for s in ("", "-wal", "-shm")
        if Path(f"{state}{s}").exists()
    )
    assert values["fraudflow_online_state_bytes"] == expected > 0
    logged = sum(p.stat().st_size for p in svc.log.folder.iterdir())
    assert values["fraudflow_prediction_log_bytes"] == logged > 0
