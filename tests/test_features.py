"""Feature definitions: equal to a brute-force reading of the definition, and point-in-time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.features import build_features, feature_names, features_from_history
from pipelines.settings import FeatureSettings

SETTINGS = FeatureSettings(
    label_delay_days=7,
    customer_windows_days=(1, 7, 30),
    terminal_windows_days=(1, 7, 30),
    night_last_hour=6,
    large_amount_ratios=(2.5, 3.5),
    large_amount_window_days=14,
    customer_amount_quantiles=(0.5, 0.9, 1.0),
    terminal_risk_half_life_days=7.0,
)
DAY = np.timedelta64(1, "D")


def random_stream(n: int, seed: int, customers: int = 25, terminals: int = 15) -> pd.DataFrame:
    """A time-ordered stream with repeated timestamps, so ties are exercised too."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, 70 * 86400, n) // 600 * 600)
    return pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(n)],
            "tx_datetime": pd.Timestamp("2018-04-01") + pd.to_timedelta(seconds, unit="s"),
            "customer_id": rng.integers(0, customers, n).astype(str),
            "terminal_id": rng.integers(0, terminals, n).astype(str),
            "tx_amount": rng.gamma(2.0, 30.0, n).round(2),
            "tx_fraud": (rng.random(n) < 0.15).astype(np.int8),
        }
    )


def brute_force_row(stream: pd.DataFrame, i: int) -> dict[str, float]:
    """The feature definitions read literally, one row at a time."""
    t = stream["tx_datetime"].to_numpy()
    upto = np.arange(len(stream)) <= i
    row = stream.iloc[i]
    out = {
        "tx_amount": row.tx_amount,
        "tx_during_weekend": float(row.tx_datetime.dayofweek >= 5),
        "tx_during_night": float(row.tx_datetime.hour <= 6),
    }
    same_customer = (stream["customer_id"] == row.customer_id).to_numpy()
    for w in SETTINGS.customer_windows_days:
        m = same_customer & upto & (t > t[i] - w * DAY)
        out[f"customer_nb_tx_{w}d"] = m.sum()
        out[f"customer_avg_amount_{w}d"] = stream["tx_amount"][m].mean()
    prior = same_customer & upto & (np.arange(len(stream)) != i) & (t > t[i] - 30 * DAY)
    out["amount_to_customer_avg_30d"] = (
        row.tx_amount / stream["tx_amount"][prior].mean() if prior.any() else np.nan
    )
    earlier = np.sort(stream["tx_amount"][prior].to_numpy())
    for q, name in ((0.5, "p50"), (0.9, "p90"), (1.0, "max")):
        reference = np.quantile(earlier, q) if len(earlier) else np.nan
        ratio = row.tx_amount / reference if reference > 1e-6 else np.nan
        out[f"amount_to_customer_{name}_30d"] = ratio
    position = np.arange(len(stream))
    recent = np.flatnonzero(same_customer & (position < i) & (t > t[i] - 14 * DAY))
    ratios = []
    for j in recent:
        before_j = same_customer & (position < j) & (t > t[j] - 30 * DAY)
        mean = stream["tx_amount"][before_j].mean() if before_j.any() else np.nan
        ratios.append(stream["tx_amount"].iloc[j] / mean if mean > 0 else 0.0)
    for threshold in (2.5, 3.5):
        out[f"customer_nb_large_amounts_{threshold:g}x_14d"] = float(
            np.sum(np.nan_to_num(ratios) > threshold)
        )
    same_terminal = (stream["terminal_id"] == row.terminal_id).to_numpy()
    matured = t <= t[i] - 7 * DAY
    for w in SETTINGS.terminal_windows_days:
        m = same_terminal & matured & (t > t[i] - (7 + w) * DAY)
        out[f"terminal_nb_tx_{w}d"] = m.sum()
        out[f"terminal_risk_{w}d"] = stream["tx_fraud"][m].mean() if m.any() else 0.0
    out["terminal_risk_half_life_7d"] = decayed_risk(stream, i)
    return out


def decayed_risk(stream: pd.DataFrame, i: int) -> float:
    """The terminal's matured labels of (t - 37 d, t - 7 d], each weighted 2 ** (-age / 7 d)."""
    t = stream["tx_datetime"].to_numpy()
    labels = stream["tx_fraud"].to_numpy(dtype=float)
    m = (
        (stream["terminal_id"] == stream["terminal_id"].iloc[i]).to_numpy()
        & (t <= t[i] - 7 * DAY)
        & (t > t[i] - 37 * DAY)
        & ~np.isnan(labels)
    )
    weight = 2.0 ** (-((t[i] - t[m]) / DAY) / 7.0)
    return float((weight * labels[m]).sum() / weight.sum()) if m.any() else 0.0


def test_feature_names_follow_the_settings() -> None:
    names = feature_names(SETTINGS)
    assert names[:3] == ["tx_amount", "tx_during_weekend", "tx_during_night"]
    assert "customer_avg_amount_7d" in names and "terminal_risk_30d" in names
    assert "customer_nb_large_amounts_2.5x_14d" in names
    assert names[10:13] == [
        "amount_to_customer_p50_30d",
        "amount_to_customer_p90_30d",
        "amount_to_customer_max_30d",
    ]
    assert names[-1] == "terminal_risk_half_life_7d"
    assert len(names) == len(set(names)) == 3 + 2 * 3 + 1 + 3 + 2 + 2 * 3 + 1
    plain = SETTINGS.model_copy(
        update={"customer_amount_quantiles": (), "terminal_risk_half_life_days": None}
    )
    assert (
        feature_names(plain)
        == [n for n in names if "_p50_" not in n and "_p90_" not in n and "max" not in n][:-1]
    )


def test_features_equal_the_definition_read_row_by_row() -> None:
    stream = random_stream(1500, seed=1)
    features = build_features(stream, SETTINGS)
    assert list(features.columns) == feature_names(SETTINGS)
    assert features.index.equals(stream.index)
    for i in np.random.default_rng(0).choice(len(stream), 150, replace=False):
        expected = pd.Series(brute_force_row(stream, i), dtype=float)
        got = features.iloc[i][expected.index].astype(float)
        pd.testing.assert_series_equal(got, expected, check_names=False, rtol=0, atol=1e-9)


def test_features_do_not_depend_on_input_row_order() -> None:
    stream = random_stream(800, seed=2)
    stream = stream.drop_duplicates("tx_datetime")  # ties are ordered by input position
    shuffled = stream.sample(frac=1.0, random_state=0)
    pd.testing.assert_frame_equal(
        build_features(shuffled, SETTINGS).loc[stream.index], build_features(stream, SETTINGS)
    )


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_later_transactions_and_unmatured_labels_never_change_a_feature(seed: int) -> None:
    stream = random_stream(1200, seed=seed)
    rng = np.random.default_rng(seed)
    cut = int(rng.integers(300, 900))
    cutoff_time = stream["tx_datetime"].iloc[cut]
    before = build_features(stream, SETTINGS).iloc[: cut + 1]

    altered = stream.copy()
    later = altered.index > cut
    altered.loc[later, "tx_amount"] = rng.gamma(2.0, 300.0, later.sum()).round(2)
    altered.loc[later, "customer_id"] = rng.choice(altered["customer_id"].unique(), later.sum())
    altered.loc[later, "terminal_id"] = rng.choice(altered["terminal_id"].unique(), later.sum())
    altered.loc[later, "tx_fraud"] = 1 - altered.loc[later, "tx_fraud"]
    unmatured = (altered.index <= cut) & (
        altered["tx_datetime"] > cutoff_time - pd.Timedelta(days=7)
    )
    assert unmatured.sum() > 10
    altered.loc[unmatured, "tx_fraud"] = 1 - altered.loc[unmatured, "tx_fraud"]
    extra = altered.iloc[[cut]].assign(transaction_id="new", tx_amount=9999.0)
    altered = pd.concat([altered, extra], ignore_index=True)  # ties with the cut, comes after

    after = build_features(altered, SETTINGS).iloc[: cut + 1]
    pd.testing.assert_frame_equal(after, before)


def test_matured_labels_do_change_terminal_risk() -> None:
    """The guard above must not pass just because labels are ignored altogether."""
    stream = random_stream(1200, seed=6)
    flipped = stream.assign(tx_fraud=1 - stream["tx_fraud"])
    a, b = build_features(stream, SETTINGS), build_features(flipped, SETTINGS)
    assert (a["terminal_risk_7d"] != b["terminal_risk_7d"]).sum() > 100
    pd.testing.assert_series_equal(a["customer_avg_amount_7d"], b["customer_avg_amount_7d"])


def test_unknown_labels_count_as_neither_fraud_nor_labelled() -> None:
    stream = random_stream(1000, seed=7)
    half_known = stream.assign(tx_fraud=stream["tx_fraud"].astype(float))
    half_known.loc[half_known.index % 2 == 0, "tx_fraud"] = np.nan
    features = build_features(half_known, SETTINGS)
    t = stream["tx_datetime"].to_numpy()
    for i in range(500, 1000, 37):
        m = (
            (stream["terminal_id"] == stream["terminal_id"][i]).to_numpy()
            & (t <= t[i] - 7 * DAY)
            & (t > t[i] - 14 * DAY)
        )
        labels = half_known["tx_fraud"][m].dropna()
        expected = labels.mean() if len(labels) else 0.0
        assert features["terminal_risk_7d"][i] == pytest.approx(expected, abs=1e-12)
        decayed = decayed_risk(half_known, i)
        assert features["terminal_risk_half_life_7d"][i] == pytest.approx(decayed, abs=1e-12)
        assert features["terminal_nb_tx_7d"][i] == m.sum()


def test_no_labels_at_all_gives_zero_risk_and_same_other_features() -> None:
    stream = random_stream(500, seed=8)
    with_labels = build_features(stream, SETTINGS)
    without = build_features(stream.drop(columns="tx_fraud"), SETTINGS)
    assert (without.filter(like="terminal_risk") == 0).all().all()
    keep = [c for c in with_labels.columns if "risk" not in c]
    pd.testing.assert_frame_equal(without[keep], with_labels[keep])


def test_empty_input_gives_empty_features() -> None:
    empty = random_stream(10, seed=9).iloc[0:0]
    assert list(build_features(empty, SETTINGS).columns) == feature_names(SETTINGS)


def test_features_agree_with_the_handbooks_rolling_windows() -> None:
    """Cross-check against the handbook's groupby/rolling implementation (distinct times)."""
    from benchmarks.handbook import handbook_features

    stream = random_stream(2000, seed=10).drop_duplicates("tx_datetime")
    reference = handbook_features(stream, delay=SETTINGS.label_delay_days)
    ours = build_features(stream, SETTINGS)[reference.columns]
    pd.testing.assert_frame_equal(ours, reference, check_dtype=False, rtol=0, atol=1e-9)


def test_one_transaction_path_equals_the_batch_path_on_a_replayed_stream() -> None:
    """Online/offline parity: each row from its own earlier history equals build_features."""
    stream = random_stream(1500, seed=11)
    stream.loc[stream.sample(40, random_state=1).index, "tx_amount"] = 0.0
    batch = build_features(stream, SETTINGS).to_numpy()
    t = stream["tx_datetime"].to_numpy().astype("datetime64[ms]").astype(np.int64)
    amounts = stream["tx_amount"].to_numpy()
    labels = stream["tx_fraud"].to_numpy(dtype=float)
    customers = stream["customer_id"].to_numpy()
    terminals = stream["terminal_id"].to_numpy()
    for i in range(len(stream)):
        before = np.arange(len(stream)) < i
        card = before & (customers == customers[i]) & (t > t[i] - 44 * 86_400_000)
        term = before & (terminals == terminals[i])
        online = features_from_history(
            stream["tx_datetime"].iloc[i],
            amounts[i],
            t[card],
            amounts[card],
            t[term],
            labels[term],
            SETTINGS,
        )
        np.testing.assert_allclose(online, batch[i], rtol=0, atol=1e-9, equal_nan=True)


def test_the_decayed_risk_counts_a_label_only_once_it_has_matured() -> None:
    """Terminal T: a fraud on day 1, then a transaction a second before its label matures
    (7 days later) and one at the moment; offline and from the history alike."""
    stream = pd.DataFrame(
        {
            "transaction_id": ["a", "b", "c", "d"],
            "tx_datetime": pd.to_datetime(
                [
                    "2018-04-01 10:00:00",
                    "2018-04-02 10:00:00",
                    "2018-04-09 09:59:59",
                    "2018-04-09 10:00:00",
                ]
            ),
            "customer_id": ["c", "c", "d", "d"],
            "terminal_id": ["T"] * 4,
            "tx_amount": [10.0, 40.0, 5.0, 5.0],
            "tx_fraud": [0, 1, 0, 0],
        }
    )
    offline = build_features(stream, SETTINGS)["terminal_risk_half_life_7d"]
    # c: only a's genuine label has matured (8 days old minus a second)
    assert offline.iloc[2] == 0.0
    # d: b's fraud (7 days old, weight 1/2) beside a's genuine (8 days old, weight 2 ** (-8/7))
    assert offline.iloc[3] == pytest.approx(0.5 / (0.5 + 2 ** (-8 / 7)), rel=1e-12)
    t = stream["tx_datetime"].to_numpy().astype("datetime64[ms]").astype(np.int64)
    labels = stream["tx_fraud"].to_numpy(dtype=float)
    names = feature_names(SETTINGS)
    for i in (2, 3):
        online = features_from_history(
            stream["tx_datetime"].iloc[i], 5.0, t[2:i], [5.0] * (i - 2), t[:i], labels[:i], SETTINGS
        )
        assert online[names.index("terminal_risk_half_life_7d")] == pytest.approx(
            offline.iloc[i], abs=1e-12
        )
