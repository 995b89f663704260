"""The ablation and its candidate features: point-in-time, matured labels only, every variant
backtested on every seed and logged as nested MLflow runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from fraudflow.cli import main
from pipelines.feature_candidates import GROUPS, build_candidates, candidate_names
from pipelines.settings import FeatureSettings, read_overlay
from pipelines.split import Period, TrainingWindows
from pipelines.training import ablation
from pipelines.training.train import held_out_test_period
from tests.support.settings import make_settings, write_config
from tests.test_features import random_stream

SETTINGS = FeatureSettings(
    label_delay_days=7,
    customer_windows_days=(1, 7, 30),
    terminal_windows_days=(1, 7, 30),
    night_last_hour=6,
)
DAY = pd.Timedelta(days=1)


def frame(rows: list[tuple[str, str, str, float, float]]) -> pd.DataFrame:
    """(time, card, terminal, amount, label) rows as a raw-schema frame."""
    return pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(len(rows))],
            "tx_datetime": pd.to_datetime([r[0] for r in rows]),
            "customer_id": [r[1] for r in rows],
            "terminal_id": [r[2] for r in rows],
            "tx_amount": [r[3] for r in rows],
            "tx_fraud": [r[4] for r in rows],
        }
    )


def test_candidates_equal_their_definition_read_row_by_row() -> None:
    stream = random_stream(900, seed=11)
    got = build_candidates(stream, SETTINGS)
    assert list(got.columns) == candidate_names()
    t = stream["tx_datetime"].to_numpy()
    position = np.arange(len(stream))
    for i in np.random.default_rng(1).choice(len(stream), 120, replace=False):
        row = stream.iloc[i]
        card = (stream["customer_id"] == row.customer_id).to_numpy()
        prior = card & (position < i) & (t > t[i] - np.timedelta64(30, "D"))
        amounts = stream["tx_amount"][prior].to_numpy()
        expect = {
            "amount_to_customer_median": (
                row.tx_amount / np.median(amounts) if prior.any() else None
            ),
            "customer_hours_since_previous": (
                (t[i] - t[prior][-1]) / np.timedelta64(1, "h") if prior.any() else None
            ),
        }
        matured = t <= t[i] - np.timedelta64(7, "D")
        genuine = card & matured & (t > t[i] - np.timedelta64(37, "D")) & (stream["tx_fraud"] == 0)
        mean = stream["tx_amount"][genuine].mean() if genuine.any() else None
        expect["amount_to_customer_genuine_avg"] = row.tx_amount / mean if mean else None
        pair = prior & (stream["terminal_id"] == row.terminal_id).to_numpy()
        expect["customer_terminal_first_seen"] = 0.0 if pair.any() else 1.0
        terminal = (stream["terminal_id"] == row.terminal_id).to_numpy()
        seen = terminal & matured & (t > t[i] - np.timedelta64(37, "D"))
        frauds = seen & (stream["tx_fraud"] == 1).to_numpy()
        expect["terminal_nb_frauds"] = float(frauds.sum())
        expect["terminal_days_since_fraud"] = (
            (t[i] - t[frauds].max()) / np.timedelta64(1, "D") if frauds.any() else None
        )
        for name, value in expect.items():
            if value is None:
                assert np.isnan(got.iloc[i][name]), (i, name)
            else:
                assert got.iloc[i][name] == pytest.approx(value, rel=1e-12, abs=1e-12), (i, name)


def test_later_rows_and_unmatured_labels_never_change_a_candidate() -> None:
    stream = random_stream(1000, seed=12)
    cut = 600
    before = build_candidates(stream, SETTINGS).iloc[: cut + 1]
    altered = stream.copy()
    later = altered.index > cut
    altered.loc[later, "tx_amount"] *= 7.0
    altered.loc[later, "tx_fraud"] = 1 - altered.loc[later, "tx_fraud"]
    cutoff = stream["tx_datetime"].iloc[cut]
    unmatured = (altered.index <= cut) & (altered["tx_datetime"] > cutoff - 7 * DAY)
    assert unmatured.sum() > 10
    altered.loc[unmatured, "tx_fraud"] = 1 - altered.loc[unmatured, "tx_fraud"]
    after = build_candidates(altered, SETTINGS).iloc[: cut + 1]
    pd.testing.assert_frame_equal(after, before)
    flipped = build_candidates(stream.assign(tx_fraud=1 - stream["tx_fraud"]), SETTINGS)
    changed = (
        flipped["terminal_nb_frauds"] != build_candidates(stream, SETTINGS)["terminal_nb_frauds"]
    )
    assert changed.sum() > 100  # matured labels do count


def test_a_label_counts_only_once_it_has_matured_between_two_transactions() -> None:
    """Card c and terminal T: a fraud at day 0, then transactions just before and at the
    moment its label matures (7 days later)."""
    rows = [
        ("2018-04-01 10:00:00", "c", "T", 10.0, 0.0),
        ("2018-04-02 10:00:00", "c", "T", 40.0, 1.0),
        ("2018-04-08 09:59:59", "c", "T", 20.0, 0.0),
        ("2018-04-08 10:00:00", "c", "T", 20.0, 0.0),
        ("2018-04-09 09:59:59", "d", "T", 5.0, 0.0),
        ("2018-04-09 10:00:00", "d", "T", 5.0, 0.0),
    ]
    got = build_candidates(frame(rows), SETTINGS)
    # the genuine day-0 amount matures at 04-08 10:00: not a millisecond before
    assert np.isnan(got["amount_to_customer_genuine_avg"].iloc[2])
    assert got["amount_to_customer_genuine_avg"].iloc[3] == pytest.approx(20.0 / 10.0)
    # the day-1 fraud matures at 04-09 10:00 for the terminal
    assert got["terminal_nb_frauds"].iloc[4] == 0.0
    assert np.isnan(got["terminal_days_since_fraud"].iloc[4])
    assert got["terminal_nb_frauds"].iloc[5] == 1.0
    assert got["terminal_days_since_fraud"].iloc[5] == pytest.approx(7.0)


def test_empty_input_gives_empty_candidates() -> None:
    empty = random_stream(10, seed=1).iloc[:0]
    assert list(build_candidates(empty, SETTINGS).columns) == candidate_names()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ablation")
    settings = make_settings(
        root / "work",
        simulation={"n_customers": 300, "n_terminals": 600, "n_days": 75},
        backtest={"train_days": None, "known_cards_days": 35},
        ablation={"seeds": [4, 5]},
    )
    config = write_config(root / "overlay.yaml", settings)
    reference = root / "reference.yaml"
    reference.write_text(
        yaml.safe_dump(
            {
                "training": {
                    "imbalance_power": 0.5,
                    "lightgbm": {"learning_rate": 0.1, "num_leaves": 7},
                },
                "backtest": {"train_days": 14},
            }
        )
    )
    return root, config, reference, settings


def test_the_reference_replaces_the_lightgbm_parameters_whole(study) -> None:
    _, _, reference_file, settings = study
    reference = ablation.reference_settings(settings, read_overlay(reference_file))
    assert reference.training.lightgbm == {"learning_rate": 0.1, "num_leaves": 7}
    assert reference.training.imbalance_power == 0.5
    assert reference.training.train_days == settings.training.train_days
    assert reference.backtest.train_days == 14
    assert reference.backtest.known_cards_days == settings.backtest.known_cards_days == 35
    names = [v.name for v in ablation.variants(settings, reference)]
    assert names[:2] == ["today", "new"]
    assert "new, backtest.train_days 14" in names
    assert "new, training.imbalance_power 0.5" in names
    assert "new, today's LightGBM parameters" in names
    assert [n for n in names if n.startswith("new + ")] == [f"new + {g}" for g in GROUPS]
    with pytest.raises(ValueError, match="'nonsense' is not a section"):
        ablation.reference_settings(settings, {"nonsense": {"a": 1}})


def test_ablate_backtests_each_variant_on_each_seed_as_nested_runs(study, capsys) -> None:
    root, config, reference, settings = study
    out, table = root / "ablation.json", root / "ablation.md"
    chosen = ["today", "new", "new + terminal_time_since_fraud"]
    args = ["ablate", "--config", config, "--reference", reference, "--output", out]
    args += ["--markdown", table, *[a for v in chosen for a in ("--variant", v)]]
    assert main([str(a) for a in args]) == 0
    summary = json.loads(out.read_text())
    assert summary["seeds"] == [4, 5]
    assert [v["name"] for v in summary["variants"]] == chosen
    today, new, added = summary["variants"]
    assert "terminal_days_since_fraud" in added["columns"]
    assert "terminal_days_since_fraud" not in new["columns"]
    assert added["verdict"].startswith("candidate ")
    for variant in summary["variants"]:
        assert set(variant["per_seed"]) == {"4", "5"}
        for metrics in variant["per_seed"].values():
            assert 0.0 < metrics["ap"] <= 1.0 and 0.0 < metrics["auc"] <= 1.0
        aps = [m["ap"] for m in variant["per_seed"].values()]
        assert variant["summary"]["ap"]["mean"] == pytest.approx(np.mean(aps))
        assert variant["summary"]["ap"]["std"] == pytest.approx(np.std(aps))
    # today's model is another model: a different window and parameters give other figures
    assert today["per_seed"] != new["per_seed"]
    assert table.read_text() in capsys.readouterr().out
    assert table.read_text().count("\n") == 2 + len(chosen)

    client = MlflowClient(settings.tracking_uri)
    parent = client.get_run(summary["run_id"])
    assert parent.data.tags["fraudflow.step"] == "ablation"
    assert parent.data.params["seeds"] == "4,5"
    experiment = [parent.info.experiment_id]
    variants = client.search_runs(
        experiment, filter_string=f"tags.mlflow.parentRunId = '{summary['run_id']}'"
    )
    assert sorted(r.info.run_name for r in variants) == sorted(chosen)
    for run in variants:
        seeds = client.search_runs(
            experiment, filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'"
        )
        assert sorted(r.data.params["simulation_seed"] for r in seeds) == ["4", "5"]
        folds = client.get_metric_history(seeds[0].info.run_id, "fold_average_precision")
        assert [m.step for m in folds] == [0, 1]
        assert "ap_mean" in run.data.metrics and "cp_std" in run.data.metrics


def test_ablate_refuses_the_default_seed_and_an_unknown_variant(study, capsys) -> None:
    root, config, reference, settings = study
    base = ["ablate", "--config", config, "--reference", reference]
    code = main([str(a) for a in [*base, "--seeds", str(settings.simulation.seed)]])
    assert code == 2
    assert "is the simulator's default" in capsys.readouterr().err
    assert main([str(a) for a in [*base, "--variant", "new + nothing"]]) == 2
    assert "unknown variant 'new + nothing'" in capsys.readouterr().err
    missing = main([str(a) for a in [*base[:3], "--reference", root / "none.yaml"]])
    assert missing == 2 and "config file not found" in capsys.readouterr().err


def test_a_fixed_known_cards_lookback_keeps_the_same_test_cards_whatever_the_window() -> None:
    """Card c had a fraud 30 days before the test week (matured long before it): a 10-day
    training window starts after it, a 56-day one before. From the window's start (the
    handbook) the longer window leaves c out; with `known_cards_days` both keep it alike."""
    test_start = pd.Timestamp("2018-06-01")
    rows = [
        ((test_start - 30 * DAY).isoformat(), "c", "T", 50.0, 1.0),
        ((test_start + 1 * DAY).isoformat(), "c", "T", 20.0, 0.0),
        ((test_start + 1 * DAY).isoformat(), "d", "T", 20.0, 0.0),
    ]
    raw = frame(rows)
    features = raw[["tx_amount"]]

    def windows(train_days: int) -> TrainingWindows:
        train_start = test_start - (train_days + 3 + 7) * DAY
        return TrainingWindows(
            Period(train_start, test_start - 10 * DAY),
            Period(test_start - 10 * DAY, test_start - 7 * DAY),
            Period(test_start, test_start + 7 * DAY),
        )

    def kept(train_days: int, known_cards_days: int | None) -> list[str]:
        period = held_out_test_period(raw, features, windows(train_days), 7, known_cards_days)
        return sorted(period.raw["customer_id"])

    assert kept(10, None) == ["c", "d"] and kept(56, None) == ["d"]
    assert kept(10, 20) == kept(56, 20) == ["c", "d"]
    assert kept(10, 40) == kept(56, 40) == ["d"]


def test_the_verdicts_weigh_each_gain_against_its_spread_over_seeds() -> None:
    """Figures like the 112-day run's (seeds 1-3): the 90th percentile earns its place; the
    largest amount gains no more than its spread; the decayed risk gains AP on every seed but costs
    ROC-AUC beyond the spread of that cost; a candidate is judged by what adding it gives."""

    def result(name: str, ap: list[float], auc: list[float]) -> ablation.VariantResult:
        variant = ablation.Variant(name, "", None, ())  # type: ignore[arg-type]
        per_seed = {s: {"ap": a, "cp": 0.35, "auc": u} for s, a, u in zip((1, 2, 3), ap, auc)}
        return ablation.VariantResult(variant, per_seed)

    judged = ablation.verdicts(
        [
            result("new", [0.7110, 0.7154, 0.7315], [0.8650, 0.8640, 0.8843]),
            result("new - p90", [0.7101, 0.7155, 0.7296], [0.8650, 0.8640, 0.8843]),
            result("new - max", [0.7110, 0.7148, 0.7316], [0.8650, 0.8640, 0.8843]),
            result("new - decayed", [0.7099, 0.7150, 0.7300], [0.8668, 0.8662, 0.8863]),
            result("new + median", [0.7100, 0.7150, 0.7300], [0.8650, 0.8640, 0.8843]),
            result("new, imbalance_power 0.5", [0.7000, 0.7050, 0.7200], [0.86, 0.86, 0.88]),
        ]
    )
    assert judged["new - p90"] == "feature earns its place (AP +0.0009 ± 0.0008)"
    assert judged["new - max"] == "feature does not earn its place (AP +0.0002 ± 0.0003)"
    assert judged["new - decayed"].startswith("feature does not earn its place (AP +0.0010")
    assert judged["new + median"].startswith("candidate does not earn its place (AP -0.0010")
    assert judged["new, imbalance_power 0.5"].startswith("choice earns its place (AP +0.0110")
