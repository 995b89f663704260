"""Metrics on hand-made cases whose answers can be counted by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.evaluate import (
    card_precision_at_k,
    choose_threshold,
    known_compromised,
    threshold_metrics,
)
from pipelines.settings import ThresholdSettings


def test_card_precision_takes_each_cards_best_score_per_day_and_averages_days() -> None:
    day1, day2 = pd.Timestamp("2018-05-01 10:00"), pd.Timestamp("2018-05-02 10:00")
    frame = pd.DataFrame(
        {
            "customer_id": ["a", "a", "b", "c", "d", "a", "b", "c"],
            "tx_datetime": [day1] * 5 + [day2] * 3,
            "tx_fraud": [0, 1, 0, 0, 1, 0, 0, 1],
            "score": [0.9, 0.1, 0.8, 0.7, 0.2, 0.3, 0.9, 0.1],
        }
    )
    # day 1 cards by max score: a 0.9 (fraud), b 0.8, c 0.7, d 0.2 (fraud) -> top 2: a, b -> 1/2
    # day 2: b 0.9, a 0.3, c 0.1 (fraud) -> top 2: b, a -> 0/2
    value = card_precision_at_k(
        frame["customer_id"], frame["tx_datetime"], frame["tx_fraud"], frame["score"], k=2
    )
    assert value == pytest.approx((0.5 + 0.0) / 2)


def test_card_precision_can_drop_cards_detected_on_earlier_days() -> None:
    days = [pd.Timestamp("2018-05-01 10:00")] * 3 + [pd.Timestamp("2018-05-02 10:00")] * 3
    cards = pd.Series(["a", "b", "c", "a", "b", "c"])
    labels = np.array([1, 0, 1, 1, 0, 1])
    scores = np.array([0.9, 0.5, 0.1, 0.9, 0.5, 0.2])
    plain = card_precision_at_k(cards, pd.Series(days), labels, scores, k=1)
    dropped = card_precision_at_k(cards, pd.Series(days), labels, scores, k=1, drop_detected=True)
    assert plain == pytest.approx(1.0)  # a tops both days
    assert dropped == pytest.approx(0.5)  # day 2 without a: b (genuine) tops


def test_card_precision_divides_by_k_even_when_fewer_cards_exist() -> None:
    frame = pd.DataFrame({"c": ["a", "b"], "t": [pd.Timestamp("2018-05-01")] * 2})
    value = card_precision_at_k(frame["c"], frame["t"], np.array([1, 1]), np.array([0.5, 0.6]), 4)
    assert value == pytest.approx(0.5)


def test_known_compromised_uses_only_matured_fraud_labels() -> None:
    history = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c"],
            "tx_datetime": pd.to_datetime(
                ["2018-05-01 23:00", "2018-05-05 01:00", "2018-05-01 00:00"]
            ),
            "tx_fraud": [1, 1, 0],
        }
    )
    rows = pd.DataFrame(
        {
            "customer_id": ["a", "a", "b", "c"],
            "tx_datetime": pd.to_datetime(
                ["2018-05-07 12:00", "2018-05-08 00:00", "2018-05-08 00:00", "2018-05-30 00:00"]
            ),
        }
    )
    mask = known_compromised(rows["customer_id"], rows["tx_datetime"], history, delay_days=7)
    # a's fraud on May 1 is known from May 8 on; b's (May 5) only from May 12; c never.
    assert mask.tolist() == [False, True, False, False]


def test_threshold_metrics_count_the_confusion_matrix() -> None:
    labels = np.array([1, 1, 0, 0, 1])
    scores = np.array([0.9, 0.4, 0.6, 0.1, 0.7])
    m = threshold_metrics(labels, scores, 0.5)
    assert (m["true_positives"], m["false_positives"], m["false_negatives"]) == (2, 1, 1)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)


def test_min_cost_threshold_reviews_more_when_missing_fraud_costs_more() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(4000) < 0.05).astype(int)
    scores = np.clip(rng.normal(0.2 + 0.5 * labels, 0.15), 0, 1)
    cheap_miss = choose_threshold(
        labels, scores, ThresholdSettings(rule="min_cost", cost_missed_fraud=2, cost_review=1)
    )
    dear_miss = choose_threshold(
        labels, scores, ThresholdSettings(rule="min_cost", cost_missed_fraud=200, cost_review=1)
    )
    assert dear_miss < cheap_miss

    def cost(threshold: float, miss: float) -> float:
        flagged = scores >= threshold
        return miss * np.sum(~flagged & (labels == 1)) + np.sum(flagged)

    grid = np.unique(scores)
    assert cost(dear_miss, 200) <= min(cost(t, 200) for t in grid) + 1e-9


def test_max_f1_threshold_maximises_f1() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random(2000) < 0.1).astype(int)
    scores = np.clip(rng.normal(0.3 + 0.3 * labels, 0.15), 0, 1)
    chosen = choose_threshold(
        labels, scores, ThresholdSettings(rule="max_f1", cost_missed_fraud=1, cost_review=1)
    )
    best = max(threshold_metrics(labels, scores, t)["f1"] for t in np.unique(scores))
    assert threshold_metrics(labels, scores, chosen)["f1"] == pytest.approx(best)


def test_threshold_needs_fraud_in_validation() -> None:
    rule = ThresholdSettings(rule="max_f1", cost_missed_fraud=1, cost_review=1)
    with pytest.raises(ValueError, match="no fraud"):
        choose_threshold(np.zeros(10), np.linspace(0, 1, 10), rule)
