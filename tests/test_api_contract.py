"""The API and its OpenAPI document agree: in-process checks of what schemathesis found
(tests/test_api_conformance.py runs schemathesis itself against the live server)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema_rs
import pandas as pd
import pytest

from serving.app import create_app
from serving.schemas import LARGEST_INTEGER
from tests.support.models import train_and_register
from tests.support.settings import make_settings, private_serving


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, small_transactions: pd.DataFrame):
    root = tmp_path_factory.mktemp("contract")
    settings = make_settings(root / "work")
    _, result = train_and_register(small_transactions, settings, production="serve it")
    return settings, result


@pytest.fixture
def app(trained, tmp_path: Path):
    settings, _ = trained
    application = create_app(private_serving(settings, tmp_path), start_polling=False)
    yield application
    application.extensions["fraudflow"].holder.stop()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def spec(client) -> dict:
    return client.get("/openapi.json").json


def matches(spec: dict, schema: dict, value: object) -> bool:
    """Whether `value` is valid against `schema`, whose $refs point into the document."""
    root = {**schema, "components": spec["components"]}
    return jsonschema_rs.Draft202012Validator(root, validate_formats=True).is_valid(value)


def component(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def declared(spec: dict, path: str, method: str, status: int, body: object) -> bool:
    """Whether the document declares `status` for the operation, and `body` matches it."""
    responses = spec["paths"][path][method]["responses"]
    if str(status) not in responses:
        return False
    return matches(spec, responses[str(status)]["content"]["application/json"]["schema"], body)


def tx(i: int = 0, **changes) -> dict:
    body = {
        "transaction_id": f"t{i}",
        "tx_datetime": "2018-06-20T10:15:00Z",
        "customer_id": "c1",
        "terminal_id": "m1",
        "tx_amount": 42.5,
    }
    return {**body, **changes}


def test_a_wrong_method_gets_405_with_allow_and_a_json_body(client, spec) -> None:
    """RFC 9110: a 405 lists the allowed methods; the JSON error handler keeps werkzeug's
    headers (before, it dropped them)."""
    for path, operations in spec["paths"].items():
        for method in ("trace", "put", "delete", "patch"):
            response = client.open(path, method=method.upper())
            assert response.status_code == 405, (path, method)
            allowed = {m.strip() for m in response.headers.get("Allow", "").split(",")}
            assert {m.upper() for m in operations} <= allowed, (path, allowed)
            assert response.is_json and "not allowed" in response.json["error"]


def test_predict_answers_match_exactly_one_declared_schema(client, spec) -> None:
    """A single prediction and a batch answer each match one branch of the oneOf (before,
    a batch answer matched both and so neither)."""
    schema = spec["paths"]["/predict"]["post"]["responses"]["200"]
    schema = schema["content"]["application/json"]["schema"]
    one = client.post("/predict", json=tx(1))
    many = client.post("/predict", json=[tx(2), tx(3)])
    assert one.status_code == many.status_code == 200
    assert matches(spec, schema, one.json) and matches(spec, schema, many.json)
    assert matches(spec, component("Prediction"), one.json)
    assert not matches(spec, component("PredictionBatch"), one.json)
    assert matches(spec, component("PredictionBatch"), many.json)
    assert not matches(spec, component("Prediction"), many.json)


def test_an_oversized_feedback_batch_is_a_declared_413(client, spec) -> None:
    labels = [{"transaction_id": f"t{i}", "tx_fraud": 0} for i in range(101)]
    body = spec["paths"]["/feedback"]["post"]["requestBody"]["content"]["application/json"]
    assert not matches(spec, body["schema"], labels) and matches(spec, body["schema"], labels[:100])
    response = client.post("/feedback", json=labels)
    assert response.status_code == 413 and "101" in response.json["error"]
    assert declared(spec, "/feedback", "post", 413, response.json)
    response = client.post("/feedback", json=labels[:100])
    assert response.status_code == 200
    assert declared(spec, "/feedback", "post", 200, response.json)


def test_413_415_and_400_are_declared_where_they_happen(trained, tmp_path) -> None:
    settings, _ = trained
    app = create_app(private_serving(settings, tmp_path, max_body_bytes=2_000), start_polling=False)
    client = app.test_client()
    spec = client.get("/openapi.json").json
    for path in ("/predict", "/feedback", "/invocations"):
        big = client.post(path, data="[" + " " * 5_000 + "]", content_type="application/json")
        text = client.post(path, data="{}", content_type="text/plain")
        broken = client.post(path, data="{", content_type="application/json")
        for response, status in ((big, 413), (text, 415), (broken, 400)):
            assert response.status_code == status, (path, response.json)
            assert declared(spec, path, "post", status, response.json), (path, status)
    app.extensions["fraudflow"].holder.stop()


def invocation_cases(features: list[str], row: list[float]) -> list[tuple[object, str]]:
    """Payloads the document forbids, each with a word the server's error must contain."""
    record = dict(zip(features, row))
    return [
        ({}, "exactly one"),
        ({"dataframe_records": [record], "params": {}}, "unknown key"),
        ({"dataframe_records": [record], "inputs": [row]}, "exactly one"),
        ({"dataframe_records": [{**record, "colour": 1.0}]}, "unknown feature column 'colour'"),
        ({"dataframe_records": [{k: v for k, v in record.items() if k != features[0]}]}, "missing"),
        ({"dataframe_records": []}, "no rows"),
        ({"dataframe_records": [row]}, "list of objects"),
        ({"inputs": {name: [value] for name, value in record.items()}}, "columnar"),
        ({"inputs": [record, row]}, "all records"),
        ({"instances": [row[:-1]]}, f"{len(features)} values"),
        ({"instances": [[True] + row[1:]]}, "must be a number"),
        ({"instances": [[10**400] + row[1:]]}, "finite"),
        # just past the declared minimum (the bound's decimal text), yet within a double's range
        ({"instances": [[-LARGEST_INTEGER - 1] + row[1:]]}, "finite"),
        ({"instances": [["1.0"] + row[1:]]}, "must be a number"),
        ({"dataframe_split": {"columns": features, "data": [row], "index": [0]}}, "only"),
        ({"dataframe_split": {"columns": features + features[:1], "data": [row]}}, "twice"),
        ({"dataframe_split": {"columns": features[1:], "data": [row[1:]]}}, "missing"),
        ({"dataframe_split": {"columns": features, "data": [row + [1.0]]}}, "values"),
        ({"dataframe_split": {"columns": 5, "data": [row]}}, "column names"),
    ]


def test_invocations_refuses_what_the_document_forbids(client, spec, trained) -> None:
    """Each payload is outside the Invocation schema and the server refuses it with a 4xx
    naming the problem (before, unknown keys and columns were ignored, rows of another
    length were cut to fit, and a number past a double's range was a 500)."""
    _, result = trained
    features = list(result.scorer.features)
    row = [float(i) for i in range(len(features))]
    schema = component("Invocation")
    for payload, word in invocation_cases(features, row):
        assert not matches(spec, schema, payload), payload
        response = client.post("/invocations", json=payload)
        assert response.status_code == 422, (payload, response.json)
        assert word in response.json["error"], (payload, response.json)
        assert declared(spec, "/invocations", "post", 422, response.json)
    shuffled = features[::-1]
    accepted = [
        {"dataframe_split": {"columns": shuffled, "data": [row[::-1], [None] * len(row)]}},
        {"dataframe_records": [dict(zip(features, row))]},
        {"inputs": [dict(zip(features, row))]},
        {"instances": [row, row]},
    ]
    answers = []
    for payload in accepted:
        assert matches(spec, schema, payload), payload
        response = client.post("/invocations", json=payload)
        assert response.status_code == 200, (payload, response.json)
        assert declared(spec, "/invocations", "post", 200, response.json)
        answers.append(response.json["predictions"][0])
    assert len(set(answers)) == 1  # the same row, whatever the form or the column order


def test_transactions_are_read_as_the_document_says(client, spec) -> None:
    schema = component("Transaction")
    refused = [
        tx(tx_datetime="0"),  # pydantic alone reads this as a unix time
        tx(tx_datetime="2018-06-20"),
        tx(tx_datetime="9999-12-31T23:59:59-23:59"),  # past datetime's range in UTC: was a 500
        tx(tx_datetime="0001-01-01T00:00:00+01:00"),
        tx(tx_datetime="2016-12-31T23:59:60Z"),
        tx(transaction_id=-1),
        tx(transaction_id=2**63),
        tx(tx_amount=10**400),
        tx(tx_amount=10**12 + 1),
        tx(tx_amount=1.5e12),
    ]
    for body in refused:
        assert not matches(spec, schema, body), body
        response = client.post("/predict", json=body)
        assert response.status_code == 422, (body, response.json)
    accepted = client.post("/predict", json=tx(transaction_id=6.0, customer_id=7))
    assert accepted.status_code == 200, accepted.json
    assert accepted.json["transaction_id"] == "6"  # 6.0 is the integer 6 (JSON Schema)
    assert matches(spec, schema, tx(transaction_id=6.0, customer_id=7))


def test_every_other_answer_matches_its_declared_schema(client, spec) -> None:
    for path in ("/health", "/ready", "/model"):
        response = client.get(path)
        assert response.status_code == 200
        assert declared(spec, path, "get", 200, response.json), (path, json.dumps(response.json))


def test_an_overflowing_feature_is_answered_as_null_not_as_invalid_json(client, spec) -> None:
    """A tiny amount then a large one: the ratio to the card's average is infinite, which
    JSON cannot carry (Flask wrote `Infinity`); the reason says null, as for NaN."""
    first = client.post("/predict", json=tx(10, customer_id="tiny", tx_amount=5e-324))
    assert first.status_code == 200
    second = client.post(
        "/predict",
        json=tx(11, customer_id="tiny", tx_amount=1e12, tx_datetime="2018-06-20T10:16:00Z"),
    )
    assert second.status_code == 200

    def not_json(name: str) -> None:
        raise AssertionError(f"the answer holds {name}, which is not JSON")

    body = json.loads(second.get_data(as_text=True), parse_constant=not_json)
    ratio = [r for r in body["reasons"] if r["feature"].startswith("amount_to_customer_avg")]
    assert ratio and ratio[0]["value"] is None, body["reasons"]  # the model's top reason here
    assert declared(spec, "/predict", "post", 200, body)
