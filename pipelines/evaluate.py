"""Fraud metrics: threshold-free ranking quality, card precision@k and decision-threshold choice."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from pipelines.settings import ThresholdSettings


def card_precision_at_k(
    customer_id: pd.Series,
    tx_datetime: pd.Series,
    labels: np.ndarray,
    scores: np.ndarray,
    k: int,
    drop_detected: bool = False,
) -> float:
    """Daily share of true fraud cards among the k highest-scored cards, averaged over days.

    A card's score for a day is its highest transaction score; it is a fraud card that day if
    any of its transactions that day is fraud (the handbook's card precision top-k). With
    `drop_detected`, fraud cards found in an earlier day's top k are left out of later days,
    as the handbook's notebooks also do (investigated cards get blocked).
    """
    if len(scores) == 0:
        return float("nan")
    frame = pd.DataFrame(
        {
            "day": pd.to_datetime(tx_datetime).dt.floor("D").to_numpy(),
            "card": np.asarray(customer_id),
            "score": np.asarray(scores, dtype=np.float64),
            "label": np.asarray(labels, dtype=np.float64),
        }
    )
    cards = frame.groupby(["day", "card"], sort=False).agg(
        score=("score", "max"), label=("label", "max")
    )
    cards = cards.reset_index().sort_values(
        ["day", "score"], ascending=[True, False], kind="mergesort"
    )
    if not drop_detected:
        top = cards.groupby("day", sort=True).head(k)
        return float((top.groupby("day")["label"].sum() / k).mean())
    detected: set = set()
    daily = []
    for _, day_cards in cards.groupby("day", sort=True):
        top = day_cards[~day_cards["card"].isin(detected)].head(k)
        daily.append(top["label"].sum() / k)
        detected.update(top.loc[top["label"] == 1, "card"])
    return float(np.mean(daily))


def known_compromised(
    customer_id: pd.Series, tx_datetime: pd.Series, history: pd.DataFrame, delay_days: int
) -> np.ndarray:
    """Mask of rows whose card had a fraud with a matured label by that row's day.

    `history` holds labelled transactions (customer_id, tx_datetime, tx_fraud) from the start
    of the training window on; a fraud on day f is known from day f + delay on.
    """
    frauds = history.loc[history["tx_fraud"] == 1, ["customer_id", "tx_datetime"]]
    first_fraud_day = (
        frauds.assign(day=frauds["tx_datetime"].dt.floor("D")).groupby("customer_id")["day"].min()
    )
    known_from = pd.Series(customer_id).map(first_fraud_day) + pd.Timedelta(days=delay_days)
    day = pd.to_datetime(pd.Series(tx_datetime)).dt.floor("D")
    return (known_from.notna() & (known_from <= day)).to_numpy()


def ranking_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ROC-AUC and average precision; NaN when only one class is present."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return {"roc_auc": float("nan"), "average_precision": float("nan")}
    return {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "average_precision": float(average_precision_score(labels, scores)),
    }


def threshold_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 and confusion counts of the decision `score >= threshold`."""
    labels = np.asarray(labels).astype(bool)
    flagged = np.asarray(scores) >= threshold
    tp = int(np.sum(flagged & labels))
    fp = int(np.sum(flagged & ~labels))
    fn = int(np.sum(~flagged & labels))
    tn = int(np.sum(~flagged & ~labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
        "true_negatives": tn,
    }


def choose_threshold(labels: np.ndarray, scores: np.ndarray, rule: ThresholdSettings) -> float:
    """Pick the decision threshold on validation data by the configured rule.

    min_cost: minimise cost_missed_fraud * FN + cost_review * (TP + FP).
    max_f1: maximise F1.
    """
    labels = np.asarray(labels).astype(bool)
    if labels.sum() == 0:
        raise ValueError("cannot choose a threshold: the validation period holds no fraud")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    precision, recall = precision[:-1], recall[:-1]
    positives = labels.sum()
    if rule.rule == "max_f1":
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0)
        return float(thresholds[int(np.argmax(f1))])
    true_pos = recall * positives
    with np.errstate(divide="ignore", invalid="ignore"):
        flagged = np.where(precision > 0, true_pos / precision, 0.0)
    cost = rule.cost_missed_fraud * (positives - true_pos) + rule.cost_review * flagged
    return float(thresholds[int(np.argmin(cost))])


def evaluate_scores(
    frame: pd.DataFrame, scores: np.ndarray, threshold: float, k: int
) -> dict[str, float]:
    """All headline metrics of scores on a labelled raw-schema frame."""
    labels = frame["tx_fraud"].to_numpy()
    metrics = ranking_metrics(labels, scores)
    metrics[f"card_precision_at_{k}"] = card_precision_at_k(
        frame["customer_id"], frame["tx_datetime"], labels, scores, k
    )
    metrics[f"card_precision_at_{k}_drop_detected"] = card_precision_at_k(
        frame["customer_id"], frame["tx_datetime"], labels, scores, k, drop_detected=True
    )
    metrics.update(threshold_metrics(labels, scores, threshold))
    return metrics
