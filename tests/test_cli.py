"""The `fraudflow` command line and the MLflow Project entry point, end to end on small data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from fraudflow.cli import main
from pipelines.mlflow import store
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
