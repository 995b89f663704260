"""The model cache: the last served model on the replica's own disk, served by a replica that
starts while the registry is unreachable, and refused when it is damaged."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pandas as pd
import pytest

from pipelines.files import sha256_file
from pipelines.mlflow.promotion import set_stage
from pipelines.settings import Settings
from pipelines.training.record import log_training_run
from pipelines.training.train import train_model
from serving.app import create_app
from serving.model_cache import MANIFEST, POINTER, PROBED, ModelCache
from tests.support.processes import free_port
from tests.support.settings import make_settings, private_serving
from tests.support.traffic import ONE_TRANSACTION

TX = ONE_TRANSACTION


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, small_transactions: pd.DataFrame):
    """An embedded store with three registered versions of one trained model."""
    settings = make_settings(tmp_path_factory.mktemp("cached") / "work")
    result = train_model(small_transactions, settings)
    versions = [
        str(log_training_run(result, settings, {"data_path": "test"})[1].version) for _ in range(3)
    ]
    return settings, versions


def serve(settings: Settings, version: str) -> None:
    set_stage(settings, version, "Production", "serve it")


def unreachable(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The same settings with a tracking URI nothing listens on (failing fast)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    mlflow = settings.mlflow.model_copy(update={"tracking_uri": f"http://127.0.0.1:{free_port()}"})
    return settings.model_copy(update={"mlflow": mlflow})


def app_on(settings: Settings, folder: Path, cache: Path):
    app = create_app(private_serving(settings, folder, model_cache_dir=str(cache)), False)
    return app, app.extensions["fraudflow"].holder


def fill_cache(store, tmp_path: Path) -> tuple[Path, dict]:
    """Serve v1 from the registry once: returns the cache folder and v1's answer to TX."""
    settings, versions = store
    serve(settings, versions[0])
    cache = tmp_path / "cache"
    app, holder = app_on(settings, tmp_path / "online", cache)
    assert holder.model.source == "registry"
    answer = app.test_client().post("/predict", json=TX).json
    assert ModelCache(cache).entries() == [f"v{versions[0]}"]
    return cache, answer


def test_a_replica_without_its_registry_serves_the_cached_model(
    store, tmp_path, monkeypatch
) -> None:
    settings, versions = store
    cache, answer = fill_cache(store, tmp_path)
    app, holder = app_on(unreachable(settings, monkeypatch), tmp_path / "offline", cache)
    client = app.test_client()
    health = client.get("/health").json
    assert health["registry"] == "unreachable"
    assert health["model_source"] == "cache" and health["model_version"] == versions[0]
    assert client.get("/ready").status_code == 200
    model = client.get("/model").json
    assert model["model_source"] == "cache" and model["registry"] == "unreachable"
    response = client.post("/predict", json=TX)
    assert response.status_code == 200, response.json
    # the same model: the same transaction on a fresh state gets the same answer
    assert response.json == answer
    text = client.get("/metrics").get_data(as_text=True)
    assert f'fraudflow_model_version{{model_role="champion"}} {float(versions[0])}' in text
    assert "fraudflow_registry_up 0.0" in text


def _bump_first_leaf(path: Path) -> None:
    """Change one leaf value: still a valid LightGBM model, but not the one that was cached."""
    text = path.read_text()
    match = re.search(r"leaf_value=-?(\d)", text)
    digit = str((int(match.group(1)) + 1) % 10)
    path.write_text(text[: match.start(1)] + digit + text[match.end(1) :])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _not_a_model_with_matching_hash(entry: Path) -> None:
    """A booster that is not a model, with a manifest that vouches for it: the hash passes,
    the same check as a registry load (FraudScorer.load) refuses it."""
    (entry / "booster.txt").write_text("print('hello')\n")
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["sha256"]["booster.txt"] = sha256_file(entry / "booster.txt")
    (entry / MANIFEST).write_text(json.dumps(manifest))


DAMAGES = {
    "altered booster": lambda cache, entry: _bump_first_leaf(entry / "booster.txt"),
    "half-written booster": lambda cache, entry: _truncate(entry / "booster.txt"),
    "meta not JSON": lambda cache, entry: (entry / "meta.json").write_text("{"),
    "no manifest": lambda cache, entry: (entry / MANIFEST).unlink(),
    "pointer outside the cache": lambda cache, entry: (cache / POINTER).write_text(
        json.dumps({"entry": "../elsewhere"})
    ),
    "not a model, hash rewritten": lambda cache, entry: _not_a_model_with_matching_hash(entry),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_cache_is_refused_and_nothing_is_served(
    store, tmp_path, monkeypatch, caplog, damage
) -> None:
    settings, versions = store
    cache, _ = fill_cache(store, tmp_path)
    DAMAGES[damage](cache, cache / f"v{versions[0]}")
    caplog.set_level(logging.ERROR, logger="serving.model_holder")
    app, holder = app_on(unreachable(settings, monkeypatch), tmp_path / "offline", cache)
    client = app.test_client()
    assert holder.model is None
    assert [
        r.message
        for r in caplog.records
        if "model cache at" in r.message and "ignored" in r.message
    ]
    response = client.post("/predict", json=TX)
    assert response.status_code == 503
    assert "no usable cached model" in response.json["error"]
    assert client.get("/ready").status_code == 503
    health = client.get("/health").json
    assert health["model_source"] is None and health["registry"] == "unreachable"


def test_the_cache_follows_swaps_and_keeps_two_versions(store, tmp_path, monkeypatch) -> None:
    settings, versions = store
    serve(settings, versions[0])
    cache = tmp_path / "cache"
    _, holder = app_on(settings, tmp_path / "online", cache)
    for version in versions[1:]:
        serve(settings, version)
        assert holder.refresh() and holder.model.version == version
    assert ModelCache(cache).entries() == [f"v{v}" for v in versions[1:]]
    assert not [p for p in cache.iterdir() if p.name.startswith(".") and p.name != PROBED]
    _, offline = app_on(unreachable(settings, monkeypatch), tmp_path / "offline", cache)
    assert offline.model.source == "cache" and offline.model.version == versions[-1]


def test_a_cache_that_cannot_be_written_never_stops_serving(store, tmp_path, caplog) -> None:
    settings, versions = store
    serve(settings, versions[0])
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    caplog.set_level(logging.WARNING, logger="serving.model_holder")
    app, holder = app_on(settings, tmp_path / "online", blocked)
    assert holder.model.version == versions[0] and holder.model.source == "registry"
    assert app.test_client().post("/predict", json=TX).status_code == 200
    assert any("could not cache" in r.message for r in caplog.records)
