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

from pipelines.monitor_summary import MonitorSummary, Verdict, read_summary

# per model (label model_role: champion | challenger): name, help, the comparison's key
LIVE_PER_ROLE = (
    ("average_precision", "Average precision on the labelled transactions both models scored"),
    ("card_precision_at_k", "Card precision@k (mean of days) on the shared labelled transactions"),
    (
        "recall_at_alert_volume",
        "Recall at the champion's alert volume on the shared labelled transactions",
    ),
)
# one value each: name, help, the comparison's key
LIVE_SHARED = (
    ("ap_difference", "Average precision of the challenger minus the champion's", "ap_difference"),
    ("ap_difference_low", "Lower end of the paired bootstrap interval", "ap_difference_low"),
    ("ap_difference_high", "Upper end of the paired bootstrap interval", "ap_difference_high"),
    ("agreement_rate", "Share of shared transactions both models decided alike", "agreement_rate"),
    ("score_psi", "PSI of the challenger's scores against the champion's", "score_psi"),
    ("top_k_overlap", "Share of the day's top-k cards both models name", "top_k_overlap"),
    ("labelled_frauds", "Labelled frauds among the shared transactions", "labelled_frauds"),
    ("days", "Days the shared labelled transactions cover", "days"),
)
LIVE_VERDICTS = ("challenger better", "champion holds", "insufficient evidence")


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
        yield from live_gauges(summary)


def live_gauges(summary: MonitorSummary) -> Iterator[GaugeMetricFamily]:
    """The last monitor run's champion-against-challenger figures (none when its window held
    no transaction both scored): per model with the label `model_role`, the rest unlabelled."""
    live = summary.live
    if not live:
        return
    for name, help_text in LIVE_PER_ROLE:
        gauge = GaugeMetricFamily(
            f"fraudflow_live_{name}", f"{help_text} (last monitor run)", labels=["model_role"]
        )
        for role in ("champion", "challenger"):
            gauge.add_metric([role], float(live[role][name]))
        yield gauge
    for name, help_text, key in LIVE_SHARED:
        yield GaugeMetricFamily(
            f"fraudflow_live_{name}", f"{help_text} (last monitor run)", value=float(live[key])
        )
    verdict = GaugeMetricFamily(
        "fraudflow_live_verdict",
        "The last monitor run's live comparison verdict (1 for the current one)",
        labels=["verdict"],
    )
    for name in LIVE_VERDICTS:
        verdict.add_metric([name.replace(" ", "_")], 1.0 if live["verdict"] == name else 0.0)
    yield verdict
