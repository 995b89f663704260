"""The monitor's latest verdict on /metrics, so that an alert can fire on drift.

The monitor is a separate daily job; it leaves its last summary where
`pipelines.monitor_summary` writes it. This collector reads it at each scrape: no state in the
workers, nothing to keep in sync.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pipelines.monitor_summary import Verdict, read_summary


class MonitorCollector(Collector):
    def __init__(self, latest: Path) -> None:
        self.latest = Path(latest)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        summary = read_summary(self.latest)
        if summary is None:
            return
        verdict = GaugeMetricFamily(
            "fraudflow_monitor_verdict",
            "The last monitor run's verdict (1 for the current one)",
            labels=["verdict"],
        )
        for name in Verdict:
            verdict.add_metric([name.value], 1.0 if summary.verdict is name else 0.0)
        yield verdict
        yield GaugeMetricFamily(
            "fraudflow_monitor_last_run_timestamp_seconds",
            "When the monitor last ran",
            value=summary.checked_timestamp,
        )
        if summary.drifted_share is None:
            return  # an error summary carries no drift figures
        yield GaugeMetricFamily(
            "fraudflow_drift_share",
            "Share of the model's features that drifted in the last monitor run",
            value=summary.drifted_share,
        )
        if summary.prediction_drift_score is not None:
            yield GaugeMetricFamily(
                "fraudflow_prediction_drift_score",
                "Drift score of the predicted fraud probability in the last monitor run",
                value=summary.prediction_drift_score,
            )
