"""Reading an Evidently result into a typed drift summary, apart from building the report.

Evidently's result format has changed across versions; this is the one place that knows it
(0.7: `snapshot.dict()["metrics"]`, entries named `DriftedColumnsCount(...)` and
`ValueDrift(column=...,method=...,threshold=...)`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Tests whose score is a p-value: drift when the score falls *below* the threshold. Every other
# method is a distance: drift when the score reaches the threshold.
P_VALUE_METHODS = frozenset(
    {
        "Anderson-Darling",
        "Cramer-von Mises",
        "Epps-Singleton",
        "Fisher's Exact test",
        "Mann-Whitney U-rank test",
        "empirical_mmd",
        "g_test",
        "t_test",
    }
)


class ReportFormatError(ValueError):
    """The report does not hold what a drift summary needs (an Evidently format change?)."""


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    threshold: float
    score: float
    drifted: bool


@dataclass(frozen=True)
class DriftSummary:
    """Feature drift (count and share of drifted features, per-feature detail) and the drift of
    the predicted fraud probability."""

    drifted_count: int
    drifted_share: float
    columns: tuple[ColumnDrift, ...]
    score: ColumnDrift | None

    @property
    def drifted_features(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    def as_dict(self) -> dict[str, Any]:
        return {
            "drifted_count": self.drifted_count,
            "drifted_share": self.drifted_share,
            "drifted_features": self.drifted_features,
            "columns": [asdict(c) for c in self.columns],
            "score": asdict(self.score) if self.score else None,
        }


def is_drifted(method: str, score: float, threshold: float) -> bool:
    if method in P_VALUE_METHODS or "p_value" in method:
        return score < threshold
    return score >= threshold


def _arguments(metric_name: str) -> dict[str, str]:
    """`ValueDrift(column=a,method=K-S p_value,threshold=0.05)` -> its keyword arguments."""
    inside = metric_name[metric_name.index("(") + 1 : metric_name.rindex(")")]
    arguments: dict[str, str] = {}
    key = None
    for part in inside.split(","):
        if "=" in part:
            key, value = part.split("=", 1)
            arguments[key] = value
        elif key is not None:  # a comma inside a value
            arguments[key] += "," + part
    return arguments


def _column_drift(entry: dict[str, Any]) -> ColumnDrift:
    config = entry.get("config", {})
    arguments = _arguments(entry["metric_name"])
    column = config.get("column") or arguments.get("column")
    method = config.get("method") or arguments.get("method")
    threshold = config.get("threshold", arguments.get("threshold"))
    if column is None or method is None or threshold is None or entry.get("value") is None:
        raise ReportFormatError(f"incomplete drift entry: {entry.get('metric_name')}")
    score, threshold = float(entry["value"]), float(threshold)
    return ColumnDrift(
        str(column), str(method), threshold, score, is_drifted(method, score, threshold)
    )


def parse(report: dict[str, Any], score_column: str = "fraud_probability") -> DriftSummary:
    """Typed drift summary of a report built by `drift.report.drift_report`."""
    metrics = report.get("metrics")
    if not isinstance(metrics, list):
        raise ReportFormatError("the report has no 'metrics' list")
    count = None
    columns: list[ColumnDrift] = []
    score = None
    for entry in metrics:
        name = str(entry.get("metric_name", ""))
        if name.startswith("DriftedColumnsCount"):
            count = entry["value"]
        elif name.startswith("ValueDrift"):
            drift = _column_drift(entry)
            if drift.column == score_column:
                score = drift
            else:
                columns.append(drift)
    if count is None:
        raise ReportFormatError("the report has no DriftedColumnsCount")
    if not columns:
        raise ReportFormatError("the report has no per-feature ValueDrift")
    return DriftSummary(
        drifted_count=int(count["count"]),
        drifted_share=float(count["share"]),
        columns=tuple(columns),
        score=score,
    )
