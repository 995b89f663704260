"""Seeded card-transaction simulator, after the ULB "Fraud Detection Handbook" generator.

Why: features, training, back-tests and promotion need a reproducible, labelled transaction
stream whose fraud mechanisms are known, so the whole system can be exercised end to end without
real card data. Everything is vectorized with numpy (only days and compromise draws are looped),
and every random draw comes from generators spawned from `settings.seed`, so the same settings
always give a bit-identical frame.

Identifiers are positions: customer i has customer_id i, terminal j has terminal_id j.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.spatial import cKDTree
from tqdm import tqdm

from pipelines.files import replacing
from pipelines.settings import SimulationSettings

TRANSACTION_COLUMNS = (
    "transaction_id",
    "tx_datetime",
    "customer_id",
    "terminal_id",
    "tx_amount",
    "tx_fraud",
    "tx_fraud_scenario",
)
SCENARIO_GENUINE = 0
SCENARIO_AMOUNT = 1
SCENARIO_TERMINAL = 2
SCENARIO_CUSTOMER = 3

AREA_SIZE = 100.0
SECONDS_PER_DAY = 86_400
NS_PER_SECOND = 1_000_000_000
NS_PER_DAY = SECONDS_PER_DAY * NS_PER_SECOND
TIME_OF_DAY_MEAN_S = 43_200.0
TIME_OF_DAY_STD_S = 20_000.0

_DAY_FILE = re.compile(r"^\d{4}-\d{2}-\d{2}\.(parquet|csv)$")
_DATA_SUFFIXES = (".parquet", ".csv")


@dataclass(frozen=True)
class TerminalAvailability:
    """Terminals each customer may use, as a CSR layout so lookups stay vectorized.

    Customer i's terminals are `terminal_ids[offsets[i]:offsets[i + 1]]`, sorted ascending.
    """

    offsets: np.ndarray
    terminal_ids: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        """Number of usable terminals per customer (0 means the customer never transacts)."""
        return np.diff(self.offsets)


@dataclass(frozen=True)
class Simulation:
    """A simulation run with the hidden state behind the labels, so tests and reports can audit.

    `compromised_terminals` / `compromised_customers` list every compromise draw with its
    half-open window [window_start, window_end) (the end may fall after the simulated period).
    """

    transactions: pd.DataFrame
    customers: pd.DataFrame
    terminals: pd.DataFrame
    availability: TerminalAvailability
    compromised_terminals: pd.DataFrame
    compromised_customers: pd.DataFrame


def generate_customer_profiles(n_customers: int, rng: np.random.Generator) -> pd.DataFrame:
    """Customer location and spending habits; they drive where, how often and how much."""
    x = rng.uniform(0.0, AREA_SIZE, n_customers)
    y = rng.uniform(0.0, AREA_SIZE, n_customers)
    mean_amount = rng.uniform(5.0, 100.0, n_customers)
    mean_nb_tx_per_day = rng.uniform(0.0, 4.0, n_customers)
    return pd.DataFrame(
        {
            "customer_id": np.arange(n_customers, dtype=np.int64),
            "x": x,
            "y": y,
            "mean_amount": mean_amount,
            "std_amount": mean_amount / 2.0,
            "mean_nb_tx_per_day": mean_nb_tx_per_day,
        }
    )


def generate_terminal_profiles(n_terminals: int, rng: np.random.Generator) -> pd.DataFrame:
    """Terminal locations; customers only shop at terminals near them."""
    x = rng.uniform(0.0, AREA_SIZE, n_terminals)
    y = rng.uniform(0.0, AREA_SIZE, n_terminals)
    return pd.DataFrame({"terminal_id": np.arange(n_terminals, dtype=np.int64), "x": x, "y": y})


def available_terminals(
    customers: pd.DataFrame, terminals: pd.DataFrame, radius: float
) -> TerminalAvailability:
    """Terminals within Euclidean `radius` of each customer (KD-tree, so it scales)."""
    tree = cKDTree(terminals[["x", "y"]].to_numpy())
    neighbours = tree.query_ball_point(
        customers[["x", "y"]].to_numpy(), r=radius, return_sorted=True
    )
    counts = np.fromiter((len(n) for n in neighbours), dtype=np.int64, count=len(neighbours))
    offsets = np.zeros(len(neighbours) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    flat = (
        np.concatenate([np.asarray(n, dtype=np.int64) for n in neighbours])
        if offsets[-1]
        else np.empty(0, dtype=np.int64)
    )
    terminal_ids = terminals["terminal_id"].to_numpy(dtype=np.int64)[flat]
    return TerminalAvailability(offsets=offsets, terminal_ids=terminal_ids)


def _generate_genuine(
    customers: pd.DataFrame,
    availability: TerminalAvailability,
    n_days: int,
    rng: np.random.Generator,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw every transaction day by day; returns (day, second, customer, terminal, amount)."""
    n_customers = len(customers)
    rate = customers["mean_nb_tx_per_day"].to_numpy()
    mean = customers["mean_amount"].to_numpy()
    std = customers["std_amount"].to_numpy()
    n_available = availability.counts
    can_pay = n_available > 0
    customer_index = np.arange(n_customers, dtype=np.int64)

    chunks: list[tuple[np.ndarray, ...]] = []
    for day in tqdm(range(n_days), desc="simulating days", unit="day", disable=not progress):
        counts = rng.poisson(rate)
        counts[~can_pay] = 0
        cust = np.repeat(customer_index, counts)
        n = cust.size
        seconds = rng.normal(TIME_OF_DAY_MEAN_S, TIME_OF_DAY_STD_S, n)
        amounts = rng.normal(mean[cust], std[cust])
        negative = amounts < 0
        amounts[negative] = rng.uniform(0.0, 2.0 * mean[cust[negative]])
        pick = (rng.random(n) * n_available[cust]).astype(np.int64)
        terminal = availability.terminal_ids[availability.offsets[cust] + pick]
        keep = (seconds >= 0) & (seconds < SECONDS_PER_DAY)
        chunks.append(
            (
                np.full(int(keep.sum()), day, dtype=np.int64),
                np.floor(seconds[keep]).astype(np.int64),
                cust[keep],
                terminal[keep],
                np.round(amounts[keep], 2),
            )
        )
    if not chunks:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty, empty, np.empty(0, dtype=np.float64)
    day, second, cust, terminal, amount = (np.concatenate(parts) for parts in zip(*chunks))
    return day, second, cust, terminal, amount


def _draw_compromised(
    population: int, per_day: int, n_days: int, rng: np.random.Generator
) -> np.ndarray:
    """Ids drawn without replacement each day; row d holds day d's draws."""
    k = min(per_day, population)
    if k == 0:
        return np.empty((n_days, 0), dtype=np.int64)
    return np.stack([rng.choice(population, size=k, replace=False) for _ in range(n_days)])


def _window_mask(draws: np.ndarray, population: int, n_days: int, length: int) -> np.ndarray:
    """(n_days, population) flags: True where the id is inside some compromise window."""
    mask = np.zeros((n_days, population), dtype=bool)
    for day, ids in enumerate(draws):
        mask[day : day + length, ids] = True
    return mask


def _draw_table(
    draws: np.ndarray, id_column: str, start: np.datetime64, length: int
) -> pd.DataFrame:
    """Compromise draws as a frame with half-open datetime windows."""
    n_days, k = draws.shape
    day = np.repeat(np.arange(n_days, dtype=np.int64), k)
    window_start = start + day * np.timedelta64(NS_PER_DAY, "ns")
    return pd.DataFrame(
        {
            id_column: draws.reshape(-1).astype(np.int64),
            "window_start": window_start,
            "window_end": window_start + np.timedelta64(length * NS_PER_DAY, "ns"),
        }
    )


def _select_customer_frauds(
    tx_day: np.ndarray,
    tx_customer: np.ndarray,
    window: np.ndarray,
    share: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Pick round(share * n) transactions per compromise period, uniformly at random.

    Overlapping windows of one customer merge into a single period, so no transaction is
    multiplied twice and the share holds per period.
    """
    n_days = window.shape[0]
    previous = np.vstack([np.zeros((1, window.shape[1]), dtype=bool), window[:-1]])
    period = np.cumsum(window & ~previous, axis=0)
    inside = np.flatnonzero(window[tx_day, tx_customer])
    if inside.size == 0:
        return inside
    group = tx_customer[inside] * (n_days + 1) + period[tx_day[inside], tx_customer[inside]]
    order = np.lexsort((rng.random(inside.size), group))
    _, first, size = np.unique(group[order], return_index=True, return_counts=True)
    rank = np.arange(inside.size) - np.repeat(first, size)
    quota = np.floor(share * size + 0.5).astype(np.int64)
    return np.sort(inside[order[rank < np.repeat(quota, size)]])


def _start_ns(start_date: date) -> np.datetime64:
    return np.datetime64(start_date, "D").astype("datetime64[ns]")


def run_simulation(settings: SimulationSettings, progress: bool = False) -> Simulation:
    """Simulate transactions and keep the profiles and compromise draws that explain them."""
    if settings.seed < 0:
        raise ValueError(f"simulation seed must be non-negative, got {settings.seed}")
    # Independent streams: changing e.g. n_terminals does not reshuffle customer profiles.
    rng_customers, rng_terminals, rng_tx, rng_terminal_fraud, rng_customer_fraud = (
        np.random.default_rng(settings.seed).spawn(5)
    )
    customers = generate_customer_profiles(settings.n_customers, rng_customers)
    terminals = generate_terminal_profiles(settings.n_terminals, rng_terminals)
    availability = available_terminals(customers, terminals, settings.radius)
    n_days = settings.n_days

    day, second, cust, terminal, amount = _generate_genuine(
        customers, availability, n_days, rng_tx, progress
    )
    start = _start_ns(settings.start_date)
    ns = start.astype(np.int64) + day * NS_PER_DAY + second * NS_PER_SECOND
    order = np.argsort(ns, kind="stable")
    ns, day, cust, terminal, amount = (
        ns[order],
        day[order],
        cust[order],
        terminal[order],
        amount[order],
    )

    # Scenario 1: large amounts (on the amount as generated, before scenario 3 inflates it).
    scenario = np.where(amount > settings.amount_fraud_threshold, SCENARIO_AMOUNT, 0).astype(
        np.int8
    )

    # Scenario 2: everything paid at a compromised terminal during its window.
    terminal_draws = _draw_compromised(
        settings.n_terminals, settings.compromised_terminals_per_day, n_days, rng_terminal_fraud
    )
    terminal_window = _window_mask(
        terminal_draws, settings.n_terminals, n_days, settings.terminal_compromise_days
    )
    scenario[terminal_window[day, terminal]] = SCENARIO_TERMINAL

    # Scenario 3: a share of a compromised customer's payments, with inflated amounts.
    customer_draws = _draw_compromised(
        settings.n_customers, settings.compromised_customers_per_day, n_days, rng_customer_fraud
    )
    customer_window = _window_mask(
        customer_draws, settings.n_customers, n_days, settings.customer_compromise_days
    )
    chosen = _select_customer_frauds(
        day, cust, customer_window, settings.customer_fraud_share, rng_customer_fraud
    )
    amount[chosen] = np.round(amount[chosen] * settings.customer_amount_multiplier, 2)
    scenario[chosen] = SCENARIO_CUSTOMER

    transactions = pd.DataFrame(
        {
            "transaction_id": np.arange(ns.size, dtype=np.int64),
            "tx_datetime": ns.view("datetime64[ns]"),
            "customer_id": customers["customer_id"].to_numpy()[cust],
            "terminal_id": terminal.astype(np.int64),
            "tx_amount": amount.astype(np.float64),
            "tx_fraud": (scenario > 0).astype(np.int8),
            "tx_fraud_scenario": scenario,
        },
        columns=list(TRANSACTION_COLUMNS),
    )
    return Simulation(
        transactions=transactions,
        customers=customers,
        terminals=terminals,
        availability=availability,
        compromised_terminals=_draw_table(
            terminal_draws, "terminal_id", start, settings.terminal_compromise_days
        ),
        compromised_customers=_draw_table(
            customer_draws, "customer_id", start, settings.customer_compromise_days
        ),
    )


def simulate_transactions(settings: SimulationSettings, progress: bool = False) -> pd.DataFrame:
    """The labelled transaction frame only; see `run_simulation` for the hidden state."""
    return run_simulation(settings, progress=progress).transactions


def fraud_summary(transactions: pd.DataFrame) -> dict[str, int | float]:
    """Counts per fraud scenario and the overall rate, for the CLI and run logs."""
    n = len(transactions)
    frauds = int(transactions["tx_fraud"].sum())
    per_scenario = transactions["tx_fraud_scenario"].value_counts()
    summary: dict[str, int | float] = {
        "transactions": n,
        "frauds": frauds,
        "fraud_rate": frauds / n if n else 0.0,
    }
    for code in (SCENARIO_AMOUNT, SCENARIO_TERMINAL, SCENARIO_CUSTOMER):
        summary[f"scenario_{code}"] = int(per_scenario.get(code, 0))
    return summary


def _write_atomically(table: pa.Table, target: Path) -> None:
    """Readers never see a half-written day."""
    with replacing(target) as handle:
        pq.write_table(table, handle)


def write_daily_parquet(
    transactions: pd.DataFrame,
    folder: Path,
    progress: bool = False,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Write one `YYYY-MM-DD.parquet` per calendar day; returns the paths in day order.

    Refuses a folder already holding .parquet/.csv files (mixing two simulations would silently
    corrupt training data) unless `overwrite=True`, which first deletes the old day files.
    """
    folder = Path(folder)
    if "tx_datetime" not in transactions.columns:
        raise ValueError("transactions have no tx_datetime column")
    stamps = pd.to_datetime(transactions["tx_datetime"])
    if stamps.isna().any():
        raise ValueError("transactions contain missing tx_datetime values")
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _DATA_SUFFIXES
    )
    if existing and not overwrite:
        raise ValueError(
            f"{folder} already holds {len(existing)} data file(s) (e.g. {existing[0].name}); "
            "pass overwrite=True to replace them"
        )
    if overwrite:
        for path in existing:
            if _DAY_FILE.match(path.name):
                path.unlink()

    days = stamps.to_numpy().astype("datetime64[D]")
    order = np.argsort(days, kind="stable")
    unique_days, first = np.unique(days[order], return_index=True)
    bounds = np.append(first, len(order))
    frame = transactions.reset_index(drop=True)
    paths: list[Path] = []
    for i in tqdm(range(len(unique_days)), desc="writing days", unit="file", disable=not progress):
        part = frame.iloc[order[bounds[i] : bounds[i + 1]]]
        target = folder / f"{unique_days[i]}.parquet"
        _write_atomically(pa.Table.from_pandas(part, preserve_index=False), target)
        paths.append(target)
    return paths
