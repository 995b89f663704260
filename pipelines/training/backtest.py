"""The handbook's prequential protocol: K weekly folds, each trained and tested afresh."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipelines.mlflow import runs
from pipelines.settings import Settings
from pipelines.split import day_after_last
from pipelines.training.train import TrainingResult, featurize, train_model

HEADLINE = ("roc_auc", "average_precision")


@dataclass(frozen=True)
class FoldResult:
    fold: int
    windows: dict[str, str]
    metrics: dict[str, float]
    row_counts: dict[str, int]


def fold_settings(settings: Settings, fold_end: pd.Timestamp) -> Settings:
    """The training settings of one fold: backtest lengths, anchored at the fold's test end."""
    training = settings.training.model_copy(
        update={
            "end_date": fold_end.date(),
            "train_start": None,
            "train_days": settings.backtest.train_days or settings.training.train_days,
            "test_days": settings.backtest.test_days,
            "known_cards_days": settings.backtest.known_cards_days,
        }
    )
    return settings.model_copy(update={"training": training})


def fold_ends(transactions: pd.DataFrame, settings: Settings) -> list[pd.Timestamp]:
    """Exclusive test-period ends, newest first, one fold step apart."""
    end = day_after_last(transactions["tx_datetime"])
    step = pd.Timedelta(days=settings.backtest.fold_step_days)
    return [end - i * step for i in range(settings.backtest.folds)]


def summarize(folds: list[FoldResult], k: int) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of each headline metric over folds."""
    summary = {}
    for metric in (*HEADLINE, f"card_precision_at_{k}", f"card_precision_at_{k}_drop_detected"):
        values = np.array([f.metrics[metric] for f in folds], dtype=float)
        summary[metric] = {"mean": float(np.nanmean(values)), "std": float(np.nanstd(values))}
    return summary


def _headline(result: TrainingResult, k: int) -> dict[str, float]:
    keys = (
        *HEADLINE,
        f"card_precision_at_{k}",
        f"card_precision_at_{k}_drop_detected",
        "precision",
        "recall",
        "f1",
    )
    return {key: float(result.test_metrics[key]) for key in keys}


def backtest_folds(
    transactions: pd.DataFrame,
    settings: Settings,
    features: pd.DataFrame,
    progress: bool = False,
) -> tuple[list[FoldResult], list[int]]:
    """Train and test every fold on `features` (their columns are the model's inputs); each
    fold's result and its model's best iteration."""
    k = settings.training.card_precision_k
    folds: list[FoldResult] = []
    iterations: list[int] = []
    ends = fold_ends(transactions, settings)
    bar = tqdm(ends, desc="backtest folds", unit="fold", disable=None if progress else True)
    for index, end in enumerate(bar):
        result = train_model(transactions, fold_settings(settings, end), features)
        folds.append(
            FoldResult(index, result.windows.as_dict(), _headline(result, k), result.row_counts)
        )
        iterations.append(result.best_iteration)
    return folds, iterations


def run_backtest(
    transactions: pd.DataFrame,
    settings: Settings,
    log_to_mlflow: bool = True,
    progress: bool = False,
) -> dict[str, object]:
    """Train and test every fold; log a parent run with one nested run per fold. With
    `progress`, a bar of folds on a terminal (none when stderr is not one)."""
    k = settings.training.card_precision_k
    features = featurize(transactions, settings.features)
    folds, iterations = backtest_folds(transactions, settings, features, progress)
    summary = summarize(folds, k)
    report: dict[str, object] = {
        "folds": [f.__dict__ for f in folds],
        "summary": summary,
        "protocol": {
            "label_delay_days": settings.features.label_delay_days,
            **settings.backtest.model_dump(),
            "validation_days": settings.training.validation_days,
        },
    }
    if log_to_mlflow:
        report["run_id"] = runs.log_backtest(
            settings,
            {f"backtest_{key}": value for key, value in settings.backtest.model_dump().items()},
            [
                {
                    "params": {**fold.windows, "best_iteration": iteration},
                    "metrics": {**fold.metrics, **fold.row_counts},
                }
                for fold, iteration in zip(folds, iterations)
            ],
            {
                f"{metric}_{stat}": value
                for metric, stats in summary.items()
                for stat, value in stats.items()
            },
        )
    return report
