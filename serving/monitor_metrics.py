"""The monitor's latest verdict on /metrics, so that an alert can fire on drift.

The monitor is a separate daily job; it leaves its last summary in `<reports_dir>/latest.json`.
This collector reads that file at each scrape: no state in the workers, nothing to keep in sync.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

VERDICTS = ("no_drift", "drift", "degraded", "error")


class MonitorCollector(Collector):
    def __init__(self, latest: Path) -> None:
        self.latest = Path(latest)

    def _read(self) -> dict | None:
        try:
            return json.loads(self.latest.read_text())
        except (OSError, ValueError):
            return None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        summary = self._read()
        if summary is None:
            return
        verdict = GaugeMetricFamily(
            "fraudflow_monitor_verdict",
            "The last monitor run's verdict (1 for the current one)",
            labels=["verdict"],
        )
        for name in VERDICTS:
            verdict.add_metric([name], 1.0 if summary.get("verdict") == name else 0.0)
        yield verdict
        checked = summary.get("checked_at")
        if checked:
            yield GaugeMetricFamily(
                "fraudflow_monitor_last_run_timestamp_seconds",
                "When the monitor last ran",
                value=datetime.fromisoformat(checked).timestamp(),
            )
        drift = summary.get("drift")
        if not drift:
            return  # an error summary carries no drift figures
        yield GaugeMetricFamily(
            "fraudflow_drift_share",
            "Share of the model's features that drifted in the last monitor run",
            value=float(drift["drifted_share"]),
        )
        if drift.get("score"):
            yield GaugeMetricFamily(
                "fraudflow_prediction_drift_score",
                "Drift score of the predicted fraud probability in the last monitor run",
                value=float(drift["score"]["score"]),
            )
