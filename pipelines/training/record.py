"""What a training run records: its params, metrics, figures, model, reference sample and the
tags and description of the version it registers, handed to the MLflow edge to log."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from pipelines.mlflow import runs
from pipelines.mlflow.store import ModelVersion
from pipelines.settings import Settings
from pipelines.training.plots import evaluation_figures
from pipelines.training.train import TrainingResult


def data_description(path: str | Path, transactions: pd.DataFrame) -> dict[str, str | int]:
    """Where the training data came from and the window it covers, logged as run params."""
    return {
        "data_path": str(path),
        "data_rows": len(transactions),
        "data_start": transactions["tx_datetime"].min().isoformat(),
        "data_end": transactions["tx_datetime"].max().isoformat(),
    }


def log_training_run(
    result: TrainingResult,
    settings: Settings,
    data: dict[str, str | int],
    tags: dict[str, str] | None = None,
) -> tuple[str, ModelVersion]:
    """Log params, the resolved training configuration, metrics, figures, the reference sample
    and the model; register a version.

    `tags` (e.g. what triggered a retraining) go on the run and on the model version; inside an
    active run (a retraining) the training run is nested under it.
    """
    figures = evaluation_figures(result.test.labels, result.test_scores, result.scorer)
    try:
        return runs.log_training_run(
            settings,
            params=_params(result, settings, data),
            metrics={
                **{f"test_{k}": v for k, v in result.test_metrics.items()},
                **{f"validation_{k}": v for k, v in result.validation_metrics.items()},
                **result.row_counts,
                "best_iteration": float(result.best_iteration),
                "threshold": result.scorer.threshold,
            },
            figures=figures,
            scorer=result.scorer,
            example=_example(result.test.features),
            reference=result.reference,
            version_tags=_version_tags(result, settings, tags or {}),
            description=_description(result),
            tags=tags,
        )
    finally:
        for figure in figures.values():
            plt.close(figure)


def _params(
    result: TrainingResult, settings: Settings, data: dict[str, str | int]
) -> dict[str, object]:
    return {
        **{f"lgbm_{k}": v for k, v in result.params.items()},
        **data,
        **result.windows.as_dict(),
        "label_delay_days": settings.features.label_delay_days,
        "threshold_rule": settings.training.threshold.rule,
        "imbalance_power": settings.training.imbalance_power,
        "max_rounds": settings.training.max_rounds,
        "early_stopping_rounds": settings.training.early_stopping_rounds,
        "features": ",".join(result.scorer.features),
    }


def _example(features: pd.DataFrame) -> pd.DataFrame:
    """The input example logged with the model: complete rows where there are some."""
    example = features.dropna().head(5)
    return example if not example.empty else features.head(5).fillna(0.0)


def _version_tags(
    result: TrainingResult, settings: Settings, extra: dict[str, str]
) -> dict[str, str]:
    return {
        **extra,
        "threshold": f"{result.scorer.threshold:.6f}",
        **result.windows.as_dict(),
        **{
            f"{runs.TEST_METRIC_TAG}{k}": f"{v:.6f}"
            for k, v in result.test_metrics.items()
            if pd.notna(v)
        },
        "label_delay_days": str(settings.features.label_delay_days),
    }


def _description(result: TrainingResult) -> str:
    metrics = result.test_metrics
    return (
        f"LightGBM trained on {result.windows.train.start.date()}.."
        f"{result.windows.train.end.date()} (exclusive); test AP "
        f"{metrics['average_precision']:.3f}, ROC-AUC {metrics['roc_auc']:.3f}, "
        f"threshold {result.scorer.threshold:.4f}."
    )
