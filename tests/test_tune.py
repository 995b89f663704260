"""`fraudflow tune`: a parameter search on validation periods only, as MLflow runs, and the
retraining that starts from its best or runs one itself. Small data, few trials, few rounds."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from fraudflow.cli import main
from pipelines.mlflow import store
from pipelines.mlflow.tuning import OVERLAY_ARTIFACT, last_search
from pipelines.settings import SearchBudget, SettingsError, deep_merge, load_settings
from pipelines.training.train import train_model
from pipelines.training.tune import configured_point, run_time, tune, validation_folds
from tests.support.models import copy_store, train_and_register
from tests.support.settings import FAST_TRAINING, make_settings, write_config

# few rounds, two folds: a trial takes a second or two on the small world; one LightGBM thread,
# which holds up on a loaded machine (two spin against other jobs)
QUICK = {
    "training": {
        "max_rounds": 40,
        "early_stopping_rounds": 10,
        "lightgbm": {**FAST_TRAINING["lightgbm"], "num_threads": 1},
    },
    "tuning": {"folds": 2},
}
SEARCHED = ("learning_rate", "num_leaves", "min_child_samples", "imbalance_power")


def quick_settings(workdir: Path, **sections) -> object:
    return make_settings(workdir, **deep_merge(QUICK, sections))


def trial_runs(settings, parent_id: str) -> list:
    client = store.client(settings)
    experiment_id = client.get_run(parent_id).info.experiment_id
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    return sorted(children, key=lambda run: int(run.data.params.get("trial", -1)))


def searched(result) -> list[tuple]:
    return [(t.number, t.params, t.value, t.fold_values) for t in result.trials]


def test_a_search_with_a_trial_budget_and_a_seed_repeats_itself(
    tmp_path: Path, small_transactions: pd.DataFrame
) -> None:
    """The same seed and trial budget: the same trials, parameters, values and best; trial 0 is
    the configured parameters; another seed tries other points."""
    settings = quick_settings(tmp_path)
    budget = SearchBudget(trials=3)
    data = [("small", small_transactions)]
    first = tune(data, settings, budget, log_to_mlflow=False)
    again = tune(data, settings, budget, log_to_mlflow=False)
    assert searched(first) == searched(again) and first.best.number == again.best.number
    assert len(first.trials) == 3 and first.stopped_by == "trials"
    assert first.trials[0].params == configured_point(settings.training, settings.tuning.space)
    assert first.trials[0].params["imbalance_power"] == settings.training.imbalance_power
    assert first.best.value >= first.baseline.value
    assert set(first.trials[0].fold_values) == {"data0_fold0", "data0_fold1"}
    assert first.trials[0].value == np.mean(list(first.trials[0].fold_values.values()))
    for sampler in ("random", "tpe"):
        other = tune(
            data,
            settings.model_copy(update={"tuning": settings.tuning.model_copy(update={"seed": 7})}),
            SearchBudget(trials=2),
            sampler=sampler,
            log_to_mlflow=False,
        )
        assert other.trials[0].params == first.trials[0].params
        assert other.trials[1].params != first.trials[1].params


def test_the_test_periods_never_reach_the_search(
    tmp_path: Path, small_transactions: pd.DataFrame
) -> None:
    """Every row from the newest validation end on (the delay gap and the test week) altered:
    labels flipped, amounts scaled, half the rows gone: the search finds exactly the same."""
    settings = quick_settings(tmp_path)
    newest, *_ = validation_folds(small_transactions, settings)
    cut = newest.windows.validation.end
    later = (small_transactions["tx_datetime"] >= cut).to_numpy()
    assert later.sum() > 1000 and newest.windows.test.end > cut
    altered = small_transactions.copy()
    altered.loc[later, "tx_fraud"] = 1 - altered.loc[later, "tx_fraud"]
    altered.loc[later, "tx_amount"] = altered.loc[later, "tx_amount"] * 7.0
    last_day = altered["tx_datetime"] >= altered["tx_datetime"].max().normalize()
    dropped = later & ~last_day.to_numpy() & (np.arange(len(altered)) % 2 == 0)
    altered = altered.loc[~dropped].reset_index(drop=True)
    budget = SearchBudget(trials=2)
    original = tune([("original", small_transactions)], settings, budget, log_to_mlflow=False)
    changed = tune([("altered", altered)], settings, budget, log_to_mlflow=False)
    assert searched(changed) == searched(original)


def test_several_datasets_make_one_objective(
    tmp_path: Path, small_transactions: pd.DataFrame
) -> None:
    """The objective is the mean over datasets x folds."""
    settings = quick_settings(tmp_path, tuning={"folds": 1})
    later = small_transactions.loc[
        small_transactions["tx_datetime"]
        < small_transactions["tx_datetime"].max().normalize() - pd.Timedelta(days=6)
    ]
    result = tune(
        [("all", small_transactions), ("a week less", later)],
        settings,
        SearchBudget(trials=1),
        log_to_mlflow=False,
    )
    (trial,) = result.trials
    assert set(trial.fold_values) == {"data0_fold0", "data1_fold0"}
    assert trial.value == pytest.approx(np.mean(list(trial.fold_values.values())))
    assert trial.fold_values["data0_fold0"] != trial.fold_values["data1_fold0"]


def test_the_time_budget_stops_the_search_after_trial_zero(
    tmp_path: Path, small_transactions: pd.DataFrame
) -> None:
    """A time budget shorter than any trial: trial 0 runs (the configured point is always
    scored), and no trial starts after it."""
    settings = quick_settings(tmp_path)
    result = tune(
        [("small", small_transactions)],
        settings,
        SearchBudget(trials=50, timeout_s=0.001),
        log_to_mlflow=False,
    )
    assert len(result.trials) == 1 and result.stopped_by == "timeout"
    assert result.best == result.baseline


def test_tune_logs_nested_trials_and_a_configuration_train_takes(
    tmp_path: Path, small_data_dir: Path, capsys
) -> None:
    """`fraudflow tune`: a tagged parent run with one nested run per trial (parameters, each
    fold's validation average precision, best iteration, duration), the best and the baseline;
    its resolved configuration is a --config overlay with which `fraudflow train` trains the
    best parameters."""
    settings = quick_settings(tmp_path / "work")
    config = write_config(tmp_path / "config.yaml", settings)
    output = tmp_path / "tune.json"
    code = main(
        ["tune", "--config", str(config), "--data", str(small_data_dir)]
        + ["--trials", "3", "--sampler", "random", "--output", str(output)]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads(output.read_text())
    assert "tuned over 3 trials (random" in capsys.readouterr().out
    client = store.client(settings)
    parent = client.get_run(summary["run_id"])
    assert parent.data.tags["fraudflow.kind"] == "tune" and parent.info.status == "FINISHED"
    assert parent.data.params["sampler"] == "random" and parent.data.params["budget_trials"] == "3"
    assert parent.data.params["data_0"] == str(small_data_dir)
    metrics = parent.data.metrics
    assert metrics["trials"] == 3
    assert metrics["best_validation_average_precision"] == summary["best_value"]
    assert metrics["baseline_validation_average_precision"] == summary["baseline_value"]
    assert summary["best_value"] >= summary["baseline_value"]
    assert (
        float(parent.data.params["best_learning_rate"]) == summary["best_params"]["learning_rate"]
    )
    trials = trial_runs(settings, summary["run_id"])
    assert [run.data.params["trial"] for run in trials] == ["0", "1", "2"]
    for run, trial in zip(trials, summary["trials"]):
        assert run.data.tags["fraudflow.step"] == "tune-trial"
        assert {name: float(run.data.params[name]) for name in SEARCHED} == {
            name: float(trial["params"][name]) for name in SEARCHED
        }
        assert run.data.metrics["validation_average_precision"] == trial["value"]
        for fold in ("data0_fold0", "data0_fold1"):
            assert 0 < run.data.metrics[f"validation_average_precision_{fold}"] <= 1
            assert run.data.metrics[f"best_iteration_{fold}"] >= 1
        assert run.data.metrics["duration_s"] > 0

    # the artifact is an overlay: with it, train trains the best parameters
    store.use_store(settings)
    overlay = yaml.safe_load(
        mlflow.artifacts.load_text(f"runs:/{summary['run_id']}/{OVERLAY_ARTIFACT}")
    )
    assert overlay == summary["resolved_config"]
    best = summary["best_params"]
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(yaml.safe_dump(overlay))
    loaded = load_settings(resolved, environ={})
    assert loaded.training.imbalance_power == best["imbalance_power"]
    assert {k: loaded.training.lightgbm[k] for k in best if k != "imbalance_power"} == {
        k: v for k, v in best.items() if k != "imbalance_power"
    }
    combined = tmp_path / "combined.yaml"
    combined.write_text(yaml.safe_dump(deep_merge(yaml.safe_load(config.read_text()), overlay)))
    assert main(["train", "--config", str(combined), "--data", str(small_data_dir)]) == 0
    runs = client.search_runs(
        [parent.info.experiment_id], "tags.`fraudflow.step` = 'train'", max_results=1
    )
    params = runs[0].data.params
    assert float(params["imbalance_power"]) == best["imbalance_power"]
    for name in ("learning_rate", "num_leaves", "min_child_samples"):
        assert float(params[f"lgbm_{name}"]) == float(best[name])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trials", "0"], "tuning.trials: Input should be greater than 0"),
        (["--timeout", "0"], "tuning.timeout_s: Input should be greater than 0"),
        (["--timeout", "-5"], "tuning.timeout_s: Input should be greater than 0"),
    ],
)
def test_bad_budget_values_are_refused_naming_the_setting(
    tmp_path: Path, small_data_dir: Path, capsys, args: list[str], message: str
) -> None:
    config = write_config(tmp_path / "config.yaml", quick_settings(tmp_path / "work"))
    code = main(["tune", "--config", str(config), "--data", str(small_data_dir), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "work" / "mlflow.db").exists()  # refused before any run


def test_a_budget_that_is_not_a_whole_number_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["tune", "--trials", "2.5"])
    assert refused.value.code == 2 and "--trials" in capsys.readouterr().err


@pytest.mark.parametrize(
    "tuning, message",
    [
        ({"trials": 0}, "tuning.trials"),
        ({"sampler": "grid"}, "tuning.sampler"),
        ({"space": {"seed": {"low": 0, "high": 9}}}, "'seed' is not searched"),
        ({"space": {"output_model": {"low": 0, "high": 9}}}, "unknown LightGBM parameter"),
        ({"space": {"lambda_l1": {"low": 0, "high": 9, "log": True}}}, "log range needs low"),
        ({"space": {"num_leaves": {"low": 9, "high": 4}}}, "low below high"),
        ({"space": {"num_leaves": {"type": "int", "low": 2, "high": 9.5}}}, "whole bounds"),
        ({"space": {"imbalance_power": {"low": 0, "high": 2}}}, "within [0, 1]"),
    ],
)
def test_a_bad_tuning_section_is_refused_with_its_key(tmp_path: Path, tuning, message) -> None:
    with pytest.raises(SettingsError) as refused:
        make_settings(tmp_path, tuning=tuning)
    assert message in str(refused.value)


def test_the_space_holds_the_configured_point_or_says_why_not(
    tmp_path: Path, small_transactions: pd.DataFrame, caplog
) -> None:
    """A configured value outside its range widens the range (trial 0 is a point of the
    space); a range of a parameter the configuration does not set is refused by name; an
    overlay's null takes a range out."""
    settings = quick_settings(
        tmp_path,
        training={"lightgbm": {"learning_rate": 0.5}},
        tuning={"space": {"lambda_l2": None, "feature_fraction": None, "bagging_fraction": None}},
    )
    assert set(settings.tuning.space) == {*SEARCHED}
    with caplog.at_level(logging.WARNING):
        result = tune(
            [("small", small_transactions)], settings, SearchBudget(trials=1), log_to_mlflow=False
        )
    assert result.trials[0].params["learning_rate"] == 0.5
    assert "tuning.space.learning_rate" in caplog.text and "widened" in caplog.text
    unset = quick_settings(tmp_path, tuning={"space": {"lambda_l1": {"low": 0.1, "high": 9}}})
    with pytest.raises(SettingsError, match="training.lightgbm sets no number lambda_l1"):
        tune([("small", small_transactions)], unset, SearchBudget(trials=1), log_to_mlflow=False)


# --- retraining from a search ------------------------------------------------------------


@pytest.fixture(scope="module")
def champion_store(tmp_path_factory: pytest.TempPathFactory, small_transactions: pd.DataFrame):
    """Trained once for the module, never used directly: a store holding a champion trained on
    the configured parameters."""
    settings = quick_settings(tmp_path_factory.mktemp("champion") / "work")
    version, _ = train_and_register(small_transactions, settings, production="the champion")
    return settings.workdir, version


@pytest.fixture
def champion(tmp_path: Path, champion_store):
    """The champion's store, copied for this test alone."""
    source, version = champion_store
    settings = quick_settings(tmp_path / "work")
    copy_store(source, settings.workdir)
    return settings, version


def _retrain(settings, tmp_path: Path, data: Path, **retraining) -> dict:
    configured = settings.model_copy(
        update={"retraining": settings.retraining.model_copy(update=retraining)}
    )
    config = write_config(tmp_path / "retrain.yaml", configured)
    output = tmp_path / "retrain.json"
    code = main(["retrain", "--config", str(config), "--data", str(data), "--output", str(output)])
    assert code == 0
    return json.loads(output.read_text())


def test_retraining_with_last_search_trains_the_best_of_the_newest_tune_run(
    champion, tmp_path: Path, small_transactions: pd.DataFrame, small_data_dir: Path
) -> None:
    """The newest of two searches (each of one trial: its best is its own configured point,
    unlike the champion's) gives the challenger its parameters, and the runs say so."""
    settings, version = champion
    data = [("small", small_transactions)]
    older = tune(data, _trained_with(settings, 0.05, 0.1), SearchBudget(trials=1))
    newest = tune(data, _trained_with(settings, 0.3, 0.5), SearchBudget(trials=1))
    assert last_search(settings)[0] == newest.run_id != older.run_id
    result = _retrain(settings, tmp_path, small_data_dir, params="last_search")
    assert result["params_source"] == "last_search" and result["tune_run_id"] == newest.run_id
    assert result["champion_before"] == version
    client = store.client(settings)
    retrain_run = client.get_run(result["run_id"])
    assert retrain_run.data.params["retraining_params"] == "last_search"
    assert retrain_run.data.tags["params_source"] == "last_search"
    assert retrain_run.data.tags["tune_run_id"] == newest.run_id
    trained = client.get_run(result["training_run_id"]).data.params
    assert newest.best.params["learning_rate"] == 0.3
    assert (float(trained["lgbm_learning_rate"]), float(trained["imbalance_power"])) == (0.3, 0.5)
    assert float(trained["lgbm_num_leaves"]) == settings.training.lightgbm["num_leaves"]
    challenger = client.get_model_version("fraud-detector", result["challenger_version"])
    assert challenger.tags["params_source"] == "last_search"
    assert challenger.tags["tune_run_id"] == newest.run_id


def _trained_with(settings, learning_rate: float, imbalance_power: float):
    lightgbm = {**settings.training.lightgbm, "learning_rate": learning_rate}
    training = settings.training.model_copy(
        update={"lightgbm": lightgbm, "imbalance_power": imbalance_power}
    )
    return settings.model_copy(update={"training": training})


def test_last_search_with_no_tune_run_says_so_and_keeps_the_champions_parameters(
    champion, tmp_path: Path, small_data_dir: Path, caplog
) -> None:
    settings, version = champion
    with caplog.at_level(logging.WARNING):
        result = _retrain(settings, tmp_path, small_data_dir, params="last_search")
    assert "holds no finished tune run: retraining with the champion parameters" in caplog.text
    assert result["params_source"] == "champion" and result["tune_run_id"] is None
    client = store.client(settings)
    trained = client.get_run(result["training_run_id"]).data.params
    champion_run = client.get_run(client.get_model_version("fraud-detector", version).run_id)
    for name in ("lgbm_learning_rate", "lgbm_num_leaves", "imbalance_power"):
        assert trained[name] == champion_run.data.params[name]


def test_retraining_with_search_runs_the_trials_as_nested_runs(
    champion, tmp_path: Path, small_data_dir: Path
) -> None:
    """A search on the retraining's data within retraining.search_budget, nested in the
    retrain run, starting from the champion's parameters; the challenger trains its best."""
    settings, _ = champion
    result = _retrain(
        settings, tmp_path, small_data_dir, params="search", search_budget=SearchBudget(trials=2)
    )
    assert result["params_source"] == "search" and len(result["trials"]) == 2
    client = store.client(settings)
    children = trial_runs(settings, result["run_id"])
    assert sorted(run.data.tags["fraudflow.step"] for run in children) == ["train", "tune"]
    (search,) = [run for run in children if run.info.run_id == result["tune_run_id"]]
    assert search.data.tags["fraudflow.kind"] == "tune"
    assert search.data.params["budget_trials"] == "2"
    assert [run.data.params["trial"] for run in trial_runs(settings, search.info.run_id)] == [
        "0",
        "1",
    ]
    best = max(result["trials"], key=lambda t: (t["validation_average_precision"], -t["number"]))
    trained = client.get_run(result["training_run_id"]).data.params
    assert float(trained["imbalance_power"]) == best["params"]["imbalance_power"]
    assert float(trained["lgbm_learning_rate"]) == best["params"]["learning_rate"]
    # the search a retraining ran is a search a later retraining may start from
    assert last_search(settings)[0] == result["tune_run_id"]


def test_trial_zero_scores_the_configuration_as_training_does(
    tmp_path: Path, small_transactions: pd.DataFrame
) -> None:
    """Fold 0 is training's own layout: trial 0's value there is the validation average
    precision `train` reports for the configured parameters."""
    settings = quick_settings(tmp_path, tuning={"folds": 1})
    result = tune(
        [("small", small_transactions)], settings, SearchBudget(trials=1), log_to_mlflow=False
    )
    same_run_time = run_time(settings.training, settings.tuning)
    trained = train_model(
        small_transactions, settings.model_copy(update={"training": same_run_time})
    )
    assert result.baseline.fold_values["data0_fold0"] == pytest.approx(
        trained.validation_metrics["average_precision"], abs=1e-12
    )
