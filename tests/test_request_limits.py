"""Request bodies the API refuses before it parses them: JSON nested deeper than
MAX_JSON_DEPTH is a 400 naming the problem, not a RecursionError, a traceback or a dead worker.
In-process on an empty MLflow store (the check comes before any model is needed), then through
the real gunicorn server."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import requests

from serving.app import create_app
from serving.schemas import MAX_JSON_DEPTH, json_too_deep
from tests.support.servers import gunicorn_api
from tests.support.settings import make_settings, private_serving, write_config

ROUTES = ("/predict", "/feedback", "/invocations")
# 100,000 nested lists: 200 kB, well under the 1 MiB body limit
DEEP = b"[" * 100_000 + b"]" * 100_000
LABEL = {"transaction_id": "tx-1", "tx_fraud": 0}


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_the_depth_of_a_json_text_is_counted_outside_its_strings() -> None:
    assert json_too_deep(DEEP) == 100_000
    assert json_too_deep(nested(MAX_JSON_DEPTH)) is None
    assert json_too_deep(nested(MAX_JSON_DEPTH + 1)) == MAX_JSON_DEPTH + 1
    assert json_too_deep(b'{"a": [{"b": [[1]]}]}') is None
    # brackets in strings, escaped quotes included, are text
    brackets = json.dumps([{"id": "[[[{{{" * 50, "x": 'a\\"[[[', "y": "\\"}] * 200).encode()
    assert json_too_deep(brackets) is None
    # ...and a closing bracket in a string does not hide the depth that follows it
    hidden = b'["]]]]]]]]]", ' + nested(MAX_JSON_DEPTH) + b"]"
    assert json_too_deep(hidden) == MAX_JSON_DEPTH + 1
    # an unterminated string counts its brackets (the body is refused either way)
    assert json_too_deep(b'"' + nested(40)) == 40


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty embedded store (creating one takes seconds)."""
    folder = tmp_path_factory.mktemp("limits") / "work"
    create_app(make_settings(folder), start_polling=False).extensions["fraudflow"].holder.stop()
    return folder


def test_a_deeply_nested_body_is_a_400_with_no_traceback(workdir, tmp_path, caplog) -> None:
    app = create_app(private_serving(make_settings(workdir), tmp_path), start_polling=False)
    client = app.test_client()
    caplog.set_level(logging.DEBUG)
    spec = client.get("/openapi.json").json
    try:
        for route in ROUTES:
            declared = spec["paths"][route]["post"]["responses"]["400"]
            assert f"deeper than {MAX_JSON_DEPTH} levels" in declared["description"]
            for body, depth in ((DEEP, "100,000"), (nested(MAX_JSON_DEPTH + 1), "33")):
                answer = client.post(route, data=body, content_type="application/json")
                assert answer.status_code == 400, (route, answer.status_code)
                message = answer.json["error"]
                assert f"nests arrays and objects {depth} levels deep" in message, message
                assert f"at most {MAX_JSON_DEPTH}" in message
                assert set(answer.json) == {"error"}  # the declared Error body
            # as deep as allowed: parsed, and refused for its shape (422), not its depth
            at_limit = client.post(
                route, data=nested(MAX_JSON_DEPTH), content_type="application/json"
            )
            assert at_limit.status_code in (422, 503), (route, at_limit.json)
        assert client.post("/feedback", json=LABEL).status_code == 200
    finally:
        app.extensions["fraudflow"].holder.stop()
    assert not [r for r in caplog.records if r.exc_info or "Recursion" in r.getMessage()]


@pytest.mark.integration
def test_gunicorn_answers_a_deep_body_with_a_400_and_keeps_its_worker(tmp_path) -> None:
    settings = private_serving(make_settings(tmp_path / "work"), tmp_path)
    config = write_config(tmp_path / "serve.yaml", settings)
    log = tmp_path / "api.log"
    with gunicorn_api(config, log, version=None, workers=1) as url:
        for route in ROUTES * 3:
            answer = requests.post(
                f"{url}{route}",
                data=DEEP,
                headers={"Content-Type": "application/json"},
                timeout=30,
            )
            assert answer.status_code == 400, (route, answer.text)
            assert "100,000 levels deep" in answer.json()["error"]
        assert requests.post(f"{url}/feedback", json=LABEL, timeout=30).status_code == 200
        text = log.read_text()
    assert "Traceback" not in text and "RecursionError" not in text, text[-3000:]
    # the one worker booted once and never left
    assert text.count("Booting worker") == 1 and "Worker exiting" not in text, text[-3000:]
