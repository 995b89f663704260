"""The registered model is data to fraudflow: the booster and its metadata, checked before use.

No code from the registry runs in the API: a pickle registered and promoted by whoever reaches
the tracking server never executes there. The pyfunc logged beside the data is code from this
repo's file (models-from-code), so MLflow's own tools load it where fraudflow is not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
import pytest

from pipelines import model as model_files
from pipelines.booster_check import BoosterLimits
from pipelines.mlflow import store
from pipelines.mlflow.promotion import set_stage
from pipelines.model import FraudScorer, ModelArtifactError
from serving.app import create_app
from tests.support.models import train_and_register
from tests.support.settings import make_settings, private_serving

NAME = "fraud-detector"


class Trap(mlflow.pyfunc.PythonModel):
    """A model whose unpickling writes a marker file: proof that something ran it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))

    def predict(self, context, model_input, params=None):
        return np.zeros(len(model_input))


def register_good(root: Path, transactions: pd.DataFrame):
    """A store with a good v1 in Production, and the result that trained it."""
    settings = make_settings(root / "work")
    _, result = train_and_register(transactions, settings, production="serve it")
    return settings, result


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory, small_transactions: pd.DataFrame):
    """Shared read-only: no test of this module changes this store."""
    return register_good(tmp_path_factory.mktemp("artifact"), small_transactions)


def register_trap(settings, marker: Path, data_from: str | None = None) -> str:
    """Register a cloudpickled trap (with the booster and metadata of `data_from`, if given)."""
    store.use_store(settings)
    artifacts = {}
    if data_from is not None:
        folder = Path(tempfile.mkdtemp())
        for name, key in ((model_files.BOOSTER_FILE, "booster"), (model_files.META_FILE, "meta")):
            artifacts[key] = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{NAME}/{data_from}/artifacts/{name}", dst_path=str(folder)
            )
    experiment = store.client(settings).get_experiment_by_name(settings.mlflow.experiment)
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=Trap(marker),
            artifacts=artifacts or None,
            registered_model_name=NAME,
            pip_requirements=["mlflow"],  # inferring them would load (unpickle) the model
        )
    return str(info.registered_model_version)


def test_a_promoted_pickle_never_runs_in_the_api(small_transactions, tmp_path: Path) -> None:
    settings, _ = register_good(tmp_path, small_transactions)
    settings = private_serving(settings, tmp_path)
    app = create_app(settings, start_polling=False)
    holder = app.extensions["fraudflow"].holder
    good = holder.model.version
    marker = tmp_path / "pwned"

    # a pickle with no booster: refused, counted, and the last model keeps serving
    bare = register_trap(settings, marker)
    assert not marker.exists()  # registering it ran nothing either
    set_stage(settings, bare, "Production", "attacker")
    assert not holder.refresh()
    assert holder.model.version == good and holder.status.reload_failures == 1
    assert f"loading v{bare} failed" in holder.status.last_error
    assert app.test_client().post("/predict", json=TX).status_code == 200
    # the failure is reported beside the model still served; the replica stays healthy
    info = app.test_client().get("/model").json
    assert info["version"] == good and info["failed_version"] == bare and info["load_error"]
    assert app.test_client().get("/health").status_code == 200
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert "fraudflow_model_reload_failures_total 1.0" in metrics

    # a pickle carrying a real booster: served from the data alone, its code never runs
    dressed = register_trap(settings, marker, data_from=good)
    set_stage(settings, dressed, "Production", "attacker")
    assert holder.refresh() and holder.model.version == dressed
    assert app.test_client().post("/predict", json={**TX, "transaction_id": "2"}).status_code == 200
    assert not marker.exists()
    assert app.test_client().get("/model").json["failed_version"] is None

    # the trap is armed: MLflow's pyfunc loader (which fraudflow never calls) runs it; what it
    # unpickles is exec's None, so MLflow may then fail to use it: only the marker matters here
    try:
        mlflow.pyfunc.load_model(f"models:/{NAME}/{bare}")
    except Exception:  # noqa: BLE001
        pass
    assert marker.read_text() == "ran"
    holder.stop()


TX = {
    "transaction_id": "1",
    "tx_datetime": "2018-06-21T12:00:00",
    "customer_id": "7",
    "terminal_id": "9",
    "tx_amount": 42.0,
}


def test_the_logged_model_loads_where_fraudflow_cannot_be_imported(registered, tmp_path) -> None:
    """`mlflow.pyfunc.load_model` in a process that cannot import any fraudflow package gives
    the probabilities fraudflow computes; no pickle is logged."""
    settings, result = registered
    features = result.test.features.head(50)
    features.to_pickle(tmp_path / "features.pkl")
    # The process ends with os._exit once its answer is out: a clean-clone CI run once saw it
    # abort in native teardown after printing ("terminate called without an active
    # exception"), which is interpreter shutdown in a third-party library, not the load under
    # test. The frame travels as a pickle, so no Arrow thread pool starts in that process.
    script = f"""
import json, os, sys
for name in ("pipelines", "serving", "drift", "fraudflow"):
    sys.modules[name] = None  # importing any of them now fails
import mlflow, pandas as pd
mlflow.set_tracking_uri({settings.tracking_uri!r})
model = mlflow.pyfunc.load_model("models:/{NAME}/1")
frame = pd.read_pickle({str(tmp_path / "features.pkl")!r})
print(json.dumps(model.predict(frame).tolist()), flush=True)
sys.stderr.flush()
os._exit(0)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    probabilities = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(probabilities, result.scorer.predict_proba(features), rtol=1e-12)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1"))
    assert not list(local.rglob("*.pkl")) and (local / "pyfunc_model.py").is_file()


def test_the_model_files_are_checked_before_use(registered, tmp_path: Path) -> None:
    settings, result = registered
    good = result.scorer.save(tmp_path / "good")
    booster, meta = Path(good["booster"]), Path(good["meta"])
    assert FraudScorer.load(booster, meta).features == result.scorer.features

    def refused(
        booster_text: str | None, meta_payload: object, phrase: str, limits=BoosterLimits()
    ) -> None:
        folder = Path(tempfile.mkdtemp(dir=tmp_path))
        b, m = folder / "booster.txt", folder / "meta.json"
        b.write_text(booster.read_text() if booster_text is None else booster_text)
        m.write_text(meta_payload if isinstance(meta_payload, str) else json.dumps(meta_payload))
        with pytest.raises(ModelArtifactError, match=phrase):
            FraudScorer.load(b, m, limits)

    valid = json.loads(meta.read_text())
    refused(None, "{not json", "not JSON")
    refused(None, ["a list"], "JSON object")
    refused(None, {**valid, "features": "tx_amount"}, "features")
    refused(None, {**valid, "features": [*valid["features"], "tx_amount"]}, "features")
    refused(None, {**valid, "threshold": "0.5"}, "threshold")
    refused(None, {**valid, "threshold": 1.5}, "threshold")
    refused(None, {**valid, "features": list(reversed(valid["features"]))}, "booster's features")
    # a model trained before meta.json recorded the booster's SHA-256 is still checked
    unhashed = {k: v for k, v in valid.items() if k != model_files.BOOSTER_SHA256_TAG}
    refused("\x80\x04\x95 a pickle, not a model", unhashed, "not a LightGBM text model")
    refused("tree\nversion=v4\nnonsense", unhashed, "refused: no tree")
    refused(None, valid, "bytes, over", BoosterLimits(max_bytes=100))
    refused(None, valid, "over the limit of 3", BoosterLimits(max_trees=3))
    refused(None, valid, "num_leaves=15, not within 1..4", BoosterLimits(max_leaves=4))
    # the SHA-256 meta.json records for the booster, and those of the version's tags
    cut = booster.read_text().replace("end of trees", "end of trees\n")
    refused(cut, valid, "not the [0-9a-f]+… meta.json records")
    hashes = model_files.file_hashes(booster, meta)
    assert FraudScorer.load(booster, meta, expected_sha256=hashes).threshold == valid["threshold"]
    for name in hashes:
        with pytest.raises(ModelArtifactError, match=f"{name} has SHA-256 .* the model version"):
            FraudScorer.load(booster, meta, expected_sha256={**hashes, name: "0" * 64})
    assert isinstance(FraudScorer.load(booster, meta).booster, lgb.Booster)
