"""Training records the SHA-256 of the model files; every loader verifies them before parsing,
and checks the listed sizes before downloading. Versions logged before the hashes load."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import pytest

from pipelines.mlflow import models, store
from pipelines.model import (
    BOOSTER_FILE,
    BOOSTER_SHA256_TAG,
    META_FILE,
    META_SHA256_TAG,
    ModelArtifactError,
    file_hashes,
)
from serving.app import create_app
from tests.support.models import train_and_register
from tests.support.settings import make_settings, private_serving

NAME = "fraud-detector"


@pytest.fixture(scope="module")
def registered(tmp_path_factory, small_transactions):
    settings = make_settings(tmp_path_factory.mktemp("hashes") / "work")
    version, _ = train_and_register(small_transactions, settings, production="serve it")
    return settings, version


def stored_file(settings, name: str) -> Path:
    """The model file as the local artifact store holds it (one model in this store)."""
    [path] = [p for p in settings.artifact_root.rglob(name) if "artifacts" in p.parts]
    return path


def test_training_tags_the_version_with_the_files_hashes(registered, tmp_path) -> None:
    settings, version = registered
    store.use_store(settings)
    folder = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{NAME}/{version}/artifacts", dst_path=str(tmp_path)
        )
    )
    hashes = file_hashes(folder / BOOSTER_FILE, folder / META_FILE)
    tags = store.client(settings).get_model_version(NAME, version).tags
    assert tags[BOOSTER_SHA256_TAG] == hashes[BOOSTER_FILE]
    assert tags[META_SHA256_TAG] == hashes[META_FILE]
    assert json.loads((folder / META_FILE).read_text())[BOOSTER_SHA256_TAG] == hashes[BOOSTER_FILE]


def test_sizes_are_checked_in_the_listing_before_the_download(registered) -> None:
    settings, version = registered
    small = make_settings(settings.workdir, model={"max_booster_bytes": 1000})
    with pytest.raises(ModelArtifactError, match="booster.txt is listed at .* bytes, over 1,000"):
        models.load_scorer(small, f"models:/{NAME}/{version}")


def test_an_altered_stored_file_is_refused_even_when_it_would_parse(registered, tmp_path) -> None:
    """The file in the artifact store changed after it was logged: the loaders refuse it (the
    API keeps serving nothing rather than another model), whatever its contents."""
    settings, version = registered
    uri = f"models:/{NAME}/{version}"
    booster = stored_file(settings, BOOSTER_FILE)
    original = booster.read_bytes()
    try:
        # one value changed: still a well-formed booster, but not the one that was logged
        booster.write_bytes(original.replace(b"shrinkage=0.1\n", b"shrinkage=0.2\n", 1))
        with pytest.raises(ModelArtifactError, match="booster.txt has SHA-256"):
            models.load_scorer(settings, uri)
        app = create_app(private_serving(settings, tmp_path), start_polling=False)
        holder = app.extensions["fraudflow"].holder
        assert holder.model is None and holder.status.failed_version == version
        assert "SHA-256" in holder.status.load_error
    finally:
        booster.write_bytes(original)
    assert models.load_scorer(settings, uri).features


def test_a_version_logged_before_the_hashes_still_loads(registered, tmp_path, caplog) -> None:
    settings, version = registered
    client = store.client(settings)
    tags = client.get_model_version(NAME, version).tags
    meta = stored_file(settings, META_FILE)
    original = meta.read_bytes()
    try:
        for tag in (BOOSTER_SHA256_TAG, META_SHA256_TAG):
            client.delete_model_version_tag(NAME, version, tag)
        payload = json.loads(original)
        del payload[BOOSTER_SHA256_TAG]
        meta.write_text(json.dumps(payload))
        caplog.set_level(logging.WARNING, logger="pipelines.mlflow.models")
        for _ in range(2):
            assert models.load_scorer(settings, f"models:/{NAME}/Production").features
        warned = [r for r in caplog.records if "carries no booster_sha256" in r.message]
        assert len(warned) == 1  # said once per process
        app = create_app(private_serving(settings, tmp_path), start_polling=False)
        assert app.extensions["fraudflow"].holder.model.version == version
    finally:
        meta.write_bytes(original)
        for tag in (BOOSTER_SHA256_TAG, META_SHA256_TAG):
            client.set_model_version_tag(NAME, version, tag, tags[tag])
