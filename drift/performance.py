"""Performance on late labels: the labelled part of the window against training-time values."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd

from pipelines.evaluate import evaluate_scores
from pipelines.settings import MonitoringSettings


@dataclass(frozen=True)
class Performance:
    """Metrics on labelled production rows; `assessed` is False while too few frauds arrived."""

    labelled_rows: int
    labelled_frauds: int
    assessed: bool
    production: dict[str, float] = field(default_factory=dict)
    training: dict[str, float] = field(default_factory=dict)
    degraded_metrics: tuple[str, ...] = ()

    @property
    def degraded(self) -> bool:
        return bool(self.degraded_metrics)

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "degraded": self.degraded}


def assess_performance(
    current: pd.DataFrame,
    threshold: float,
    training: dict[str, float],
    settings: MonitoringSettings,
    k: int,
) -> Performance:
    """Precision, recall, average precision and card precision@k where labels have arrived,
    each compared with its training-time value less the configured tolerance."""
    labelled = current.loc[current["tx_fraud"].notna().to_numpy()]
    frauds = int(labelled["tx_fraud"].sum())
    if frauds < settings.min_labelled_frauds or labelled["tx_fraud"].nunique() < 2:
        return Performance(len(labelled), frauds, False, training=dict(training))
    metrics = evaluate_scores(
        labelled.assign(tx_fraud=labelled["tx_fraud"].astype(int)),
        labelled["fraud_probability"].to_numpy(float),
        threshold,
        k,
    )
    degraded = tuple(
        metric
        for metric, tolerance in settings.tolerance.items()
        if metric in training and metrics[metric] < training[metric] - tolerance
    )
    return Performance(len(labelled), frauds, True, metrics, dict(training), degraded)
