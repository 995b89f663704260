"""Monitoring: reading the log and labels, the Evidently result, the verdict, and the scenarios
of the monitoring loop on real MLflow stores with real Evidently reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from drift.decision import decide
from drift.monitor import scored_by_champion
from drift.performance import Performance, assess_performance
from drift.report import drift_report
from drift.report_parse import ReportFormatError, is_drifted, parse
from drift.window import Window
from fraudflow.cli import main as cli_main
from pipelines.log.reader import MonitoringInputError, log_files, read_predictions
from pipelines.log.record import log_folder
from pipelines.log.traffic import attach_labels, labels_from_file
from pipelines.mlflow import store
from pipelines.mlflow.promotion import set_challenger
from pipelines.monitor_summary import Verdict
from pipelines.settings import SearchBudget, load_settings
from pipelines.state.factory import open_state
from serving.app import create_app
from tests.support.models import copy_store, train_and_register
from tests.support.settings import make_settings, write_config
from tests.support.traffic import log_traffic, split_days

NAME = "fraud-detector"


# --- the Evidently result, read into a typed summary ---------------------------------------

# 2026-11-26 as the half-open range the log reader takes
_DAY = (datetime(2026, 11, 26, tzinfo=timezone.utc), datetime(2026, 11, 27, tzinfo=timezone.utc))


def test_parse_reads_which_features_drifted_from_a_real_report() -> None:
    rng = np.random.default_rng(0)
    reference = pd.DataFrame(
        {
            "amount": rng.normal(50, 10, 3000),
            "count": rng.poisson(3, 3000).astype(float),
            "fraud_probability": rng.beta(1, 30, 3000),
        }
    )
    current = pd.DataFrame(
        {
            "amount": rng.normal(80, 10, 2000),  # shifted by three standard deviations
            "count": rng.poisson(3, 2000).astype(float),
            "fraud_probability": rng.beta(1, 30, 2000),
        }
    )
    monitoring = load_settings(environ={}).monitoring
    summary = parse(drift_report(reference, current, ["amount", "count"], monitoring).dict())
    assert summary.drifted_features == ["amount"]
    assert summary.drifted_count == 1 and summary.drifted_share == pytest.approx(0.5)
    by_column = {c.column: c for c in summary.columns}
    assert by_column["amount"].score > 1.0 > 0.1 > by_column["count"].score
    assert summary.score is not None and not summary.score.drifted


def test_parse_refuses_a_report_it_cannot_read() -> None:
    with pytest.raises(ReportFormatError, match="metrics"):
        parse({"something": []})
    with pytest.raises(ReportFormatError, match="DriftedColumnsCount"):
        parse({"metrics": [{"metric_name": "Accuracy()", "value": 0.9}]})


def test_p_value_tests_drift_below_their_threshold_distances_above() -> None:
    assert is_drifted("K-S p_value", 0.01, 0.05) and not is_drifted("K-S p_value", 0.2, 0.05)
    assert is_drifted("Wasserstein distance (normed)", 0.2, 0.1)
    assert not is_drifted("Jensen-Shannon distance", 0.05, 0.1)


def _performance(production: dict[str, float], degraded: tuple[str, ...]) -> Performance:
    return Performance(100, 30, True, production, {}, degraded)


def test_degraded_performance_outranks_drift(tmp_path: Path) -> None:
    monitoring = make_settings(tmp_path).monitoring
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"a": rng.normal(0, 1, 500), "fraud_probability": rng.random(500)})
    shifted = frame.assign(a=frame["a"] + 5)
    drift = parse(drift_report(frame, shifted, ["a"], monitoring).dict())
    stable = parse(drift_report(frame, frame, ["a"], monitoring).dict())
    assert decide(drift, _performance({}, ()), monitoring) is Verdict.DRIFT
    assert decide(drift, _performance({}, ("recall",)), monitoring) is Verdict.DEGRADED
    assert decide(stable, _performance({}, ()), monitoring) is Verdict.NO_DRIFT
    assert [v.exit_code for v in Verdict] == [0, 1, 2, 3]


def test_performance_is_not_judged_on_too_few_labelled_frauds(tmp_path: Path) -> None:
    monitoring = make_settings(tmp_path).monitoring
    current = pd.DataFrame(
        {
            "customer_id": [str(i) for i in range(50)],
            "tx_datetime": pd.Timestamp("2018-07-01") + pd.to_timedelta(np.arange(50), "min"),
            "fraud_probability": np.linspace(0, 1, 50),
            "tx_fraud": [1.0] * 5 + [0.0] * 40 + [np.nan] * 5,
        }
    )
    performance = assess_performance(current, 0.5, {"recall": 0.9}, monitoring, 100)
    assert not performance.assessed and performance.labelled_frauds == 5
    assert performance.labelled_rows == 45 and not performance.degraded


# --- the prediction log and late labels ---------------------------------------------------


def _record(tid: str, logged_at: datetime, version: str = "1") -> dict:
    return {
        "logged_at": logged_at.isoformat(timespec="milliseconds"),
        "transaction_id": tid,
        "tx_datetime": "2018-07-01T10:00:00",
        "customer_id": "7",
        "terminal_id": "9",
        "tx_amount": 12.5,
        "features": {"tx_amount": 12.5, "customer_nb_tx_1d": 1.0, "terminal_risk_7d": None},
        "fraud_probability": 0.1,
        "decision": "approve",
        "model_name": NAME,
        "model_version": version,
        "latency_ms": 1.0,
        "resent": False,
    }


def _write_log(folder: Path, day: str, records: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"predictions-{day}-123.jsonl", "a") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)


def test_read_predictions_keeps_the_window_and_the_first_scoring_of_a_resent_id(
    tmp_path: Path,
) -> None:
    now = datetime(2026, 11, 26, 12, tzinfo=timezone.utc)
    _write_log(
        tmp_path,
        "2026-11-26",
        [
            _record("a", now - timedelta(hours=1)),
            _record("b", now - timedelta(minutes=30)),
            _record("a", now - timedelta(minutes=10), version="2"),  # re-sent
            _record("late", now + timedelta(minutes=1)),
        ],
    )
    _write_log(tmp_path, "2026-11-24", [_record("old", now - timedelta(days=2))])
    frame = read_predictions(tmp_path, now - timedelta(hours=2), now)
    assert list(frame["transaction_id"]) == ["a", "b"]
    assert frame.loc[0, "model_version"] == "1"
    assert {"customer_nb_tx_1d", "terminal_risk_7d"} <= set(frame.columns)
    assert np.isnan(frame.loc[0, "terminal_risk_7d"])
    assert list(frame.columns).count("tx_amount") == 1
    assert len(read_predictions(tmp_path)) == 4  # every day, "a" once
    named = read_predictions(tmp_path, now - timedelta(hours=2), now, ["terminal_risk_7d"])
    assert list(named["transaction_id"]) == ["a", "b"]
    assert named["terminal_risk_7d"].isna().all() and named["terminal_risk_7d"].dtype == float
    assert "customer_nb_tx_1d" not in named and "decision" not in named
    raw_only = read_predictions(tmp_path, features=())
    assert len(raw_only) == 4 and "terminal_risk_7d" not in raw_only
    assert read_predictions(tmp_path / "nothing", *_DAY).empty


def test_a_corrupt_log_file_is_named(tmp_path: Path) -> None:
    _write_log(tmp_path, "2026-11-26", [_record("a", datetime.now(timezone.utc))])
    with open(tmp_path / "predictions-2026-11-26-123.jsonl", "a") as handle:
        handle.write('{"transaction_id": "b", "logged_at": \n')
    with pytest.raises(MonitoringInputError, match="predictions-2026-11-26-123.jsonl"):
        read_predictions(tmp_path, *_DAY)


def test_bad_label_files_are_refused_with_the_column_and_the_count(tmp_path: Path) -> None:
    columns = {"transaction_id": "TRANSACTION_ID", "tx_fraud": "TX_FRAUD"}
    path = tmp_path / "labels.csv"
    pd.DataFrame({"TRANSACTION_ID": ["a", "b", "c"], "TX_FRAUD": [1, 2, "x"]}).to_csv(path)
    with pytest.raises(MonitoringInputError, match=r"'TX_FRAUD' must be 0 or 1; 2 rows"):
        labels_from_file(path, columns)
    pd.DataFrame({"TRANSACTION_ID": ["a"]}).to_csv(path)
    with pytest.raises(MonitoringInputError, match="no column"):
        labels_from_file(path, columns)
    with pytest.raises(MonitoringInputError, match="not found"):
        labels_from_file(tmp_path / "missing.csv", columns)


def test_a_later_label_source_corrects_an_earlier_one(tmp_path: Path) -> None:
    predictions = pd.DataFrame({"transaction_id": ["a", "b", "c"]})
    feedback = pd.DataFrame({"transaction_id": ["a", "b"], "tx_fraud": [0, 1]})
    correction = pd.DataFrame({"transaction_id": ["a"], "tx_fraud": [1]})
    joined = attach_labels(predictions, [feedback, correction])
    assert joined["tx_fraud"].tolist()[:2] == [1.0, 1.0] and np.isnan(joined["tx_fraud"][2])


def test_window_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        Window.day("26/11/2026")
    window = Window.day("2026-11-26")
    assert window.days() == ["2026-11-26"]
    assert Window(window.start, window.end + timedelta(hours=1)).days() == [
        "2026-11-26",
        "2026-11-27",
    ]


# --- the scenarios, on a real store -------------------------------------------------------


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory: pytest.TempPathFactory, small_transactions: pd.DataFrame):
    """Trained once for the module, never used directly: a store (MLflow database and
    artifacts) holding a champion (v1, Production) trained on all but the last simulated day;
    that day as production traffic; the history on disk for retraining (read-only)."""
    root = tmp_path_factory.mktemp("trained-store")
    settings = make_settings(root / "work")
    history, traffic = split_days(small_transactions, 1)
    data = root / "history.parquet"
    history.to_parquet(data)
    version, _ = train_and_register(history, settings, production="the first champion")
    return settings.workdir, history, traffic, version, data


@pytest.fixture
def world(tmp_path: Path, trained_store):
    """The trained store, copied for this test alone: whatever a test logs, registers or
    promotes stays in its copy, whatever the order tests run in."""
    source, history, traffic, version, data = trained_store
    settings = make_settings(tmp_path / "work")
    copy_store(source, settings.workdir)
    from drift.reference import load_champion

    champion = load_champion(settings)
    return settings, history.copy(), traffic.copy(), champion, version, data


def log_shifted_amounts(world) -> None:
    """The last day's traffic with every amount x2.5, scored by the champion and logged."""
    settings, history, traffic, champion, version, _ = world
    shifted = traffic.assign(tx_amount=traffic["tx_amount"] * 2.5)
    log_traffic(settings, history, shifted, champion.scorer, version)


def _monitor(settings, tmp_path: Path, *args: str) -> tuple[int, dict]:
    """`fraudflow monitor` in-process, configured by an overlay file like a scheduler's."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # mlflow.set_tracking_uri exports it
    config = write_config(tmp_path / "overlay.yaml", settings)
    output = tmp_path / "monitor.json"
    code = cli_main(["monitor", "--config", str(config), "--output", str(output), *args])
    summary = json.loads(output.read_text()) if output.exists() else {}
    return code, summary


def test_traffic_like_training_gives_no_drift_and_no_retraining(world, tmp_path: Path) -> None:
    settings, history, traffic, champion, version, data = world
    log_traffic(settings, history, traffic, champion.scorer, version)
    (logged,) = log_files(log_folder(settings))
    with open(logged, "ab") as handle:  # a worker that died in the middle of a record
        handle.write(b'{"logged_at":"2026-')
    code, summary = _monitor(settings, tmp_path, "--retrain", "--data", str(data))
    assert code == 0 and summary["verdict"] == "no_drift"
    assert summary["rows"]["torn_records"] == 1 and summary["rows"]["current"] == len(traffic)
    assert summary["drift"]["drifted_share"] < settings.monitoring.drift_share
    assert not summary["drift"]["score"]["drifted"]
    assert "retrain" not in summary
    assert "live" not in summary  # no challenger served: no comparison anywhere
    assert "Champion vs challenger" not in Path(summary["report"]).read_text()
    client = store.client(settings)
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1
    run = client.get_run(summary["run_id"])
    assert run.data.tags["verdict"] == "no_drift" and run.data.tags["model_version"] == version
    assert "retrain_run_id" not in run.data.tags
    assert not [m for m in run.data.metrics if m.startswith("live_")]
    assert run.data.metrics["torn_log_records"] == 1
    latest = json.loads(settings.monitor_latest.read_text())
    assert latest["run_id"] == summary["run_id"]
    # the API exports the verdict for Prometheus
    app = create_app(settings, start_polling=False)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    app.extensions["fraudflow"].holder.stop()
    assert 'fraudflow_monitor_verdict{verdict="no_drift"} 1.0' in text
    assert 'fraudflow_monitor_verdict{verdict="drift"} 0.0' in text
    share = summary["drift"]["drifted_share"]
    assert f"fraudflow_drift_share {share}" in text
    assert "fraudflow_prediction_drift_score " in text
    assert "fraudflow_live_" not in text


def test_shifted_amounts_drift_and_trigger_a_linked_retraining(world, tmp_path: Path) -> None:
    """Through the CLI (`fraudflow monitor --retrain` in a subprocess): exit code 1, a report
    that names the drifted features, and monitor run -> retrain run -> model version links."""
    settings, _, _, _, version, data = world
    log_shifted_amounts(world)
    config = write_config(tmp_path / "overlay.yaml", settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FRAUDFLOW__"))}
    output = tmp_path / "monitor.json"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "fraudflow"),
            "monitor",
            "--retrain",
            "--config",
            str(config),
            "--data",
            str(data),
            "--output",
            str(output),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "verdict DRIFT" in done.stdout
    summary = json.loads(output.read_text())
    drifted = set(summary["drift"]["drifted_features"])
    assert {"tx_amount", "amount_to_customer_avg_30d"} <= drifted
    assert summary["drift"]["score"]["drifted"]
    folder = Path(summary["report"]).parent
    index = (folder / "index.html").read_text()
    for feature in drifted:
        assert feature in index
    drift_html = folder / "drift.html"
    assert "amount_to_customer_avg_30d" in drift_html.read_text()
    assert drift_html.stat().st_size < 20_000_000

    client = store.client(settings)
    monitor_run = client.get_run(summary["run_id"])
    retrain_id = monitor_run.data.tags["retrain_run_id"]
    retrain_run = client.get_run(retrain_id)
    assert retrain_run.data.tags["monitor_run_id"] == summary["run_id"]
    assert retrain_run.data.tags["fraudflow.trigger"] == "monitor:drift"
    challenger = client.get_model_version(NAME, monitor_run.data.tags["challenger_version"])
    assert str(challenger.version) == "2"
    assert challenger.tags["monitor_run_id"] == summary["run_id"]
    assert challenger.tags["retrain_run_id"] == retrain_id
    training_run = client.get_run(challenger.run_id)
    assert training_run.data.tags["mlflow.parentRunId"] == retrain_id
    retrain = summary["retrain"]
    assert retrain["champion_before"] == version
    assert retrain["challenger_metrics"] and retrain["champion_metrics"]
    assert retrain["eval_window"]["eval_start"] < retrain["eval_window"]["eval_end"]
    assert challenger.current_stage == ("Production" if retrain["promoted"] else "Staging")


def test_a_worse_challenger_is_never_promoted_whatever_the_drift(world, tmp_path: Path) -> None:
    settings, history, _, _, version, _ = world
    log_shifted_amounts(world)
    # the retraining learns from shuffled labels (a broken label feed): a challenger that
    # learnt nothing, compared with the champion on the intact, most recent labelled week
    recent = history["tx_datetime"] >= history["tx_datetime"].max() - pd.Timedelta(
        days=settings.promotion.eval_days + 1
    )
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(history.loc[~recent, "tx_fraud"].to_numpy())
    scrambled = history.copy()
    scrambled.loc[~recent, "tx_fraud"] = shuffled
    data = tmp_path / "scrambled.parquet"
    scrambled.to_parquet(data)
    # a retraining that cannot even start is an error, and changes nothing in the registry
    client = store.client(settings)
    versions_before = len(client.search_model_versions(f"name='{NAME}'"))
    code, failed = _monitor(settings, tmp_path, "--retrain", "--data", str(tmp_path / "none"))
    assert code == 3 and failed["verdict"] == "drift" and "none" in failed["retrain_error"]
    assert len(client.search_model_versions(f"name='{NAME}'")) == versions_before
    assert json.loads(settings.monitor_latest.read_text())["retrain_error"]
    code, summary = _monitor(settings, tmp_path, "--retrain", "--data", str(data))
    assert code == 1 and summary["verdict"] == "drift"
    retrain = summary["retrain"]
    assert not retrain["promoted"] and retrain["stage"] == "Staging"
    assert retrain["challenger_metrics"]["average_precision"] < (
        retrain["champion_metrics"]["average_precision"]
    )
    assert "does not beat champion" in retrain["reason"]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == version
    assert client.get_model_version(NAME, version).current_stage == "Production"
    assert client.get_model_version(NAME, retrain["challenger_version"]).current_stage == "Staging"


def test_late_labels_showing_lost_recall_give_a_degraded_verdict_without_drift(
    world, tmp_path: Path
) -> None:
    """Frauds of a new kind that looks like normal traffic: features do not move, recall does.
    Labels arrive through the online state (/feedback) and a labelled file."""
    settings, history, traffic, champion, version, _ = world
    scored = log_traffic(settings, history, traffic, champion.scorer, version)
    unseen = scored.loc[scored["tx_fraud"] == 0].nsmallest(60, "fraud_probability")
    labels = scored[["transaction_id", "tx_fraud"]].copy()
    labels.loc[labels["transaction_id"].isin(unseen["transaction_id"]), "tx_fraud"] = 1
    half = len(labels) // 2
    open_state(settings).add_labels(
        [(tid, int(label)) for tid, label in labels.iloc[:half].itertuples(index=False)], 0
    )
    label_file = tmp_path / "labels.csv"
    labels.iloc[half:].to_csv(label_file, index=False)
    code, summary = _monitor(settings, tmp_path, "--labels", str(label_file))
    assert code == 2 and summary["verdict"] == "degraded"
    performance = summary["performance"]
    assert performance["labelled_rows"] == len(labels)
    assert "recall" in performance["degraded_metrics"]
    assert performance["production"]["recall"] < performance["training"]["recall"] - 0.15
    assert summary["drift"]["drifted_share"] < settings.monitoring.drift_share
    folder = Path(summary["report"]).parent
    assert (folder / "performance.html").stat().st_size > 0


def test_no_champion_and_too_little_traffic_are_errors_with_exit_code_3(
    tmp_path: Path, world
) -> None:
    empty = make_settings(tmp_path / "empty")
    code, _ = _monitor(empty, tmp_path)
    assert code == 3
    latest = json.loads(empty.monitor_latest.read_text())
    assert latest["verdict"] == "error" and "no version in service" in latest["error"]
    settings = world[0]
    code, _ = _monitor(settings, tmp_path)
    assert code == 3
    assert "min_rows" in json.loads(settings.monitor_latest.read_text())["error"]


def test_retrain_by_hand_with_a_search_logs_nested_trials(world, tmp_path: Path) -> None:
    """`fraudflow retrain` (what the `retrain` entry point runs) with `retraining.params:
    search`: a nested `tune` run with one nested run per trial, the challenger registered with
    its best and judged."""
    settings, _, _, _, version, data = world
    searching = settings.model_copy(
        update={
            "retraining": settings.retraining.model_copy(
                update={"params": "search", "search_budget": SearchBudget(trials=2)}
            )
        }
    )
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    config = write_config(tmp_path / "search.yaml", searching)
    output = tmp_path / "retrain.json"
    code = cli_main(
        ["retrain", "--config", str(config), "--data", str(data), "--output", str(output)]
    )
    assert code == 0
    result = json.loads(output.read_text())
    assert result["trigger"]["fraudflow.trigger"] == "manual"
    assert [t["number"] for t in result["trials"]] == [0, 1]
    assert result["params_source"] == "search"
    assert result["champion_before"] == version and result["challenger_metrics"]
    client = store.client(settings)
    experiment_id = client.get_run(result["run_id"]).info.experiment_id
    children = client.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{result['run_id']}'"
    )
    steps = sorted(run.data.tags["fraudflow.step"] for run in children)
    assert steps == ["train", "tune"]
    trials = client.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{result['tune_run_id']}'"
    )
    assert sorted(run.data.tags["fraudflow.step"] for run in trials) == ["tune-trial"] * 2
    challenger = client.get_model_version(NAME, result["challenger_version"])
    assert challenger.run_id == result["training_run_id"]
    assert challenger.current_stage == ("Production" if result["promoted"] else "Staging")


# --- champion and challenger on the same traffic --------------------------------------------


def test_canary_rows_keep_the_champion_score_logged_beside_the_challenger(world) -> None:
    """Rows the challenger answered carry the champion's own score: the monitor takes it
    rather than re-scoring (these rows log no features: re-scoring them would fail)."""
    _, _, _, champion, version, _ = world
    logged = pd.DataFrame(
        {
            "model_version": ["7", version, "7"],
            "fraud_probability": [0.9, 0.2, 0.8],
            "champion_version": [version, version, version],
            "champion_probability": [0.1, 0.2, 0.3],
            "challenger_version": ["7", "7", "7"],
            "challenger_probability": [0.9, 0.5, 0.8],
        }
    )
    scored = scored_by_champion(logged, champion)
    assert scored["fraud_probability"].tolist() == [0.1, 0.2, 0.3]
    # after the challenger's promotion, its logged scores are the champion's
    promoted = logged.assign(model_version="0", champion_version="0", challenger_version=version)
    assert scored_by_champion(promoted, champion)["fraud_probability"].tolist() == [0.9, 0.5, 0.8]


def test_a_window_scored_by_champion_and_challenger_is_compared_everywhere(
    world, tmp_path: Path
) -> None:
    """Shadow and canary traffic (a fifth of the cards answered by the challenger, a small
    real model): the summary, the report page, the monitoring run and /metrics carry the
    champion-against-challenger figures, and performance is judged on the champion's scores."""
    settings, history, traffic, champion, version, _ = world
    small = make_settings(
        settings.workdir, training={"max_rounds": 15, "lightgbm": {"num_leaves": 4}}
    )
    challenger, trained = train_and_register(history, small)
    set_challenger(settings, challenger, "beside the champion", actor="test")
    cards = sorted(traffic["customer_id"].astype(str).unique())[::5]
    scored = log_traffic(
        settings,
        history,
        traffic,
        champion.scorer,
        version,
        challenger=(challenger, trained.scorer),
        canary_cards=cards,
    )
    open_state(settings).add_labels(
        [(t, int(y)) for t, y in scored[["transaction_id", "tx_fraud"]].itertuples(index=False)],
        0,
    )
    code, summary = _monitor(settings, tmp_path)
    assert code in (0, 1, 2)
    live = summary["live"]
    assert (live["champion_version"], live["challenger_version"]) == (version, challenger)
    assert live["rows"] == live["labelled_rows"] == len(traffic)
    assert live["labelled_frauds"] == int(traffic["tx_fraud"].sum()) and live["days"] == 1
    assert live["verdict"] == "insufficient evidence"  # one day of a week asked for
    assert "live evidence: 1 of 7 days" in live["reasons"]
    assert live["ap_difference_low"] <= live["ap_difference"] <= live["ap_difference_high"]
    assert 0 < live["agreement_rate"] <= 1 and live["score_psi"] >= 0
    # performance on the champion's scores, though a fifth of the answers were the challenger's
    production = summary["performance"]["production"]
    assert production["average_precision"] == pytest.approx(live["champion"]["average_precision"])
    page = Path(summary["report"]).read_text()
    assert "Champion vs challenger" in page and f"challenger v{challenger}" in page
    assert "insufficient evidence" in page and "src=" not in page and "<script" not in page
    run = store.client(settings).get_run(summary["run_id"])
    assert run.data.tags["live_challenger_version"] == challenger
    assert run.data.tags["live_verdict"] == "insufficient evidence"
    metrics = run.data.metrics
    for role in ("champion", "challenger"):
        assert metrics[f"live_{role}_average_precision"] == pytest.approx(
            live[role]["average_precision"]
        )
    assert metrics["live_agreement_rate"] == pytest.approx(live["agreement_rate"])
    assert run.data.metrics["live_ap_difference_low"] == pytest.approx(live["ap_difference_low"])
    app = create_app(settings, start_polling=False)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    app.extensions["fraudflow"].holder.stop()
    for role in ("champion", "challenger"):
        value = live[role]["average_precision"]
        assert f'fraudflow_live_average_precision{{model_role="{role}"}} {value}' in text
    assert 'fraudflow_live_verdict{verdict="insufficient_evidence"} 1.0' in text
    assert f"fraudflow_live_agreement_rate {live['agreement_rate']}" in text
