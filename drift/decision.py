"""The monitor's verdict and the exit code a scheduler acts on."""

from __future__ import annotations

from enum import Enum

from drift.performance import Performance
from drift.summary import DriftSummary
from pipelines.settings import MonitoringSettings


class Verdict(str, Enum):
    NO_DRIFT = "no_drift"
    DRIFT = "drift"
    DEGRADED = "degraded"
    ERROR = "error"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self]


EXIT_CODES = {Verdict.NO_DRIFT: 0, Verdict.DRIFT: 1, Verdict.DEGRADED: 2, Verdict.ERROR: 3}


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
