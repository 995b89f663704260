"""Behaviour of the transaction simulator: reproducibility, schema, geography, fraud labels, I/O."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from pipelines.settings import SimulationSettings
from pipelines.training.simulate import (
    TRANSACTION_COLUMNS,
    Simulation,
    fraud_summary,
    run_simulation,
    simulate_transactions,
    write_daily_parquet,
)

SMALL = dict(
    n_customers=300,
    n_terminals=600,
    n_days=60,
    start_date=date(2018, 4, 1),
    radius=10.0,
    seed=7,
    amount_fraud_threshold=220.0,
    compromised_terminals_per_day=1,
    terminal_compromise_days=7,
    compromised_customers_per_day=3,
    customer_compromise_days=14,
    customer_fraud_share=1 / 3,
    customer_amount_multiplier=5.0,
)
# The handbook-sized defaults of conf/default.yaml, spelt out so the test does not drift with it.
DEFAULT = dict(
    SMALL,
    n_customers=5000,
    n_terminals=10000,
    n_days=183,
    radius=5.0,
    seed=0,
    compromised_terminals_per_day=2,
    terminal_compromise_days=28,
    customer_fraud_share=0.3333333333,
)


def small_settings(**changes: object) -> SimulationSettings:
    return SimulationSettings(**{**SMALL, **changes})


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return run_simulation(small_settings())


@pytest.fixture(scope="module")
def settings() -> SimulationSettings:
    return small_settings()


def _in_windows(tx: pd.DataFrame, draws: pd.DataFrame, id_column: str) -> np.ndarray:
    """Transactions whose id was compromised at their time, recomputed from the draw table."""
    mask = np.zeros(len(tx), dtype=bool)
    ids = tx[id_column].to_numpy()
    times = tx["tx_datetime"].to_numpy()
    for row in draws.itertuples(index=False):
        mask |= (
            (ids == getattr(row, id_column))
            & (times >= row.window_start.to_datetime64())
            & (times < row.window_end.to_datetime64())
        )
    return mask


def test_same_seed_is_bit_identical(sim: Simulation, settings: SimulationSettings) -> None:
    again = run_simulation(settings)
    pd.testing.assert_frame_equal(sim.transactions, again.transactions, check_exact=True)
    pd.testing.assert_frame_equal(sim.compromised_terminals, again.compromised_terminals)
    pd.testing.assert_frame_equal(sim.compromised_customers, again.compromised_customers)


def test_other_seed_differs(sim: Simulation) -> None:
    other = simulate_transactions(small_settings(seed=8))
    assert not other.equals(sim.transactions)
    assert not np.array_equal(
        other["tx_amount"].to_numpy()[:100], sim.transactions["tx_amount"].to_numpy()[:100]
    )


def test_progress_goes_to_stderr_and_does_not_change_output(
    capsys: pytest.CaptureFixture[str],
) -> None:
    quiet = simulate_transactions(small_settings(n_days=5))
    capsys.readouterr()
    loud = simulate_transactions(small_settings(n_days=5), progress=True)
    captured = capsys.readouterr()
    assert "5/5" in captured.err
    assert captured.out == ""
    pd.testing.assert_frame_equal(quiet, loud)


def test_schema_and_dtypes(sim: Simulation) -> None:
    tx = sim.transactions
    assert tuple(tx.columns) == TRANSACTION_COLUMNS
    assert tx.dtypes.astype(str).to_dict() == {
        "transaction_id": "int64",
        "tx_datetime": "datetime64[ns]",
        "customer_id": "int64",
        "terminal_id": "int64",
        "tx_amount": "float64",
        "tx_fraud": "int8",
        "tx_fraud_scenario": "int8",
    }
    assert tx["tx_datetime"].dt.tz is None
    np.testing.assert_array_equal(tx["transaction_id"].to_numpy(), np.arange(len(tx)))
    assert tx["tx_datetime"].is_monotonic_increasing
    assert set(tx["tx_fraud_scenario"].unique()) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(tx["tx_fraud"] == 1, tx["tx_fraud_scenario"] > 0)
    assert (tx["tx_amount"] >= 0).all()
    cents = tx["tx_amount"].to_numpy() * 100
    np.testing.assert_allclose(cents, np.round(cents), atol=1e-6)


def test_times_fall_inside_the_simulated_days(
    sim: Simulation, settings: SimulationSettings
) -> None:
    times = sim.transactions["tx_datetime"]
    start = pd.Timestamp(settings.start_date)
    assert times.min() >= start
    assert times.max() < start + pd.Timedelta(days=settings.n_days)
    seconds = (times - times.dt.normalize()).dt.total_seconds()
    assert seconds.between(0, 86_399).all()
    # Time of day ~ N(12:00, 20000 s) truncated to the day: mean near noon, spread below 20000 s.
    assert abs(seconds.mean() - 43_200) < 500
    assert 15_000 < seconds.std() < 20_000
    assert times.dt.normalize().nunique() == settings.n_days


def test_transaction_volume_matches_profiles(sim: Simulation, settings: SimulationSettings) -> None:
    kept = norm.cdf(86_400, 43_200, 20_000) - norm.cdf(0, 43_200, 20_000)
    paying = sim.availability.counts > 0
    expected = sim.customers["mean_nb_tx_per_day"][paying].sum() * settings.n_days * kept
    assert abs(len(sim.transactions) / expected - 1) < 0.03
    # Genuine spending follows each customer's mean amount.
    genuine = sim.transactions[sim.transactions["tx_fraud_scenario"] == 0]
    spent = genuine.groupby("customer_id")["tx_amount"].mean()
    profile = sim.customers.set_index("customer_id")["mean_amount"].loc[spent.index]
    assert np.corrcoef(spent, profile)[0, 1] > 0.9


def test_customers_only_use_terminals_within_radius(
    sim: Simulation, settings: SimulationSettings
) -> None:
    cust_xy = sim.customers[["x", "y"]].to_numpy()
    term_xy = sim.terminals[["x", "y"]].to_numpy()
    distance = np.linalg.norm(cust_xy[:, None, :] - term_xy[None, :, :], axis=2)
    for customer_id in range(settings.n_customers):
        expected = np.flatnonzero(distance[customer_id] <= settings.radius)
        offsets = sim.availability.offsets
        usable = sim.availability.terminal_ids[offsets[customer_id] : offsets[customer_id + 1]]
        np.testing.assert_array_equal(usable, expected)
    tx = sim.transactions
    used = np.linalg.norm(
        cust_xy[tx["customer_id"].to_numpy()] - term_xy[tx["terminal_id"].to_numpy()], axis=1
    )
    assert used.max() <= settings.radius
    # Terminal choice is uniform among the available ones: most customers use several.
    assert tx.groupby("customer_id")["terminal_id"].nunique().median() > 5


def test_customer_without_terminals_never_transacts() -> None:
    sparse = run_simulation(small_settings(radius=1.0, n_days=10))
    counts = sparse.availability.counts
    assert (counts == 0).any() and (counts > 0).any()
    active = set(sparse.transactions["customer_id"].unique())
    stranded = set(np.flatnonzero(counts == 0))
    assert not active & stranded
    assert len(active) > 0.8 * (counts > 0).sum()


def test_scenario_1_is_exactly_the_large_amounts_not_overwritten(
    sim: Simulation, settings: SimulationSettings
) -> None:
    tx = sim.transactions
    scenario = tx["tx_fraud_scenario"]
    large = tx["tx_amount"] > settings.amount_fraud_threshold
    expected = large & ~scenario.isin([2, 3])
    assert expected.sum() > 0
    np.testing.assert_array_equal(scenario == 1, expected)
    assert not large[scenario == 0].any()


def test_scenario_2_covers_compromised_terminals_within_window(
    sim: Simulation, settings: SimulationSettings
) -> None:
    tx = sim.transactions
    draws = sim.compromised_terminals
    assert len(draws) == settings.n_days * settings.compromised_terminals_per_day
    assert (
        (draws["window_end"] - draws["window_start"])
        .eq(pd.Timedelta(days=settings.terminal_compromise_days))
        .all()
    )
    windowed = _in_windows(tx, draws, "terminal_id")
    assert windowed.sum() > 50
    assert (tx["tx_fraud"][windowed] == 1).all()
    assert tx["tx_fraud_scenario"][windowed].isin([2, 3]).all()
    assert windowed[(tx["tx_fraud_scenario"] == 2).to_numpy()].all()


def test_scenario_3_takes_a_share_of_compromised_customers_payments(
    sim: Simulation, settings: SimulationSettings
) -> None:
    tx = sim.transactions
    draws = sim.compromised_customers
    assert len(draws) == settings.n_days * settings.compromised_customers_per_day
    windowed = _in_windows(tx, draws, "customer_id")
    chosen = (tx["tx_fraud_scenario"] == 3).to_numpy()
    assert windowed.sum() > 1000
    assert windowed[chosen].all()
    share = chosen.sum() / windowed.sum()
    assert share == pytest.approx(settings.customer_fraud_share, abs=0.02)
    # Chosen payments were inflated by the multiplier relative to their untouched neighbours.
    ratio = tx["tx_amount"][chosen].mean() / tx["tx_amount"][windowed & ~chosen].mean()
    assert 4.0 < ratio < 6.0


def test_no_compromise_means_only_amount_frauds() -> None:
    tx = simulate_transactions(
        small_settings(compromised_terminals_per_day=0, compromised_customers_per_day=0)
    )
    assert set(tx["tx_fraud_scenario"].unique()) == {0, 1}


def test_default_size_fraud_rate_is_plausible() -> None:
    tx = simulate_transactions(SimulationSettings(**DEFAULT))
    summary = fraud_summary(tx)
    assert 1_650_000 < summary["transactions"] < 1_900_000
    assert 0.007 < summary["fraud_rate"] < 0.011
    assert summary["frauds"] == sum(summary[f"scenario_{i}"] for i in (1, 2, 3))
    assert all(summary[f"scenario_{i}"] > 500 for i in (1, 2, 3))


def test_write_daily_parquet_round_trips_one_file_per_day(sim: Simulation, tmp_path: Path) -> None:
    tx = sim.transactions
    folder = tmp_path / "data" / "raw"
    paths = write_daily_parquet(tx, folder)
    days = sorted(tx["tx_datetime"].dt.strftime("%Y-%m-%d").unique())
    assert [p.name for p in paths] == [f"{d}.parquet" for d in days]
    assert sorted(p.name for p in folder.iterdir()) == [p.name for p in paths]  # no temp files
    parts = [pd.read_parquet(p) for p in paths]
    for day, part in zip(days, parts):
        assert (part["tx_datetime"].dt.strftime("%Y-%m-%d") == day).all()
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), tx, check_exact=True)


def test_write_daily_parquet_refuses_non_empty_folder(sim: Simulation, tmp_path: Path) -> None:
    tx = sim.transactions
    first_week = tx[tx["tx_datetime"] < pd.Timestamp("2018-04-08")]
    write_daily_parquet(tx, tmp_path)
    with pytest.raises(ValueError, match=str(tmp_path)):
        write_daily_parquet(first_week, tmp_path)

    paths = write_daily_parquet(first_week, tmp_path, overwrite=True)
    assert len(paths) == 7
    assert sorted(tmp_path.iterdir()) == paths  # old days beyond the first week are gone
    pd.testing.assert_frame_equal(
        pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True),
        first_week.reset_index(drop=True),
    )

    csv_only = tmp_path / "csv"
    csv_only.mkdir()
    (csv_only / "transactions.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="csv"):
        write_daily_parquet(first_week, csv_only)
