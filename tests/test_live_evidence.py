"""The champion against the challenger on shared live traffic: the figures, the paired
bootstrap and the verdict, on frames made in the test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from pipelines.evaluate import card_precision_at_k, ranking_metrics
from pipelines.live_evidence import (
    CHALLENGER_BETTER,
    CHAMPION_HOLDS,
    INSUFFICIENT,
    _PairedAveragePrecision,
    bootstrap_ap_difference,
    challenger_beside,
    compare_live,
    score_psi,
    shared_rows,
)
from pipelines.settings import LiveEvidenceSettings

EVIDENCE = LiveEvidenceSettings(
    min_days=5, min_labelled_frauds=30, bootstrap_samples=300, confidence=0.95, seed=7
)


def _shared(labels, champion, challenger, days=None, cards=None, threshold=0.5) -> pd.DataFrame:
    labels = np.asarray(labels, dtype=float)
    n = len(labels)
    days = np.zeros(n, int) if days is None else np.asarray(days)
    cards = [f"c{i}" for i in range(n)] if cards is None else cards
    champion, challenger = np.asarray(champion, float), np.asarray(challenger, float)
    return pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(n)],
            "tx_datetime": pd.Timestamp("2018-07-01 10:00")
            + pd.to_timedelta(days, "D")
            + pd.to_timedelta(np.arange(n) % 600, "s"),
            "customer_id": cards,
            "tx_fraud": labels,
            "champion_probability": champion,
            "champion_decision": np.where(champion >= threshold, "review", "approve"),
            "challenger_probability": challenger,
            "challenger_decision": np.where(challenger >= threshold, "review", "approve"),
        }
    )


def _world(
    days: int, per_day: int, fraud_every: int, champion_noise: float, challenger_noise: float
):
    """Labelled traffic of `days` days where each model's score is the label plus its own
    noise: the less noise, the better the ranking (a fixed seed: the same frame every run)."""
    rng = np.random.default_rng(11)
    n = days * per_day
    labels = (np.arange(n) % fraud_every == 0).astype(float)
    champion = np.clip(0.3 * labels + rng.normal(0.2, champion_noise, n), 0, 1)
    challenger = np.clip(0.3 * labels + rng.normal(0.2, challenger_noise, n), 0, 1)
    cards = [f"c{i % (per_day // 2)}" for i in range(n)]
    return _shared(labels, champion, challenger, np.arange(n) // per_day, cards, threshold=0.4)


def test_figures_on_a_frame_with_known_values() -> None:
    # champion: the second fraud ranks third -> AP (1 + 2/3) / 2; challenger ranks both first
    shared = _shared(
        labels=[1, 0, 1, 0],
        champion=[0.9, 0.8, 0.7, 0.1],
        challenger=[0.9, 0.1, 0.8, 0.2],
    )
    result = compare_live(shared, "1", "2", k=1, settings=EVIDENCE)
    assert result.champion.average_precision == pytest.approx((1 + 2 / 3) / 2)
    assert result.challenger.average_precision == pytest.approx(1.0)
    assert result.ap_difference == pytest.approx(1 - (1 + 2 / 3) / 2)
    # the champion flags three (0.9, 0.8, 0.7 >= 0.5): both frauds; the challenger's top 3 too
    assert result.alert_volume == 3
    assert result.champion.recall_at_alert_volume == 1.0
    assert result.challenger.recall_at_alert_volume == 1.0
    # one day, k=1: each names card c0 (0.9) -> the top card is a fraud for both
    assert result.champion.card_precision_at_k == result.challenger.card_precision_at_k == 1.0
    assert result.top_k_overlap == 1.0
    # decisions: review/review, review/approve, review/review, approve/approve
    assert result.agreement_rate == pytest.approx(0.75)
    assert (result.labelled_rows, result.labelled_frauds, result.days) == (4, 2, 1)
    assert result.verdict == INSUFFICIENT
    assert result.reasons == (
        "live evidence: 1 of 5 days",
        "live evidence: 2 of 30 labelled frauds",
    )


def test_recall_at_the_champions_alert_volume_takes_the_challengers_top_scores() -> None:
    # the champion flags two rows, one a fraud: recall 1/3; the challenger's top two hold two
    shared = _shared(
        labels=[1, 1, 1, 0, 0, 0],
        champion=[0.9, 0.1, 0.2, 0.8, 0.3, 0.1],
        challenger=[0.4, 0.45, 0.1, 0.2, 0.3, 0.0],
    )
    result = compare_live(shared, "1", "2", k=2, settings=EVIDENCE)
    assert result.alert_volume == 2
    assert result.champion.recall_at_alert_volume == pytest.approx(1 / 3)
    assert result.challenger.recall_at_alert_volume == pytest.approx(2 / 3)


def test_card_precision_per_day_is_the_evaluation_definition() -> None:
    shared = _world(days=6, per_day=200, fraud_every=25, champion_noise=0.2, challenger_noise=0.05)
    result = compare_live(shared, "1", "2", k=10, settings=EVIDENCE)
    labels = shared["tx_fraud"].to_numpy(int)
    for role, figures in (("champion", result.champion), ("challenger", result.challenger)):
        scores = shared[f"{role}_probability"].to_numpy()
        assert figures.card_precision_at_k == card_precision_at_k(
            shared["customer_id"], shared["tx_datetime"], labels, scores, 10
        )
        assert figures.average_precision == ranking_metrics(labels, scores)["average_precision"]
    assert [d["day"] for d in result.daily] == [f"2018-07-0{d}" for d in range(1, 7)]
    assert np.mean([d["challenger_card_precision_at_k"] for d in result.daily]) == pytest.approx(
        result.challenger.card_precision_at_k
    )


def test_a_clearly_better_challenger_wins_and_a_clearly_worse_one_does_not() -> None:
    better = _world(days=6, per_day=200, fraud_every=25, champion_noise=0.2, challenger_noise=0.05)
    result = compare_live(better, "1", "2", k=10, settings=EVIDENCE)
    assert result.labelled_frauds == 48 and result.days == 6
    assert 0 < result.ap_difference_low < result.ap_difference < result.ap_difference_high
    assert result.verdict == CHALLENGER_BETTER and result.challenger_better
    assert result.reasons == ()
    assert result.challenger.recall_at_alert_volume > result.champion.recall_at_alert_volume
    assert "challenger better" in result.summary_line()

    worse = _world(days=6, per_day=200, fraud_every=25, champion_noise=0.05, challenger_noise=0.2)
    result = compare_live(worse, "1", "2", k=10, settings=EVIDENCE)
    assert result.ap_difference_high < 0
    assert result.verdict == CHAMPION_HOLDS and not result.challenger_better
    (reason,) = result.reasons
    assert reason.startswith("AP difference interval [-") and "at or below 0" in reason


def test_an_equal_challenger_does_not_exclude_zero() -> None:
    shared = _world(days=6, per_day=200, fraud_every=25, champion_noise=0.1, challenger_noise=0.1)
    result = compare_live(shared, "1", "2", k=10, settings=EVIDENCE)
    assert result.ap_difference_low < 0 < result.ap_difference_high
    assert result.verdict == CHAMPION_HOLDS
    low, high = result.ap_difference_low, result.ap_difference_high
    assert result.reasons == (
        f"AP difference interval [{low:+.4f}, {high:+.4f}] does not exclude 0",
    )


def test_too_few_days_or_frauds_is_insufficient_whatever_the_difference() -> None:
    better = _world(days=4, per_day=300, fraud_every=20, champion_noise=0.2, challenger_noise=0.05)
    result = compare_live(better, "1", "2", k=10, settings=EVIDENCE)
    assert result.ap_difference_low > 0  # clear, but too short
    assert result.verdict == INSUFFICIENT and result.reasons == ("live evidence: 4 of 5 days",)
    few = _world(days=6, per_day=100, fraud_every=50, champion_noise=0.2, challenger_noise=0.05)
    result = compare_live(few, "1", "2", k=10, settings=EVIDENCE)
    assert result.verdict == INSUFFICIENT
    assert result.reasons == ("live evidence: 12 of 30 labelled frauds",)


def test_unlabelled_rows_count_for_agreement_not_for_ranking() -> None:
    shared = _world(days=6, per_day=200, fraud_every=25, champion_noise=0.2, challenger_noise=0.05)
    labelled = compare_live(shared, "1", "2", k=10, settings=EVIDENCE)
    unlabelled = shared.assign(tx_fraud=np.nan)
    extended = pd.concat(
        [shared, unlabelled.assign(transaction_id=lambda f: f["transaction_id"] + "u")]
    )
    result = compare_live(extended, "1", "2", k=10, settings=EVIDENCE)
    assert result.rows == 2 * len(shared) and result.labelled_rows == len(shared)
    assert result.champion == labelled.champion and result.challenger == labelled.challenger
    assert (result.ap_difference_low, result.ap_difference_high) == (
        labelled.ap_difference_low,
        labelled.ap_difference_high,
    )


def test_the_bootstrap_is_the_same_for_the_same_seed() -> None:
    shared = _world(days=6, per_day=200, fraud_every=25, champion_noise=0.1, challenger_noise=0.1)
    args = (
        shared["tx_fraud"].to_numpy(int),
        shared["champion_probability"].to_numpy(),
        shared["challenger_probability"].to_numpy(),
        200,
        0.9,
    )
    first = bootstrap_ap_difference(*args, seed=3)
    assert bootstrap_ap_difference(*args, seed=3) == first
    assert bootstrap_ap_difference(*args, seed=4) != first
    wider = bootstrap_ap_difference(*args[:4], 0.99, seed=3)
    assert wider[0] < first[0] and wider[1] > first[1]


def test_the_resampled_average_precision_equals_scikit_learns_with_weights() -> None:
    rng = np.random.default_rng(5)
    labels = (rng.random(400) < 0.1).astype(int)
    scores = np.round(rng.random(400) * 0.5 + 0.3 * labels, 2)  # many ties
    paired = _PairedAveragePrecision(labels, scores)
    ones = np.ones(400)
    assert paired(ones) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    for _ in range(5):
        weights = np.bincount(rng.integers(0, 400, 400), minlength=400).astype(float)
        assert paired(weights) == pytest.approx(
            average_precision_score(labels, scores, sample_weight=weights), abs=1e-12
        )


def test_score_psi_is_zero_for_the_same_scores_and_large_for_shifted_ones() -> None:
    scores = np.linspace(0, 1, 1000) ** 3
    assert score_psi(scores, scores) == pytest.approx(0.0)
    assert score_psi(scores, np.minimum(scores * 3, 1)) > 0.25
    # ten bins of a uniform champion; a challenger only in the upper five, twice as dense
    uniform = (np.arange(1000) + 0.5) / 1000
    upper = np.repeat([0.55, 0.65, 0.75, 0.85, 0.95], 200)
    expected = 5 * (1e-4 - 0.1) * np.log(1e-4 / 0.1) + 5 * (0.2 - 0.1) * np.log(2)
    assert score_psi(uniform, upper) == pytest.approx(expected)


def test_shared_rows_are_those_both_versions_scored() -> None:
    logged = _shared([1, 0, 0, 1], [0.9, 0.1, 0.2, 0.8], [0.8, 0.2, 0.1, 0.7]).assign(
        champion_version=["1", "1", "1", "3"],
        challenger_version=["2", "2", "2", "2"],
    )
    logged.loc[2, "challenger_probability"] = np.nan  # the challenger failed to score it
    found = shared_rows(logged, "1", "2")
    assert found["transaction_id"].tolist() == ["t0", "t1"]
    assert shared_rows(logged.drop(columns=["challenger_version"]), "1", "2").empty
    assert challenger_beside(logged, "1") == "2" and challenger_beside(logged, "2") is None
    assert challenger_beside(logged.assign(challenger_version="5"), "1", preferred="2") == "5"
