"""Champion against challenger on live traffic: both models' scores of the same logged
transactions (shadow or canary), compared once their labels have arrived.

Pure: a frame in, figures and a verdict out. The log's room assembles the frame
(`pipelines.log.traffic.live_traffic`); the monitor shows the comparison, promotion acts on it.
Ranking metrics are `pipelines.evaluate`'s; the bootstrap re-weights one sorted order instead
of calling them thousands of times, and is proven equal to them in the tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.evaluate import card_precision_at_k, ranking_metrics
from pipelines.settings import LiveEvidenceSettings

CHALLENGER_BETTER = "challenger better"
CHAMPION_HOLDS = "champion holds"
INSUFFICIENT = "insufficient evidence"
VERDICTS = (CHALLENGER_BETTER, CHAMPION_HOLDS, INSUFFICIENT)

# what a frame of shared traffic holds (`shared_rows` keeps these)
COLUMNS = (
    "transaction_id",
    "tx_datetime",
    "customer_id",
    "tx_fraud",
    "champion_probability",
    "champion_decision",
    "challenger_probability",
    "challenger_decision",
)
PSI_BINS = 10
# a bin either model leaves empty counts as this share, so the PSI stays finite
PSI_FLOOR = 1e-4


def shared_rows(frame: pd.DataFrame, champion: str, challenger: str) -> pd.DataFrame:
    """The rows the champion version and the challenger version both scored (as those roles),
    in `COLUMNS`; empty when the frame carries no role fields."""
    if frame.empty or "challenger_version" not in frame:
        return pd.DataFrame(columns=list(COLUMNS))
    both = (
        (frame["champion_version"].astype(str) == str(champion))
        & (frame["challenger_version"].astype(str) == str(challenger))
        & frame["champion_probability"].notna()
        & frame["challenger_probability"].notna()
    ).to_numpy()
    found = frame.loc[both]
    if "tx_fraud" not in found:
        found = found.assign(tx_fraud=np.nan)
    return found[list(COLUMNS)].reset_index(drop=True)


def challenger_beside(
    frame: pd.DataFrame, champion: str, preferred: str | None = None
) -> str | None:
    """The challenger version scored beside `champion` in the frame: `preferred` (the registry's
    challenger) when it has rows, else the one with the most rows; None when there is none."""
    if frame.empty or "challenger_version" not in frame:
        return None
    beside = frame.loc[
        (frame["champion_version"].astype(str) == str(champion)).to_numpy()
        & frame["challenger_probability"].notna().to_numpy(),
        "challenger_version",
    ].astype(str)
    if beside.empty:
        return None
    if preferred is not None and (beside == str(preferred)).any():
        return str(preferred)
    counts = beside.value_counts()
    return str(max(counts.index, key=lambda v: (counts[v], v)))


@dataclass(frozen=True)
class ModelFigures:
    """One model's record on the shared labelled transactions."""

    average_precision: float
    card_precision_at_k: float
    recall_at_alert_volume: float


@dataclass(frozen=True)
class LiveComparison:
    """What the shared traffic says of the two versions. Ranking figures are on the labelled
    shared transactions; agreement, score PSI and top-k overlap need no label and use every
    shared transaction."""

    champion_version: str
    challenger_version: str
    rows: int
    labelled_rows: int
    labelled_frauds: int
    days: int
    first_day: str | None
    last_day: str | None
    k: int
    alert_volume: int
    champion: ModelFigures
    challenger: ModelFigures
    top_k_overlap: float
    agreement_rate: float
    score_psi: float
    ap_difference: float
    ap_difference_low: float
    ap_difference_high: float
    confidence: float
    bootstrap_samples: int
    verdict: str
    reasons: tuple[str, ...] = ()
    daily: tuple[dict[str, Any], ...] = field(default=(), repr=False)

    @property
    def challenger_better(self) -> bool:
        return self.verdict == CHALLENGER_BETTER

    def as_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["reasons"] = list(self.reasons)
        payload["daily"] = list(self.daily)
        return payload

    def metrics(self) -> dict[str, float]:
        """The figures as flat `live_*` metrics (see `flat_metrics`)."""
        return flat_metrics(self.as_dict())

    def summary_line(self) -> str:
        """One sentence for a reason text or a log line."""
        return (
            f"live evidence v{self.challenger_version} vs champion v{self.champion_version}: "
            f"{self.days} days ({self.first_day}..{self.last_day}), {self.labelled_rows} "
            f"labelled transactions, {self.labelled_frauds} frauds; average precision "
            f"{self.challenger.average_precision:.4f} vs {self.champion.average_precision:.4f}, "
            f"difference {self.ap_difference:+.4f} in [{self.ap_difference_low:+.4f}, "
            f"{self.ap_difference_high:+.4f}] ({self.confidence:.0%}): {self.verdict}"
        )


FLAT = (
    "rows",
    "labelled_rows",
    "labelled_frauds",
    "days",
    "alert_volume",
    "top_k_overlap",
    "agreement_rate",
    "score_psi",
    "ap_difference",
    "ap_difference_low",
    "ap_difference_high",
)


def flat_metrics(comparison: dict[str, Any]) -> dict[str, float]:
    """A comparison (`LiveComparison.as_dict`, as a summary keeps it) as flat `live_*`
    metrics, per model `live_champion_*` and `live_challenger_*`: what MLflow runs record."""
    figures = {f"live_{name}": float(comparison[name]) for name in FLAT}
    figures["live_challenger_better"] = float(comparison["verdict"] == CHALLENGER_BETTER)
    for role in ("champion", "challenger"):
        for name, value in comparison[role].items():
            figures[f"live_{role}_{name}"] = float(value)
    return figures


def recall_at_volume(labels: np.ndarray, scores: np.ndarray, volume: int) -> float:
    """Share of the frauds among the `volume` highest scores (ties: the earlier row first)."""
    frauds = labels.sum()
    if not frauds:
        return float("nan")
    top = np.argsort(-scores, kind="stable")[:volume]
    return float(labels[top].sum() / frauds)


def score_psi(champion: np.ndarray, challenger: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index of the challenger's scores against the champion's, on bins
    cut at the champion's quantiles (fewer when its scores tie)."""
    if not len(champion) or not len(challenger):
        return float("nan")
    inner = np.unique(np.quantile(champion, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(inner, champion, side="right"), minlength=len(inner) + 1)
    actual = np.bincount(np.searchsorted(inner, challenger, side="right"), minlength=len(inner) + 1)
    p = np.maximum(expected / len(champion), PSI_FLOOR)
    q = np.maximum(actual / len(challenger), PSI_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def _daily_top_cards(shared: pd.DataFrame, column: str, k: int) -> pd.Series:
    """Per day, the set of the k cards with the highest score (a card: its highest score)."""
    cards = (
        shared.assign(day=shared["tx_datetime"].dt.floor("D"))
        .groupby(["day", "customer_id"], sort=False)[column]
        .max()
        .reset_index()
        .sort_values(["day", column, "customer_id"], ascending=[True, False, True])
    )
    return cards.groupby("day", sort=True).head(k).groupby("day")["customer_id"].agg(set)


def top_k_overlap(shared: pd.DataFrame, k: int) -> float:
    """Share of the day's top-k cards both models name, averaged over days: how differently
    investigators would be sent."""
    if shared.empty:
        return float("nan")
    champion = _daily_top_cards(shared, "champion_probability", k)
    challenger = _daily_top_cards(shared, "challenger_probability", k)
    shares = [len(champion[d] & challenger[d]) / max(len(champion[d]), 1) for d in champion.index]
    return float(np.mean(shares))


class _PairedAveragePrecision:
    """Average precision of one model's scores on resamples of fixed rows, given as row weights
    (how often a resample drew each row): sorted once, each resample is a few cumulative sums.
    Equal to scikit-learn's `average_precision_score` with those weights (ties included)."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray) -> None:
        self.order = np.argsort(-scores, kind="mergesort")
        self.labels = labels[self.order].astype(np.float64)
        ordered = scores[self.order]
        # the last row of each run of equal scores: one threshold per distinct score
        self.ends = np.r_[np.flatnonzero(np.diff(ordered)), len(ordered) - 1]

    def __call__(self, weights: np.ndarray) -> float:
        w = weights[self.order]
        tp = np.cumsum(w * self.labels)[self.ends]
        fp = np.cumsum(w * (1.0 - self.labels))[self.ends]
        if tp[-1] <= 0 or fp[-1] <= 0:
            return float("nan")  # one class only: undefined, as in `ranking_metrics`
        precision = tp / np.maximum(tp + fp, 1e-300)
        recall = tp / tp[-1]
        return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def bootstrap_ap_difference(
    labels: np.ndarray,
    champion: np.ndarray,
    challenger: np.ndarray,
    samples: int,
    confidence: float,
    seed: int,
) -> tuple[float, float]:
    """Percentile interval of AP(challenger) - AP(champion) over paired resamples of the
    transactions (both models judged on the same draw), from a seeded generator: the same
    inputs give the same interval."""
    n = len(labels)
    if n == 0 or labels.min() == labels.max():
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    ap_champion = _PairedAveragePrecision(labels, champion)
    ap_challenger = _PairedAveragePrecision(labels, challenger)
    differences = np.empty(samples)
    for i in range(samples):
        weights = np.bincount(rng.integers(0, n, size=n), minlength=n).astype(np.float64)
        differences[i] = ap_challenger(weights) - ap_champion(weights)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.nanquantile(differences, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _daily(labelled: pd.DataFrame, k: int) -> tuple[dict[str, Any], ...]:
    rows = []
    for day, part in labelled.groupby(labelled["tx_datetime"].dt.floor("D"), sort=True):
        labels = part["tx_fraud"].to_numpy(int)
        rows.append(
            {
                "day": day.date().isoformat(),
                "labelled_rows": len(part),
                "labelled_frauds": int(labels.sum()),
                **{
                    f"{role}_card_precision_at_k": card_precision_at_k(
                        part["customer_id"],
                        part["tx_datetime"],
                        labels,
                        part[f"{role}_probability"].to_numpy(float),
                        k,
                    )
                    for role in ("champion", "challenger")
                },
            }
        )
    return tuple(rows)


def _figures(labelled: pd.DataFrame, role: str, k: int, recall: float) -> ModelFigures:
    labels = labelled["tx_fraud"].to_numpy(int)
    scores = labelled[f"{role}_probability"].to_numpy(float)
    if not len(labels):
        return ModelFigures(float("nan"), float("nan"), float("nan"))
    return ModelFigures(
        average_precision=ranking_metrics(labels, scores)["average_precision"],
        card_precision_at_k=card_precision_at_k(
            labelled["customer_id"], labelled["tx_datetime"], labels, scores, k
        ),
        recall_at_alert_volume=recall,
    )


def _verdict(
    days: int, frauds: int, low: float, high: float, settings: LiveEvidenceSettings
) -> tuple[str, tuple[str, ...]]:
    """The verdict and what stands in its way (empty when the challenger is better)."""
    missing = []
    if days < settings.min_days:
        missing.append(f"live evidence: {days} of {settings.min_days} days")
    if frauds < settings.min_labelled_frauds:
        missing.append(f"live evidence: {frauds} of {settings.min_labelled_frauds} labelled frauds")
    if missing:
        return INSUFFICIENT, tuple(missing)
    interval = f"AP difference interval [{low:+.4f}, {high:+.4f}]"
    if np.isnan(low):
        return INSUFFICIENT, (f"{interval}: the labels hold a single class",)
    if low > 0:
        return CHALLENGER_BETTER, ()
    if high <= 0:
        return CHAMPION_HOLDS, (
            f"{interval} lies at or below 0: the champion is as good or better",
        )
    return CHAMPION_HOLDS, (f"{interval} does not exclude 0",)


def compare_live(
    shared: pd.DataFrame,
    champion_version: str,
    challenger_version: str,
    k: int,
    settings: LiveEvidenceSettings,
) -> LiveComparison:
    """Compare the two versions on their shared transactions (`shared_rows`): ranking figures
    where the label has arrived, the rest on every shared row, and the verdict
    (`settings`: the evidence asked for)."""
    shared = shared.assign(tx_datetime=pd.to_datetime(shared["tx_datetime"]))
    labelled = shared.loc[shared["tx_fraud"].notna().to_numpy()]
    labelled = labelled.assign(tx_fraud=labelled["tx_fraud"].astype(int))
    labels = labelled["tx_fraud"].to_numpy(int)
    # the champion's alerts are its own decisions; the challenger gets as many, its top scores
    flagged = (labelled["champion_decision"] != "approve").to_numpy()
    volume = int(flagged.sum())
    frauds = int(labels.sum())
    champion = _figures(
        labelled, "champion", k, float(labels[flagged].sum() / frauds) if frauds else float("nan")
    )
    challenger = _figures(
        labelled,
        "challenger",
        k,
        recall_at_volume(labels, labelled["challenger_probability"].to_numpy(float), volume),
    )
    days = sorted(labelled["tx_datetime"].dt.floor("D").unique())
    low, high = bootstrap_ap_difference(
        labels,
        labelled["champion_probability"].to_numpy(float),
        labelled["challenger_probability"].to_numpy(float),
        settings.bootstrap_samples,
        settings.confidence,
        settings.seed,
    )
    verdict, reasons = _verdict(len(days), frauds, low, high, settings)
    agree = (shared["champion_decision"] == shared["challenger_decision"]).to_numpy()
    return LiveComparison(
        champion_version=str(champion_version),
        challenger_version=str(challenger_version),
        rows=len(shared),
        labelled_rows=len(labelled),
        labelled_frauds=frauds,
        days=len(days),
        first_day=pd.Timestamp(days[0]).date().isoformat() if days else None,
        last_day=pd.Timestamp(days[-1]).date().isoformat() if days else None,
        k=k,
        alert_volume=volume,
        champion=champion,
        challenger=challenger,
        top_k_overlap=top_k_overlap(shared, k),
        agreement_rate=float(agree.mean()) if len(agree) else float("nan"),
        score_psi=score_psi(
            shared["champion_probability"].to_numpy(float),
            shared["challenger_probability"].to_numpy(float),
        ),
        ap_difference=challenger.average_precision - champion.average_precision,
        ap_difference_low=low,
        ap_difference_high=high,
        confidence=settings.confidence,
        bootstrap_samples=settings.bootstrap_samples,
        verdict=verdict,
        reasons=reasons,
        daily=_daily(labelled, k),
    )
