"""Signed model versions (integrity.model_key): `fraudflow promote` signs the version's booster
and meta; an API holding the key refuses a version that is unsigned or whose files changed
after signing, from the registry and from its cache alike, and the previous model keeps
serving; without a key nothing changes."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pytest

from pipelines.integrity import MODEL_SIGNATURE_TAG, KeyUnavailable, sign_model
from pipelines.mlflow import models, store
from pipelines.mlflow.promotion import set_stage
from pipelines.model import ARTIFACTS_FOLDER, BOOSTER_FILE
from pipelines.settings import Settings
from pipelines.training.record import log_training_run
from pipelines.training.train import train_model
from serving.app import create_app
from serving.model_cache import MANIFEST, ModelCache
from tests.support import REPO as ROOT
from tests.support.processes import clean_env, free_port
from tests.support.settings import make_settings, private_serving, write_config
from tests.support.traffic import ONE_TRANSACTION

NAME = "fraud-detector"
KEY = secrets.token_hex(32).encode()
TX = ONE_TRANSACTION


def with_key(settings: Settings, key_file: Path | None) -> Settings:
    integrity = settings.integrity.model_copy(
        update={"model_key": None if key_file is None else {"file": str(key_file)}}
    )
    return Settings.model_validate({**settings.model_dump(), "integrity": integrity.model_dump()})


@pytest.fixture(scope="module")
def store_and_key(tmp_path_factory: pytest.TempPathFactory, small_transactions: pd.DataFrame):
    """An embedded store with four versions of one trained model, none promoted, and a key
    file: settings without the key, settings with it."""
    root = tmp_path_factory.mktemp("signed")
    key_file = root / "model-key"
    key_file.write_bytes(KEY + b"\n")
    plain = make_settings(root / "work")
    result = train_model(small_transactions, plain)
    versions = [
        str(log_training_run(result, plain, {"data_path": "test"})[1].version) for _ in range(4)
    ]
    return plain, with_key(plain, key_file), versions


def signature_of(settings: Settings, version: str) -> str | None:
    return store.client(settings).get_model_version(NAME, version).tags.get(MODEL_SIGNATURE_TAG)


def expected_signature(settings: Settings, version: str) -> str:
    with tempfile.TemporaryDirectory() as folder:
        booster, meta = models.download_model_files(
            settings, f"models:/{NAME}/{version}", Path(folder)
        )
        return sign_model(KEY, NAME, version, booster, meta)


def promote_by_hand(settings: Settings, version: str) -> None:
    """Production as any registry writer can set it (the MLflow UI, a script): not signed."""
    client = store.client(settings)
    client.transition_model_version_stage(NAME, version, "Production", True)
    client.set_registered_model_alias(NAME, "champion", version)


def stored_booster(settings: Settings, version: str) -> Path:
    """The version's booster file in the local artifact store."""
    location = store.client(settings).get_model_version_download_uri(NAME, version)
    return Path(urlparse(location).path) / ARTIFACTS_FOLDER / BOOSTER_FILE


def app_on(settings: Settings, folder: Path, cache: Path | None = None):
    """An app with its own state and log under `folder`, and the model cache `cache`
    (default: folder/cache)."""
    cache = cache or folder / "cache"
    app = create_app(private_serving(settings, folder, model_cache_dir=str(cache)), False)
    return app, app.extensions["fraudflow"].holder


def test_fraudflow_promote_with_a_key_signs_the_version(store_and_key, tmp_path) -> None:
    plain, keyed, versions = store_and_key
    config = write_config(tmp_path / "keyed.yaml", keyed)
    done = subprocess.run(
        [sys.executable, "-m", "fraudflow.cli", "promote", "--config", str(config)]
        + ["--version", versions[0], "--stage", "Production", "--reason", "signed"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert signature_of(plain, versions[0]) == expected_signature(plain, versions[0])
    assert signature_of(plain, versions[0]).startswith("hmac-sha256:")


def test_a_keyed_api_refuses_unsigned_and_altered_versions_and_keeps_serving(
    store_and_key, tmp_path
) -> None:
    plain, keyed, versions = store_and_key
    first, unsigned, altered = versions[0], versions[1], versions[2]
    set_stage(keyed, first, "Production", "signed champion")
    app, holder = app_on(keyed, tmp_path / "api")
    client = app.test_client()
    assert holder.model.version == first
    answer = client.post("/predict", json=TX).json

    promote_by_hand(plain, unsigned)
    assert holder.refresh() is False
    model = client.get("/model").json
    assert model["version"] == first and model["failed_version"] == unsigned
    assert f"v{unsigned} is unsigned (no {MODEL_SIGNATURE_TAG} tag)" in model["load_error"]
    assert client.post("/predict", json=TX).json["model"]["version"] == first

    set_stage(keyed, altered, "Production", "signed, then altered")
    assert signature_of(plain, altered) == expected_signature(plain, altered)
    booster = stored_booster(plain, altered)
    text = booster.read_text()
    match = re.search(r"leaf_value=-?(\d)", text)  # still a valid model, not the signed one
    booster.write_text(
        text[: match.start(1)] + str((int(match.group(1)) + 1) % 10) + text[match.end(1) :]
    )
    assert holder.refresh() is False
    model = client.get("/model").json
    assert model["version"] == first and model["failed_version"] == altered
    assert "does not match its signature" in model["load_error"]
    response = client.post("/predict", json={**TX, "transaction_id": "t2"})
    assert response.status_code == 200 and response.json["model"]["version"] == first
    assert holder.status.reload_failures == 2
    assert answer["model"]["version"] == first


def test_without_a_key_an_unsigned_version_is_served_as_before(store_and_key, tmp_path) -> None:
    plain, _, versions = store_and_key
    promote_by_hand(plain, versions[3])
    assert signature_of(plain, versions[3]) is None
    _, holder = app_on(plain, tmp_path / "api")
    assert holder.model.version == versions[3] and holder.status.failed_version is None


def unreachable(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    mlflow = settings.mlflow.model_copy(update={"tracking_uri": f"http://127.0.0.1:{free_port()}"})
    return settings.model_copy(update={"mlflow": mlflow})


def test_the_cache_of_a_keyed_api_serves_only_signed_entries(
    store_and_key, tmp_path, monkeypatch
) -> None:
    plain, keyed, versions = store_and_key
    # a cache written while a signed version was served carries its signature
    set_stage(keyed, versions[0], "Production", "signed champion")
    app_on(keyed, tmp_path / "signed")
    cache = tmp_path / "signed" / "cache"
    manifest = json.loads((cache / f"v{versions[0]}" / MANIFEST).read_text())
    assert manifest["signature"] == signature_of(plain, versions[0])
    _, holder = app_on(unreachable(keyed, monkeypatch), tmp_path / "offline-1", cache)
    assert holder.model.source == "cache" and holder.model.version == versions[0]

    # a cache written by a keyless replica (no signature) is not served by a keyed one
    promote_by_hand(plain, versions[3])
    _, keyless = app_on(plain, tmp_path / "plain")
    assert keyless.model.version == versions[3]
    assert ModelCache(tmp_path / "plain" / "cache").entries() == [f"v{versions[3]}"]
    offline = unreachable(keyed, monkeypatch)
    _, holder = app_on(offline, tmp_path / "offline-2", tmp_path / "plain" / "cache")
    assert holder.model is None


def test_a_configured_model_key_that_cannot_be_read_stops_the_api(store_and_key, tmp_path):
    plain, _, _ = store_and_key
    with pytest.raises(KeyUnavailable, match="integrity.model_key file .* cannot be read"):
        app_on(with_key(plain, tmp_path / "missing"), tmp_path / "api")
