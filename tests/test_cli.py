"""The `fraudflow` command line and the MLflow Project entry point, end to end on small data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from fraudflow.cli import UsageError, main, monitor_window
from pipelines.mlflow import store
from pipelines.mlflow.promotion import training_gate_failures
from pipelines.settings import LABEL_COLUMN, RAW_COLUMNS
from tests.support.settings import make_settings, write_config

REPO = Path(__file__).resolve().parent.parent
UPPER = {c: c.upper() for c in (*RAW_COLUMNS, LABEL_COLUMN)}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, small_transactions: pd.DataFrame):
    """A config overlay on a private store plus the small data as an upper-case CSV file."""
    root = tmp_path_factory.mktemp("cli")
    settings = make_settings(root / "work", data={"columns": UPPER})
    config = write_config(root / "overlay.yaml", settings)
    csv = root / "transactions.csv"
    small_transactions.rename(columns=UPPER).to_csv(csv, index=False)
    return root, config, csv, settings


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


def test_simulate_writes_daily_files_and_a_summary(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path / "c.yaml", make_settings(tmp_path / "w"))
    out = tmp_path / "days"
    code = run_cli(
        "simulate", "--config", config, "--output", out, "--customers", "100", "--days", "12"
    )
    assert code == 0
    assert len(list(out.glob("*.parquet"))) == 12
    assert "daily files" in capsys.readouterr().out
    assert run_cli("simulate", "--config", config, "--output", out, "--days", "12") == 2
    assert "fraudflow simulate: error" in capsys.readouterr().err


def test_a_command_without_config_reads_the_overlay_fraudflow_config_names(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """The image's jobs and its API read one overlay: $FRAUDFLOW_CONFIG, unless --config."""
    settings = make_settings(tmp_path / "w")
    config = write_config(tmp_path / "c.yaml", settings)
    monkeypatch.setenv("FRAUDFLOW_CONFIG", str(config))
    assert run_cli("simulate", "--customers", "50", "--terminals", "50", "--days", "3") == 0
    assert len(list(settings.data_path.glob("*.parquet"))) == 3
    # --config wins over the environment; a missing overlay is named
    monkeypatch.setenv("FRAUDFLOW_CONFIG", str(tmp_path / "missing.yaml"))
    assert run_cli("simulate", "--days", "3") == 2
    assert f"config file not found: {tmp_path / 'missing.yaml'}" in capsys.readouterr().err
    out = tmp_path / "days"
    assert run_cli("simulate", "--config", config, "--output", out, "--days", "2") == 0
    assert len(list(out.glob("*.parquet"))) == 2


def test_train_with_an_upper_case_mapping_registers_a_version(workspace, capsys) -> None:
    root, config, csv, settings = workspace
    summary_path = root / "train.json"
    assert run_cli("train", "--config", config, "--data", csv, "--output", summary_path) == 0
    summary = json.loads(summary_path.read_text())
    assert summary["model_name"] == "fraud-detector" and str(summary["model_version"]) == "1"
    assert summary["row_counts"]["rows_train"] > 0
    assert 0 < summary["test_metrics"]["average_precision"] <= 1
    assert "trained fraud-detector v1" in capsys.readouterr().out


def test_check_gates_passes_fails_and_answers_with_its_exit_code(
    workspace, tmp_path: Path, capsys
) -> None:
    """`make model-check`'s gate: the training summary against the config's promotion.gates."""
    root, config, _, settings = workspace
    summary = root / "train.json"
    out = tmp_path / "gates.json"
    assert run_cli("check-gates", "--config", config, "--summary", summary, "--output", out) == 0
    lines = capsys.readouterr().out
    assert all(f"{name:>20}: " in lines for name in settings.promotion.gates)
    assert json.loads(out.read_text())["passed"] is True
    strict = make_settings(settings.workdir, promotion={"gates": {"average_precision": 1.01}})
    strict_config = write_config(tmp_path / "strict.yaml", strict)
    assert run_cli("check-gates", "--config", strict_config, "--summary", summary) == 1
    assert "FAILED: average_precision " in capsys.readouterr().err
    typo = make_settings(settings.workdir, promotion={"gates": {"auc_typo": 0.1}})
    typo_config = write_config(tmp_path / "typo.yaml", typo)
    assert run_cli("check-gates", "--config", typo_config, "--summary", summary) == 1
    assert "FAILED: gate on auc_typo, which training does not report" in capsys.readouterr().err


def test_training_gate_failures_name_each_missed_gate_and_unknown_metrics() -> None:
    metrics = {"f1": 0.4, "precision": 0.3, "recall": 0.6}
    assert training_gate_failures(metrics, {"f1": 0.3, "recall": 0.5}) == []
    assert training_gate_failures(metrics, {"f1": 0.5}) == ["f1 0.4000 < gate 0.5000"]
    assert "does not report" in training_gate_failures(metrics, {"auc_typo": 0.1})[0]


def test_check_gates_and_export_model_refuse_a_summary_they_cannot_use(
    workspace, tmp_path: Path, capsys
) -> None:
    _, config, _, _ = workspace
    with pytest.raises(SystemExit) as refused:
        run_cli("check-gates", "--config", config)
    assert refused.value.code == 2
    assert "--summary" in capsys.readouterr().err
    missing = tmp_path / "missing.json"
    assert run_cli("check-gates", "--config", config, "--summary", missing) == 2
    assert "fraudflow check-gates: error: [Errno 2] No such file" in capsys.readouterr().err
    garbled = tmp_path / "garbled.json"
    garbled.write_text("{not json")
    assert run_cli("check-gates", "--config", config, "--summary", garbled) == 2
    assert "is not JSON" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": 3}))
    assert run_cli("check-gates", "--config", config, "--summary", other) == 2
    assert "lacks test_metrics" in capsys.readouterr().err
    out = tmp_path / "model"
    assert run_cli("export-model", "--config", config, "--summary", other, "--output", out) == 2
    assert "lacks model_name, model_version" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        run_cli("export-model", "--config", config, "--summary", other)
    assert refused.value.code == 2
    assert "--output" in capsys.readouterr().err


def test_export_model_copies_the_trained_versions_model_folder(
    workspace, tmp_path: Path, capsys
) -> None:
    root, config, _, _ = workspace
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier export")
    summary = root / "train.json"
    assert run_cli("export-model", "--config", config, "--summary", summary, "--output", out) == 0
    assert f"exported 1 to {out}" in capsys.readouterr().out
    assert (out / "MLmodel").is_file() and not (out / "stale.txt").exists()
    assert (out / "requirements.txt").is_file() and any((out / "artifacts").iterdir())
    unknown = tmp_path / "v99.json"
    unknown.write_text(json.dumps({"model_name": "fraud-detector", "model_version": 99}))
    assert run_cli("export-model", "--config", config, "--summary", unknown, "--output", out) == 1
    assert "fraudflow export-model: failed: model 'fraud-detector' has no version 99" in (
        capsys.readouterr().err
    )


def test_promote_then_score_every_input_row(workspace, small_transactions, capsys) -> None:
    root, config, csv, _ = workspace
    assert run_cli("promote", "--config", config, "--version", "1", "--stage", "Production") == 0
    out = root / "scores.csv"
    assert run_cli("score", "--config", config, "--data", csv, "--output", out) == 0
    scores = pd.read_csv(out, dtype={"transaction_id": str})
    assert len(scores) == len(small_transactions)
    assert set(scores["transaction_id"]) == set(small_transactions["transaction_id"])
    assert scores["fraud_probability"].between(0, 1).all()
    fraud = small_transactions.set_index("transaction_id")["tx_fraud"]
    by_label = scores.set_index("transaction_id")["fraud_probability"].groupby(fraud).mean()
    assert by_label[1] > 5 * by_label[0]
    history_path = root / "history.json"
    assert run_cli("promote", "--config", config, "--history", "--output", history_path) == 0
    history = json.loads(history_path.read_text())["history"]
    assert history[0]["version"] == "1" and history[0]["stage"] == "Production"


def test_record_promotion_writes_the_version_in_service(workspace, tmp_path: Path, capsys):
    _, config, _, _ = workspace
    out = tmp_path / "deploy" / "model-version.json"
    assert run_cli("record-promotion", "--config", config, "--output", out) == 0
    assert f"champion: fraud-detector v1 -> {out}" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["version"] == "1" and record["stage"] == "Production"
    assert record["alias"] == "champion"
    assert "threshold" in record["tags"] and "promotion.by" in record["tags"]
    assert any(key.startswith("test_") for key in record["tags"])
    empty = write_config(tmp_path / "empty.yaml", make_settings(tmp_path / "empty"))
    assert run_cli("record-promotion", "--config", empty, "--output", tmp_path / "x.json") == 1
    err = capsys.readouterr().err
    assert "fraudflow record-promotion: failed: no version of 'fraud-detector' is in service" in err
    assert not (tmp_path / "x.json").exists()


def test_backtest_logs_a_parent_run_with_one_nested_run_per_fold(workspace) -> None:
    root, config, csv, settings = workspace
    out = root / "backtest.json"
    assert (
        run_cli("backtest", "--config", config, "--data", csv, "--folds", "2", "--output", out) == 0
    )
    report = json.loads(out.read_text())
    assert [f["fold"] for f in report["folds"]] == [0, 1]
    assert report["folds"][0]["windows"]["test_start"] > report["folds"][1]["windows"]["test_start"]
    for metric in ("roc_auc", "average_precision", "card_precision_at_100"):
        assert set(report["summary"][metric]) == {"mean", "std"}
    client = MlflowClient(settings.tracking_uri)
    children = client.search_runs(
        [client.get_run(report["run_id"]).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{report['run_id']}'",
    )
    assert len(children) == 2
    assert all("average_precision" in c.data.metrics for c in children)


def test_bad_data_is_refused_with_the_column_and_row_count(tmp_path: Path, workspace, capsys):
    _, config, csv, _ = workspace
    frame = pd.read_csv(csv, dtype=str).head(500)
    frame.loc[:2, "TX_AMOUNT"] = "-5"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    assert run_cli("train", "--config", config, "--data", bad) == 2
    err = capsys.readouterr().err
    assert "tx_amount" in err and "TX_AMOUNT" in err and "3 rows" in err


def test_unknown_version_and_missing_flags_are_usage_errors(workspace, capsys) -> None:
    _, config, _, _ = workspace
    assert run_cli("promote", "--config", config, "--version", "99", "--stage", "Production") == 1
    assert "no version 99" in capsys.readouterr().err
    assert run_cli("promote", "--config", config) == 2
    assert "--auto" in capsys.readouterr().err


@pytest.mark.integration
def test_mlflow_run_train_entry_point(tmp_path: Path, small_data_dir: Path) -> None:
    """`mlflow run . -e train --env-manager local` trains and registers through the CLI."""
    settings = make_settings(tmp_path / "work")
    config = write_config(tmp_path / "overlay.yaml", settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FRAUDFLOW__"))}
    env["MLFLOW_TRACKING_URI"] = settings.tracking_uri
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    out = tmp_path / "summary.json"
    store.client(settings).create_experiment(  # artifacts under tmp, not ./mlruns
        settings.mlflow.experiment, artifact_location=settings.artifact_root.as_uri()
    )
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "run",
        str(REPO),
        "-e",
        "train",
        "--env-manager",
        "local",
        "--experiment-name",
        settings.mlflow.experiment,
        "-P",
        f"data={small_data_dir}",
        "-P",
        f"config={config}",
        "-P",
        f"output={out}",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())
    client = store.client(settings)
    run = client.get_run(summary["run_id"])
    assert run.data.tags.get("mlflow.project.entryPoint") == "train"
    assert "test_average_precision" in run.data.metrics
    version = client.get_model_version("fraud-detector", str(summary["model_version"]))
    assert version.run_id == summary["run_id"]


def test_every_mlproject_entry_point_is_a_command_line_the_cli_accepts() -> None:
    """Each entry point's command, with its parameters filled in as `mlflow run` does, parses
    with the parser of the command it calls (a renamed flag breaks this, not a scheduler)."""
    import shlex

    from mlflow.projects._project_spec import load_project

    from fraudflow.cli import build_parser

    project = load_project(str(REPO))
    names = set(project._entry_points)
    assert {"train", "promote", "monitor", "monitor_and_retrain", "retrain"} <= names
    for name in names:
        entry = project.get_entry_point(name)
        values = {  # quoted as mlflow run quotes them
            key: shlex.quote("x" if param.default in (None, "") else str(param.default))
            for key, param in entry.parameters.items()
        }
        command = entry.command.format(**values)
        argv = shlex.split(command)
        assert argv[0] == "fraudflow", command
        assert build_parser().parse_args(argv[1:]).command == argv[1]


def test_registry_account_refuses_a_command_line_it_cannot_act_on(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """The checks that come before any call to a tracking server (tests/test_deploy_stack.py
    runs the command against a real one)."""
    config = write_config(tmp_path / "c.yaml", make_settings(tmp_path / "w"))
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("FRAUDFLOW_REGISTRY_ACCOUNT_PASSWORD", raising=False)
    with pytest.raises(SystemExit) as refused:
        run_cli("registry-account", "--config", config)
    assert refused.value.code == 2 and "--username" in capsys.readouterr().err
    assert run_cli("registry-account", "--config", config, "--username", "api") == 2
    assert "no tracking server: set MLFLOW_TRACKING_URI" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert run_cli("registry-account", "--config", config, "--username", "api") == 2
    assert "set FRAUDFLOW_REGISTRY_ACCOUNT_PASSWORD" in capsys.readouterr().err
    monkeypatch.setenv("FRAUDFLOW_REGISTRY_ACCOUNT_PASSWORD", "service-secret-123")
    assert run_cli("registry-account", "--config", config, "--username", "api") == 1
    err = capsys.readouterr().err
    assert "fraudflow registry-account: failed: MLFLOW_TRACKING_USERNAME" in err
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "admin-secret-456")
    assert run_cli("registry-account", "--config", config, "--username", "admin") == 1
    err = capsys.readouterr().err
    assert "is the admin account" in err
    assert "service-secret-123" not in err and "admin-secret-456" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--retrain", "yes"], "unrecognized arguments: yes"),
        (["--day", "2026-13-01"], "--day: a day must be YYYY-MM-DD, not '2026-13-01'"),
        (["--day", "2026-01-01", "--since", "2025-12-31"], "--day and --since/--until exclude"),
        (["--since", "yesterday-ish"], "--since/--until must be ISO times"),
        (["--since", "2026-01-02", "--until", "2026-01-01"], "empty window: --since 2026-01-02"),
    ],
)
def test_a_monitor_command_line_it_cannot_use_is_the_error_verdict(
    tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    """Exit code 3, never 2 (argparse's usual code), which a scheduler reads as "degraded"."""
    config = write_config(tmp_path / "c.yaml", make_settings(tmp_path / "w"))
    try:
        code = run_cli("monitor", "--config", config, *args)
    except SystemExit as refused:
        code = refused.code
    assert code == 3
    assert message in capsys.readouterr().err


def test_the_monitor_window_from_the_command_line(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, monitoring={"window_hours": 6})
    day = monitor_window(settings, "2026-03-01", None, None)
    assert (day.start.isoformat(), day.end.isoformat()) == (
        "2026-03-01T00:00:00+00:00",
        "2026-03-02T00:00:00+00:00",
    )
    since = monitor_window(settings, None, "2026-03-01T10:00", "2026-03-01T12:00+01:00")
    assert since.start == datetime(2026, 3, 1, 10, tzinfo=timezone.utc)
    assert since.end == datetime(2026, 3, 1, 11, tzinfo=timezone.utc)
    until = monitor_window(settings, None, None, "2026-03-01T12:00")
    assert until.end - until.start == timedelta(hours=6)
    last = monitor_window(settings, None, None, None)
    assert last.end - last.start == timedelta(hours=6)
    assert abs(last.end - datetime.now(timezone.utc)) < timedelta(minutes=1)
    with pytest.raises(UsageError, match="empty window"):
        monitor_window(settings, None, "2026-03-01T12:00", "2026-03-01T12:00")


def test_other_commands_refuse_a_bad_command_line_with_exit_code_2(capsys) -> None:
    with pytest.raises(SystemExit) as refused:
        run_cli("train", "--bogus")
    assert refused.value.code == 2
    assert "fraudflow train: error: unrecognized arguments: --bogus" in capsys.readouterr().err
