"""Training, registration and promotion against a real MLflow store in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from fraudflow.cli import main
from pipelines.features import build_features, feature_names
from pipelines.mlflow import models
from pipelines.mlflow import store as mlflow_store
from pipelines.mlflow.models import REFERENCE_ARTIFACT
from pipelines.mlflow.promotion import promote_if_better, promotion_history, set_stage
from pipelines.mlflow.runs import TRAINING_CONFIG_ARTIFACT
from pipelines.settings import SettingsError, check_lightgbm_parameters
from pipelines.training.record import log_training_run
from pipelines.training.retrain import champion_configuration
from pipelines.training.train import train_model
from tests.support.settings import make_settings, write_config

NAME = "fraud-detector"


def train_and_log(transactions: pd.DataFrame, settings) -> tuple[str, str]:
    run_id, version, _ = train_log_result(transactions, settings)
    return run_id, version


def train_log_result(transactions: pd.DataFrame, settings):
    result = train_model(transactions, settings)
    run_id, version = log_training_run(result, settings, {"data_path": "test"})
    return run_id, str(version.version), result


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, small_transactions: pd.DataFrame):
    """One store with a good v1; a test that changes it (promotes, trains more) leaves v1 as
    the others read it (its run, tags and files), so the tests run in any order."""
    settings = make_settings(tmp_path_factory.mktemp("store"))
    run_id, version, result = train_log_result(small_transactions, settings)
    return settings, run_id, version, result


def test_training_run_logs_metrics_params_plots_and_the_model(store) -> None:
    settings, run_id, version, _ = store
    client = mlflow_store.client(settings)
    run = client.get_run(run_id)
    for metric in (
        "roc_auc",
        "average_precision",
        "card_precision_at_100",
        "precision",
        "recall",
        "f1",
    ):
        assert 0.0 <= run.data.metrics[f"test_{metric}"] <= 1.0, metric
    assert run.data.metrics["test_roc_auc"] > 0.75
    assert run.data.metrics["rows_train"] > 1000 and run.data.metrics["frauds_train"] > 10
    for param in (
        "train_start",
        "train_end",
        "validation_start",
        "test_start",
        "test_end",
        "lgbm_learning_rate",
    ):
        assert param in run.data.params
    artifacts = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert artifacts == {
        f"plots/{n}.png"
        for n in ("precision_recall_curve", "roc_curve", "feature_importance", "confusion_matrix")
    }
    local = Path(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=REFERENCE_ARTIFACT)
    )
    reference = pd.read_parquet(local)
    assert list(reference.columns) == [
        *feature_names(settings.features),
        "fraud_probability",
        "tx_fraud",
    ]
    assert artifacts and version == "1"


def test_registered_version_carries_threshold_window_and_metrics(store) -> None:
    settings, run_id, version, _ = store
    mv = mlflow_store.client(settings).get_model_version(NAME, version)
    assert mv.run_id == run_id
    assert 0.0 < float(mv.tags["threshold"]) < 1.0
    assert mv.tags["train_start"] < mv.tags["test_start"]
    assert float(mv.tags["test_average_precision"]) > 0


def test_pyfunc_returns_probabilities_with_a_signature(store, small_transactions) -> None:
    settings, _, version, result = store
    mlflow_store.use_store(settings)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}")
    assert type(model.unwrap_python_model()).__name__ == "FraudModel"  # from the logged code
    inputs = [c.name for c in model.metadata.get_input_schema().inputs]
    assert inputs == feature_names(settings.features)
    features = result.test.features.head(200)
    probabilities = np.asarray(model.predict(features))
    assert probabilities.shape == (200,)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    assert len(np.unique(probabilities)) > 10  # probabilities, not 0/1 labels
    np.testing.assert_allclose(probabilities, result.scorer.predict_proba(features))


def test_score_moves_the_right_way(store, small_transactions) -> None:
    """Behaviour on raw data, features recomputed: a much dearer transaction, or a terminal
    whose matured history is fraud, never looks safer; amounts above 220 get flagged."""
    settings, _, version, result = store
    mlflow_store.use_store(settings)
    scorer = models.load_scorer(settings, f"models:/{NAME}/{version}")
    raw = small_transactions
    rows = result.test.raw.index[result.test.raw["tx_fraud"] == 0][:300]

    def scores(frame: pd.DataFrame) -> np.ndarray:
        return scorer.predict_proba(build_features(frame, settings.features).loc[rows])

    base = scores(raw)
    dear = raw.copy()
    dear.loc[rows, "tx_amount"] = dear.loc[rows, "tx_amount"] * 4
    assert scores(dear).mean() > base.mean()

    compromised = raw.copy()
    terminals = set(raw.loc[rows, "terminal_id"])
    matured = raw["tx_datetime"] < raw.loc[rows, "tx_datetime"].min() - pd.Timedelta(days=7)
    compromised.loc[matured & raw["terminal_id"].isin(terminals), "tx_fraud"] = 1
    assert scores(compromised).mean() > 2 * base.mean()

    above_220 = raw.copy()
    above_220.loc[rows, "tx_amount"] = 500.0  # scenario 1: every such amount is fraud
    assert (scores(above_220) >= scorer.threshold).mean() > 0.9


def test_manual_promotion_sets_stage_and_alias_and_archives(store, small_transactions) -> None:
    settings, _, v1, _ = store
    client = mlflow_store.client(settings)
    set_stage(settings, v1, "Production", "first model", actor="alice")
    _, v2 = train_and_log(small_transactions, settings)
    assert client.get_model_version(NAME, v2).current_stage == "None"
    set_stage(settings, v2, "Production", "retrained", actor="bob")

    assert client.get_model_version(NAME, v1).current_stage == "Archived"
    assert client.get_model_version(NAME, v2).current_stage == "Production"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == v2
    assert str(client.get_latest_versions(NAME, ["Production"])[0].version) == v2
    mv2 = client.get_model_version(NAME, v2)
    assert mv2.tags["promotion.by"] == "bob" and mv2.tags["promotion.reason"] == "retrained"
    assert "Production by bob: retrained" in mv2.description

    history = promotion_history(settings)
    assert list(history["version"])[:2] == [v2, v1]
    assert list(history["actor"])[:2] == ["bob", "alice"]
    assert list(history["champion_before"])[:2] == [v1, ""]


def test_auto_refuses_a_worse_model_and_keeps_the_champion(tmp_path, small_transactions) -> None:
    settings = make_settings(tmp_path)
    client = mlflow_store.client(settings)
    _, champion = train_and_log(small_transactions, settings)
    set_stage(settings, champion, "Production", "the champion")
    stump = make_settings(
        settings.workdir,
        training={"max_rounds": 1, "lightgbm": {"num_leaves": 2, "learning_rate": 0.01}},
    )
    _, worse = train_and_log(small_transactions, stump)
    decision = promote_if_better(settings, small_transactions, actor="ci")

    assert decision.version == worse and not decision.promoted
    assert decision.stage == "Staging"
    assert "does not beat champion" in decision.reason
    assert (
        decision.candidate_metrics["average_precision"]
        < decision.champion_metrics["average_precision"]
    )
    assert client.get_model_version(NAME, worse).current_stage == "Staging"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == champion
    assert promotion_history(settings)["reason"].iloc[0] == decision.reason


def test_auto_holds_a_model_that_misses_an_absolute_gate(store, small_transactions) -> None:
    settings, _, _, _ = store
    strict = make_settings(settings.workdir, promotion={"gates": {"recall": 1.01}})
    _, version = train_and_log(small_transactions, strict)
    decision = promote_if_better(strict, small_transactions)
    assert not decision.promoted and "recall" in decision.reason and "gate" in decision.reason


def test_auto_promotes_a_model_that_beats_the_champion(tmp_path, small_transactions) -> None:
    settings = make_settings(tmp_path)
    stump = make_settings(tmp_path, training={"max_rounds": 1, "lightgbm": {"num_leaves": 2}})
    _, weak = train_and_log(small_transactions, stump)
    set_stage(settings, weak, "Production", "baseline")
    _, strong = train_and_log(small_transactions, settings)
    decision = promote_if_better(settings, small_transactions)
    assert decision.promoted and decision.champion_before == weak
    client = mlflow_store.client(settings)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == strong
    assert client.get_model_version(NAME, weak).current_stage == "Archived"


def test_demoting_the_champion_to_staging_removes_the_alias(tmp_path, small_transactions) -> None:
    settings = make_settings(tmp_path)
    _, v1 = train_and_log(small_transactions, settings)
    set_stage(settings, v1, "Production", "go")
    set_stage(settings, v1, "Staging", "roll back")
    client = mlflow_store.client(settings)
    assert client.get_model_version(NAME, v1).current_stage == "Staging"
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(NAME, "champion")


def test_retraining_takes_over_the_configuration_the_champion_was_trained_with(
    tmp_path, small_transactions
) -> None:
    """The training configuration is logged with the run (config/training.json) and read back
    from there: the model's settings of the champion, the time windows of today."""
    trained_with = make_settings(
        tmp_path,
        training={
            "imbalance_power": 0.5,
            "max_rounds": 60,
            "lightgbm": {"num_leaves": 7, "learning_rate": 0.2},
            "threshold": {"rule": "max_f1"},
        },
    )
    _, version = train_and_log(small_transactions, trained_with)
    set_stage(trained_with, version, "Production", "the champion")
    today = make_settings(tmp_path, training={"train_days": 21})
    taken, champion = champion_configuration(today)
    assert champion == version
    assert taken.training.lightgbm == trained_with.training.lightgbm != today.training.lightgbm
    assert (taken.training.imbalance_power, taken.training.max_rounds) == (0.5, 60)
    assert taken.training.threshold == trained_with.training.threshold
    assert taken.training.threshold.rule == "max_f1" != today.training.threshold.rule
    assert taken.training.train_days == 21


def test_retraining_refuses_a_champion_whose_logged_lightgbm_parameters_are_not_allowed(
    tmp_path, small_data_dir, small_transactions, capsys
) -> None:
    """A registry writer edits the champion run's logged configuration to make LightGBM
    connect to a machine: retraining refuses it, naming the run and the key, before any run
    or version is made and before LightGBM sees it."""
    settings = make_settings(tmp_path, training={"max_rounds": 1, "lightgbm": {"num_leaves": 2}})
    run_id, version = train_and_log(small_transactions, settings)
    set_stage(settings, version, "Production", "the champion")
    client = mlflow_store.client(settings)
    logged = mlflow.artifacts.load_dict(f"runs:/{run_id}/{TRAINING_CONFIG_ARTIFACT}")
    logged["lightgbm"] = {**logged["lightgbm"], "machines": "10.9.9.9:12400"}
    client.log_dict(run_id, logged, TRAINING_CONFIG_ARTIFACT)
    runs_before = len(client.search_runs([client.get_run(run_id).info.experiment_id]))

    with pytest.raises(SettingsError, match="unknown LightGBM parameter 'machines'") as refused:
        champion_configuration(settings)
    assert run_id in str(refused.value) and "training.lightgbm" in str(refused.value)

    config = write_config(tmp_path / "config.yaml", settings)
    assert main(["retrain", "--config", str(config), "--data", str(small_data_dir)]) == 2
    err = capsys.readouterr().err
    assert "unknown LightGBM parameter 'machines'" in err and run_id in err
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == runs_before
    assert [str(v.version) for v in client.search_model_versions(f"name = '{NAME}'")] == [version]


def test_a_configuration_with_an_unknown_lightgbm_parameter_is_refused(tmp_path) -> None:
    """The allowlist guards configuration files and the search space the same way."""
    for sections, where in (
        ({"training": {"lightgbm": {"num_leaves": 7, "machines": "a:1"}}}, "training.lightgbm"),
        ({"tuning": {"space": {"output_model": {"low": 0, "high": 1}}}}, "tuning.space"),
    ):
        unknown = "machines" if "training" in sections else "output_model"
        with pytest.raises(SettingsError, match=f"unknown LightGBM parameter '{unknown}'") as bad:
            make_settings(tmp_path, **sections)
        assert where in str(bad.value)
    for params, message in (
        ({"objective": "multiclass"}, "'objective' must be one of"),
        ({"num_leaves": "31"}, "'num_leaves' must be a finite number"),
        ({"learning_rate": float("nan")}, "'learning_rate' must be a finite number"),
    ):
        with pytest.raises(SettingsError, match=message):
            make_settings(tmp_path, training={"lightgbm": params})
    with pytest.raises(ValueError, match="unknown LightGBM parameter 'machine_list_filename'"):
        check_lightgbm_parameters({"machine_list_filename": "/etc/hosts"})
    assert make_settings(tmp_path).training.lightgbm["num_leaves"] == 15
