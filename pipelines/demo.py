"""The demo flow: simulate, train, register, auto-promote, and say where to look."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.data import load_transactions
from pipelines.registry import champion_version, promote_if_better
from pipelines.settings import Settings
from pipelines.simulate import fraud_summary, simulate_transactions, write_daily_parquet
from pipelines.tracking import configure_tracking, data_description, log_training_run
from pipelines.train import train_model


def _has_data(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.parquet"))


def run_demo(settings: Settings, data: str | None = None, fresh: bool = False) -> dict[str, Any]:
    """Run the training side end to end on the configured (by default embedded) store."""
    path = Path(data) if data else settings.data_path
    if data is None and (fresh or not _has_data(path)):
        print(f"[1/11] simulating transactions into {path}")
        simulated = simulate_transactions(settings.simulation, progress=True)
        write_daily_parquet(simulated, path, progress=True, overwrite=True)
        print(f"      {fraud_summary(simulated)}")
    else:
        print(f"[1/11] using transactions in {path}")
    transactions = load_transactions(path, settings.data.columns, require_labels=True)

    print(f"[2/11] training on {len(transactions):,} transactions (features, LightGBM)")
    result = train_model(transactions, settings)
    description = data_description(path, transactions)
    print("[3/11] logging the run and registering the model in MLflow")
    run_id, version = log_training_run(result, settings, description)

    print("[4/11] gated promotion: newest version against the champion")
    decision = promote_if_better(settings, transactions)
    client = configure_tracking(settings)
    champion = champion_version(client, settings.mlflow.model_name, settings.mlflow.champion_alias)
    registered = client.get_model_version(settings.mlflow.model_name, version.version)
    summary = {
        "run_id": run_id,
        "model": settings.mlflow.model_name,
        "version": version.version,
        "stage": registered.current_stage,
        "aliases": list(registered.aliases or []),
        "champion": champion.version if champion else None,
        "decision": decision.reason,
        "test_metrics": result.test_metrics,
        "tracking_uri": settings.tracking_uri,
    }
    _print_summary(summary, result.windows.as_dict(), settings)
    return summary


def _print_summary(summary: dict[str, Any], windows: dict[str, str], settings: Settings) -> None:
    metrics = summary["test_metrics"]
    k = settings.training.card_precision_k
    rows = [
        ("ROC-AUC", metrics["roc_auc"]),
        ("average precision", metrics["average_precision"]),
        (f"card precision@{k}", metrics[f"card_precision_at_{k}"]),
        ("precision", metrics["precision"]),
        ("recall", metrics["recall"]),
        ("F1", metrics["f1"]),
    ]
    print()
    print(f"test period {windows['test_start']} .. {windows['test_end']} (exclusive):")
    print(pd.DataFrame(rows, columns=["metric", "value"]).to_string(index=False))
    aliases = ", ".join("@" + a for a in summary["aliases"]) or "no alias"
    print(
        f"\nregistered {summary['model']} v{summary['version']}: stage {summary['stage']}, "
        f"{aliases}; champion: v{summary['champion']}"
    )
    print(f"promotion: {summary['decision']}")
    uri = summary["tracking_uri"]
    ui = f"mlflow ui --backend-store-uri {uri}"
    if not settings.mlflow.tracking_uri:
        ui += f" --default-artifact-root {settings.artifact_root.as_uri()}"
    print(f"\nopen the MLflow UI on this store:\n  .venv/bin/{ui}\n  then http://127.0.0.1:5000")
