"""Who may call the API: scoped tokens (clear, hashed, from a file), the metrics token, the
refusal to serve anyone on an exposed address, and the JSON access log. In-process on a real
(empty) MLflow store, then through the real gunicorn server."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from pipelines.settings import SettingsError
from serving.access_log import LOGGER, json_formatter
from serving.app import create_app
from serving.auth import AuthConfigError, is_loopback
from serving.model_holder import redact
from tests.support.processes import BIN, clean_env, free_port
from tests.support.servers import gunicorn_api
from tests.support.settings import make_settings, private_serving, write_config

SCORER = "scorer-token-0123456789"
LABELLER = "labeller-token-0123456789"
METRICS = "metrics-token-0123456789"
CARD = {
    "transaction_id": "tx-4929-1234",
    "tx_datetime": "2018-06-20T10:15:00",
    "customer_id": "card-4111111111111111",
    "terminal_id": "term-777",
    "tx_amount": 987.65,
}
LABEL = {"transaction_id": "tx-4929-1234", "tx_fraud": 1}


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def secured_sections(folder: Path, **serving) -> dict[str, dict]:
    """Settings sections: a scoring token in clear, a labelling token as its SHA-256, a hashed
    metrics token, and an online state and prediction log of its own under `folder`."""
    return {
        "serving": {
            "tokens": [
                {"name": "checkout", "scopes": ["score"], "token": SCORER},
                {"name": "chargebacks", "scopes": ["label"], "sha256": sha256(LABELLER)},
            ],
            "metrics_token": {"sha256": sha256(METRICS)},
            "metrics_dir": str(folder / "prom"),
            **serving,
        },
        "state": {"sqlite_path": str(folder / "state.sqlite")},
        "prediction_log": {"dir": str(folder / "predictions")},
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One empty embedded store for the in-process apps (creating one takes seconds)."""
    folder = tmp_path_factory.mktemp("auth") / "work"
    create_app(make_settings(folder), start_polling=False).extensions["fraudflow"].holder.stop()
    return folder


@pytest.fixture
def secured(workdir: Path, tmp_path: Path):
    """An app with tokens on an empty store: no model, so /predict that passes auth says 503."""
    settings = make_settings(workdir, **secured_sections(tmp_path))
    app = create_app(settings, start_polling=False)
    yield app.test_client()
    app.extensions["fraudflow"].holder.stop()


def test_each_token_reaches_only_the_routes_of_its_scopes(secured) -> None:
    # the scoring token passes auth on /predict and /invocations (503: no model yet), and is
    # forbidden on /feedback; the hashed labelling token the other way round
    assert secured.post("/predict", json=CARD, headers=bearer(SCORER)).status_code == 503
    invocations = secured.post("/invocations", json={"inputs": []}, headers=bearer(SCORER))
    assert invocations.status_code == 503
    refused = secured.post("/feedback", json=LABEL, headers=bearer(SCORER))
    assert refused.status_code == 403
    assert "'checkout'" in refused.json["error"] and "'label'" in refused.json["error"]
    labelled = secured.post("/feedback", json=LABEL, headers=bearer(LABELLER))
    assert labelled.status_code == 200 and labelled.json["received"] == 1
    for route, body in (("/predict", CARD), ("/invocations", {"inputs": []})):
        refused = secured.post(route, json=body, headers=bearer(LABELLER))
        assert refused.status_code == 403 and "'score'" in refused.json["error"], route


def test_missing_or_wrong_tokens_are_401_and_open_routes_stay_open(secured) -> None:
    for headers in ({}, bearer("not-a-token-0123456789"), {"Authorization": f"Basic {SCORER}"}):
        for route, body in (("/predict", CARD), ("/feedback", LABEL), ("/invocations", {})):
            response = secured.post(route, json=body, headers=headers)
            assert response.status_code == 401, (route, headers)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    # the hash itself is not a token
    assert (
        secured.post("/feedback", json=LABEL, headers=bearer(sha256(LABELLER))).status_code == 401
    )
    for route in ("/health", "/ready", "/openapi.json"):
        assert secured.get(route).status_code in (200, 503), route


def test_metrics_require_the_metrics_token(secured) -> None:
    assert secured.get("/metrics").status_code == 401
    assert secured.get("/metrics", headers=bearer(SCORER)).status_code == 401
    scrape = secured.get("/metrics", headers=bearer(METRICS))
    assert scrape.status_code == 200 and "fraudflow_registry_up" in scrape.get_data(as_text=True)


def test_tokens_from_a_file_as_a_mounted_secret_hands_them_in(workdir, tmp_path) -> None:
    secret = tmp_path / "api-tokens.yaml"
    secret.write_text(
        yaml.safe_dump([{"name": "batch", "scopes": ["score", "label"], "sha256": sha256(SCORER)}])
    )
    metrics_file = tmp_path / "metrics-token"
    metrics_file.write_text(METRICS + "\n")
    sections = secured_sections(tmp_path, tokens=[], tokens_file=str(secret))
    sections["serving"]["metrics_token"] = {"file": str(metrics_file)}
    app = create_app(make_settings(workdir, **sections), start_polling=False)
    client = app.test_client()
    assert client.post("/feedback", json=LABEL, headers=bearer(SCORER)).status_code == 200
    assert client.post("/feedback", json=LABEL).status_code == 401
    assert client.get("/metrics", headers=bearer(METRICS)).status_code == 200
    assert client.get("/metrics").status_code == 401
    app.extensions["fraudflow"].holder.stop()


def test_a_broken_token_file_is_refused_without_echoing_its_secrets(workdir, tmp_path) -> None:
    secret = tmp_path / "api-tokens.yaml"
    secret.write_text(yaml.safe_dump([{"name": "x", "scopes": ["admin"], "token": SCORER}]))
    settings = make_settings(
        workdir, **secured_sections(tmp_path, tokens=[], tokens_file=str(secret))
    )
    with pytest.raises(AuthConfigError, match="scopes") as error:
        create_app(settings, start_polling=False)
    assert SCORER not in str(error.value)
    missing = secured_sections(tmp_path, tokens=[], tokens_file=str(tmp_path / "nope.yaml"))
    with pytest.raises(AuthConfigError, match="nope.yaml"):
        create_app(make_settings(workdir, **missing), start_polling=False)
    twice = [
        {"name": "a", "scopes": ["score"], "token": SCORER},
        {"name": "b", "scopes": ["label"], "sha256": sha256(SCORER)},
    ]
    with pytest.raises(AuthConfigError, match="one secret"):
        create_app(
            make_settings(workdir, **secured_sections(tmp_path, tokens=twice)),
            start_polling=False,
        )


def test_settings_refuse_short_tokens_the_old_key_and_a_token_without_scope(tmp_path) -> None:
    bad = [
        ({"tokens": [{"name": "a", "scopes": ["score"], "token": "short"}]}, "16 characters"),
        ({"tokens": [{"name": "a", "scopes": [], "token": SCORER}]}, "scopes"),
        ({"tokens": [{"name": "a", "scopes": ["score"]}]}, "exactly one"),
        ({"metrics_token": {"sha256": "abc"}}, "sha256"),
        ({"auth_tokens": [SCORER]}, "serving.auth_tokens moved to serving.tokens"),
    ]
    for serving, message in bad:
        with pytest.raises(SettingsError, match=message) as error:
            make_settings(tmp_path, serving=serving)
        assert SCORER not in str(error.value)


def test_without_tokens_an_exposed_address_is_refused_at_app_creation(workdir, tmp_path) -> None:
    settings = make_settings(workdir, **secured_sections(tmp_path, tokens=[]))
    for exposed in (["0.0.0.0:8080"], ["127.0.0.1:8080", "10.1.2.3:8080"], ["[::]:80"], [":80"]):
        with pytest.raises(AuthConfigError, match="refusing to serve the API without tokens"):
            create_app(settings, start_polling=False, listen=exposed)
    public_host = make_settings(workdir, **secured_sections(tmp_path, tokens=[], host="0.0.0.0"))
    with pytest.raises(AuthConfigError, match="0.0.0.0:8080"):
        create_app(public_host, start_polling=False)  # the settings' own host:port
    # loopback (the embedded demo), or an explicit allow_anonymous: served, to anyone
    for listen, allow in (
        (["127.0.0.1:8080", "[::1]:8080", "localhost:1"], False),
        (["0.0.0.0:8080"], True),
    ):
        sections = secured_sections(tmp_path, tokens=[], metrics_token=None, allow_anonymous=allow)
        app = create_app(make_settings(workdir, **sections), start_polling=False, listen=listen)
        client = app.test_client()
        assert client.post("/feedback", json=LABEL).status_code == 200
        assert client.get("/metrics").status_code == 200
        app.extensions["fraudflow"].holder.stop()
    # with tokens, an exposed address is fine
    settings = make_settings(workdir, **secured_sections(tmp_path))
    create_app(settings, start_polling=False, listen=["0.0.0.0:8080"]).extensions[
        "fraudflow"
    ].holder.stop()


def test_without_a_metrics_token_an_exposed_address_is_refused_at_app_creation(
    workdir, tmp_path
) -> None:
    """/metrics fails closed as the API tokens do: on an address other hosts can reach, no
    metrics token and no allow_anonymous is refused at start-up, naming serving.metrics_token."""
    settings = make_settings(workdir, **secured_sections(tmp_path, metrics_token=None))
    for exposed in (["0.0.0.0:8080"], ["127.0.0.1:8080", "10.1.2.3:8080"], ["[::]:80"]):
        with pytest.raises(AuthConfigError, match="without serving.metrics_token") as refused:
            create_app(settings, start_polling=False, listen=exposed)
        assert exposed[-1] in str(refused.value) and "/metrics" in str(refused.value)
    # loopback, or allow_anonymous set explicitly: /metrics is served to anyone
    for listen, allow in ((["127.0.0.1:8080", "[::1]:8080"], False), (["0.0.0.0:8080"], True)):
        sections = secured_sections(tmp_path, metrics_token=None, allow_anonymous=allow)
        app = create_app(make_settings(workdir, **sections), start_polling=False, listen=listen)
        assert app.test_client().get("/metrics").status_code == 200
        app.extensions["fraudflow"].holder.stop()
    # with a metrics token, an exposed address serves /metrics to that token only
    app = create_app(
        make_settings(workdir, **secured_sections(tmp_path)),
        start_polling=False,
        listen=["0.0.0.0:8080"],
    )
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer(SCORER)).status_code == 401
    assert client.get("/metrics", headers=bearer(METRICS)).status_code == 200
    app.extensions["fraudflow"].holder.stop()


def test_loopback_is_told_from_exposed_addresses() -> None:
    local = ["127.0.0.1:8080", "127.0.0.2", "[::1]:80", "::1", "localhost:8080", "unix:/run/a"]
    exposed = ["0.0.0.0:8080", ":8080", "[::]:80", "10.0.0.5:80", "api.example:80", "fd://3"]
    assert all(is_loopback(a) for a in local)
    assert not any(is_loopback(a) for a in exposed)


def test_openapi_states_each_routes_scope(secured, workdir, tmp_path) -> None:
    document = secured.get("/openapi.json").json
    paths = document["paths"]
    assert paths["/predict"]["post"]["security"] == [{"bearer": ["score"]}]
    assert paths["/invocations"]["post"]["security"] == [{"bearer": ["score"]}]
    assert paths["/feedback"]["post"]["security"] == [{"bearer": ["label"]}]
    assert paths["/metrics"]["get"]["security"] == [{"metricsBearer": []}]
    assert "security" not in paths["/health"]["get"]
    assert {"bearer", "metricsBearer"} <= set(document["components"]["securitySchemes"])
    assert "403" in paths["/feedback"]["post"]["responses"]
    anonymous = make_settings(workdir)
    app = create_app(private_serving(anonymous, tmp_path), start_polling=False)
    open_paths = app.test_client().get("/openapi.json").json["paths"]
    assert open_paths["/predict"]["post"]["security"] == []
    app.extensions["fraudflow"].holder.stop()


def test_error_bodies_hold_no_token_and_no_registry_address(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    registry = "http://fraud-admin:hunter2@127.0.0.1:9"  # nothing listens on port 9
    settings = make_settings(
        tmp_path / "work", mlflow={"tracking_uri": registry}, **secured_sections(tmp_path)
    )
    app = create_app(settings, start_polling=False)
    client = app.test_client()
    answers = [
        client.post("/predict", json=CARD, headers=bearer(SCORER)),
        client.post("/predict", json=CARD, headers=bearer(LABELLER)),
        client.post("/predict", json=CARD, headers=bearer(SCORER[:-1])),
        client.post("/feedback", json=LABEL, headers=bearer(SCORER)),
        client.get("/metrics", headers=bearer(SCORER)),
        client.get("/health"),
        client.get("/ready"),
        client.get("/model"),
    ]
    assert [a.status_code for a in answers] == [503, 403, 401, 403, 401, 200, 503, 503]
    for answer in answers:
        text = answer.get_data(as_text=True)
        for secret in (SCORER, LABELLER, METRICS, SCORER[:-1], "hunter2", "fraud-admin"):
            assert secret not in text, (answer.request.path, text)
        assert "127.0.0.1" not in text
    app.extensions["fraudflow"].holder.stop()
    # the detail is in the server log, without the URL's credentials
    logged = [r.getMessage() for r in caplog.records if r.name == "serving.model_holder"]
    assert any("registry unreachable" in line for line in logged), logged
    assert not any("hunter2" in line for line in logged), logged


def test_the_logged_registry_error_loses_the_credentials_of_any_url() -> None:
    text = (
        "MlflowException: API request to http://fraud-admin:hunter2@mlflow:5000/api failed; "
        "backend postgresql+psycopg2://mlflow:s3cret@db:5432/mlflow"
    )
    redacted = redact(text)
    assert "hunter2" not in redacted and "s3cret" not in redacted and "fraud-admin" not in redacted
    assert "http://***@mlflow:5000/api" in redacted and "@db:5432/mlflow" in redacted


class _Lines(logging.Handler):
    """The access log's records, formatted by the access log's own JSON formatter."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(json_formatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_access_log_is_one_json_line_per_request_without_card_data(secured) -> None:
    lines = _Lines()
    logging.getLogger(LOGGER).addHandler(lines)
    try:
        secured.post("/predict?card=4111111111111111", json=CARD, headers=bearer(SCORER))
        secured.post(
            "/feedback", json=LABEL, headers={**bearer(LABELLER), "X-Request-ID": "req-42"}
        )
        secured.post("/feedback", json=LABEL, headers=bearer(SCORER))
        secured.post("/predict", json=CARD)
        secured.get("/health", headers={"X-Request-ID": "bad id; with spaces"})
    finally:
        logging.getLogger(LOGGER).removeHandler(lines)
    records = [json.loads(line) for line in lines.lines]
    seen = [(r["who"], r["method"], r["route"], r["status"]) for r in records]
    assert seen == [
        ("checkout", "POST", "/predict", 503),
        ("chargebacks", "POST", "/feedback", 200),
        ("checkout", "POST", "/feedback", 403),
        ("anonymous", "POST", "/predict", 401),
        ("anonymous", "GET", "/health", 200),
    ]
    assert [r["request_id"] for r in records] == [None, "req-42", None, None, None]
    assert all(r["latency_ms"] >= 0 and r["levelname"] == "INFO" for r in records)
    assert all(r["name"] == LOGGER and r["timestamp"] for r in records)
    text = "\n".join(lines.lines)
    for value in ("4111111111111111", "tx-4929", "term-777", "987.65", SCORER, LABELLER):
        assert value not in text, value


def test_access_log_off_logs_nothing(workdir, tmp_path) -> None:
    sections = secured_sections(tmp_path, access_log="off")
    app = create_app(make_settings(workdir, **sections), start_polling=False)
    lines = _Lines()
    logging.getLogger(LOGGER).addHandler(lines)
    try:
        app.test_client().get("/health")
    finally:
        logging.getLogger(LOGGER).removeHandler(lines)
    assert lines.lines == []
    app.extensions["fraudflow"].holder.stop()


@pytest.mark.integration
def test_gunicorn_refuses_to_start_on_an_exposed_address_without_tokens(tmp_path) -> None:
    settings = make_settings(tmp_path / "work", **secured_sections(tmp_path, tokens=[]))
    config = write_config(tmp_path / "serve.yaml", settings)
    port = free_port()
    done = subprocess.run(
        [str(BIN / "fraudflow"), "serve", "--config", str(config), "--bind", f"0.0.0.0:{port}"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0, done.stdout + done.stderr
    assert "refusing to serve the API without tokens on 0.0.0.0" in done.stderr, done.stderr
    assert "Booting worker" not in done.stderr and "Listening at" not in done.stderr
    # the same server with allow_anonymous explicitly set starts and serves anyone
    allowed = make_settings(
        tmp_path / "work", **secured_sections(tmp_path, tokens=[], allow_anonymous=True)
    )
    config = write_config(tmp_path / "allowed.yaml", allowed)
    log = tmp_path / "allowed.log"
    with gunicorn_api(
        config, log, version=None, workers=1, host="0.0.0.0", metrics_headers=bearer(METRICS)
    ) as url:
        assert requests.post(f"{url}/feedback", json=LABEL, timeout=30).status_code == 200


@pytest.mark.integration
def test_gunicorn_refuses_an_exposed_address_without_a_metrics_token(tmp_path) -> None:
    hashed = [{"name": "checkout", "scopes": ["score"], "sha256": sha256(SCORER)}]
    sections = secured_sections(tmp_path, tokens=hashed, metrics_token=None)
    config = write_config(tmp_path / "serve.yaml", make_settings(tmp_path / "work", **sections))
    done = subprocess.run(
        [str(BIN / "fraudflow"), "serve", "--config", str(config)]
        + ["--bind", f"0.0.0.0:{free_port()}"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0, done.stdout + done.stderr
    assert "refusing to serve /metrics without serving.metrics_token on 0.0.0.0" in done.stderr
    assert "Booting worker" not in done.stderr and "Listening at" not in done.stderr


@pytest.mark.integration
def test_gunicorn_enforces_scopes_and_writes_json_access_lines(tmp_path) -> None:
    """Tokens from a file with hashed secrets, as a mounted Kubernetes or Compose secret hands
    them in; two workers, each checking them."""
    secret = tmp_path / "api-tokens.yaml"
    secret.write_text(
        yaml.safe_dump(
            [
                {"name": "checkout", "scopes": ["score"], "sha256": sha256(SCORER)},
                {"name": "chargebacks", "scopes": ["label"], "sha256": sha256(LABELLER)},
            ]
        )
    )
    sections = secured_sections(tmp_path, tokens=[], tokens_file=str(secret))
    config = write_config(tmp_path / "serve.yaml", make_settings(tmp_path / "work", **sections))
    log = tmp_path / "gunicorn.log"
    with gunicorn_api(config, log, version=None, metrics_headers=bearer(METRICS)) as url:
        with requests.Session() as session:
            for _ in range(4):  # whichever worker answers
                assert session.post(f"{url}/feedback", json=LABEL).status_code == 401
                answer = session.post(f"{url}/feedback", json=LABEL, headers=bearer(SCORER))
                assert answer.status_code == 403
                answer = session.post(f"{url}/feedback", json=LABEL, headers=bearer(LABELLER))
                assert answer.status_code == 200
                answer = session.post(f"{url}/predict", json=CARD, headers=bearer(LABELLER))
                assert answer.status_code == 403
                answer = session.post(f"{url}/predict", json=CARD, headers=bearer(SCORER))
                assert answer.status_code == 503  # authorised; no model promoted yet
            assert session.get(f"{url}/metrics").status_code == 401
    text = log.read_text()
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    feedback = [r for r in records if r.get("route") == "/feedback"]
    assert [(r["who"], r["status"]) for r in feedback[:3]] == [
        ("anonymous", 401),
        ("checkout", 403),
        ("chargebacks", 200),
    ]
    assert len(feedback) == 12 and len([r for r in records if r.get("route") == "/predict"]) == 8
    for value in ("4111111111111111", "tx-4929", "987.65", SCORER, LABELLER, METRICS):
        assert value not in text, value
