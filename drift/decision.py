"""The monitor's decision: from drift and performance figures to a verdict."""

from __future__ import annotations

from drift.performance import Performance
from drift.report_parse import DriftSummary
from pipelines.monitor_summary import Verdict
from pipelines.settings import MonitoringSettings


def drift_detected(drift: DriftSummary, settings: MonitoringSettings) -> bool:
    """Enough features drifted, or (if configured) the predicted probability did."""
    score_drifted = settings.score_drift and drift.score is not None and drift.score.drifted
    return drift.drifted_share >= settings.drift_share or score_drifted


def decide(drift: DriftSummary, performance: Performance, settings: MonitoringSettings) -> Verdict:
    """Degraded performance outranks drift: the model is measurably worse, not only exposed to
    a different world."""
    if performance.degraded:
        return Verdict.DEGRADED
    if drift_detected(drift, settings):
        return Verdict.DRIFT
    return Verdict.NO_DRIFT


def should_retrain(verdict: Verdict, settings: MonitoringSettings) -> bool:
    return verdict.value in settings.retrain_on
