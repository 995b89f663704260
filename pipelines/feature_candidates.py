"""Features under study: offline definitions the ablation (`pipelines/training/ablation.py`)
tries beside the model's own (`pipelines/features.py`).

The same rules as the model's features: a transaction's value depends only on the rows before
it (time order, ties in input order) and on labels that had matured by then, a label being
known `label_delay_days` after its transaction; windows are half-open (start, end] at
millisecond resolution. A candidate the ablation earns moves into `pipelines/features.py` with
its online, batch and Spark forms and their parity tests; the others stay here, offline only,
so that the ablation that judged them can be run again.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.features import (
    DAY_MS,
    _EntityTimeline,
    _unsort_columns,
    amount_ratio,
    raw_arrays,
    window_quantiles,
)
from pipelines.settings import FeatureSettings

# candidate groups: what the ablation adds or removes together. Earned and moved into the
# model's features (`customer_amount_quantiles`, `terminal_risk_half_life_days`): the card's
# p90 and largest amount, the terminal's decayed risk.
GROUPS: dict[str, tuple[str, ...]] = {
    "card_amount_median": ("amount_to_customer_median",),
    "card_amount_genuine": ("amount_to_customer_genuine_avg",),
    "card_time_since_previous": ("customer_hours_since_previous",),
    "card_terminal_first_seen": ("customer_terminal_first_seen",),
    "terminal_matured_frauds": ("terminal_nb_frauds",),
    "terminal_time_since_fraud": ("terminal_days_since_fraud",),
}


def candidate_names() -> list[str]:
    return [name for group in GROUPS.values() for name in group]


def build_candidates(transactions: pd.DataFrame, settings: FeatureSettings) -> pd.DataFrame:
    """Every candidate feature for every row of a raw-schema frame (index kept).

    `tx_fraud`, where present, may be NaN (not known): such rows count as neither fraud nor
    genuine.
    """
    times_ms, amounts, labels = raw_arrays(transactions)
    columns: dict[str, np.ndarray] = {}
    if len(transactions):
        columns.update(_card(transactions["customer_id"], times_ms, amounts, labels, settings))
        columns.update(_card_terminal(transactions, times_ms, settings))
        columns.update(_terminal(transactions["terminal_id"], times_ms, labels, settings))
    else:
        columns = {name: np.empty(0) for name in candidate_names()}
    return pd.DataFrame(columns, index=transactions.index)[candidate_names()]


def _card(
    customer: pd.Series,
    times_ms: np.ndarray,
    amounts: np.ndarray,
    labels: np.ndarray,
    settings: FeatureSettings,
) -> dict[str, np.ndarray]:
    longest = max(settings.customer_windows_days) * DAY_MS
    delay = settings.label_delay_days * DAY_MS
    timeline = _EntityTimeline(customer, times_ms, longest + delay)
    sorted_amounts = amounts[timeline.order]
    sorted_times = times_ms[timeline.order]
    lower = timeline.bound(longest)
    upper = timeline.position  # earlier rows only
    (median,) = window_quantiles(sorted_amounts, lower, upper, (0.5,))
    same_card = np.r_[False, timeline.codes[1:] == timeline.codes[:-1]]
    gap = sorted_times - np.r_[0, sorted_times[:-1]]
    previous = same_card & (gap < longest)
    # matured genuine amounts: the card's rows in (t - delay - longest, t - delay], label 0
    sorted_labels = labels[timeline.order]
    genuine = (sorted_labels == 0).astype(np.float64)
    matured_upper = timeline.bound(delay)
    matured_lower = timeline.bound(delay + longest)
    genuine_n = timeline.window_sum(genuine, matured_lower, matured_upper)
    genuine_sum = timeline.window_sum(genuine * sorted_amounts, matured_lower, matured_upper)
    with np.errstate(divide="ignore", invalid="ignore"):
        genuine_avg = np.where(genuine_n > 0, genuine_sum / genuine_n, np.nan)
    out = {
        "amount_to_customer_median": amount_ratio(sorted_amounts, median),
        "amount_to_customer_genuine_avg": amount_ratio(sorted_amounts, genuine_avg),
        "customer_hours_since_previous": np.where(previous, gap / 3_600_000.0, np.nan),
    }
    return _unsort_columns(timeline.order, out)


def _card_terminal(
    transactions: pd.DataFrame, times_ms: np.ndarray, settings: FeatureSettings
) -> dict[str, np.ndarray]:
    """1.0 when the card has no earlier transaction at this terminal in its longest window."""
    longest = max(settings.customer_windows_days) * DAY_MS
    card, _ = pd.factorize(transactions["customer_id"], sort=False)
    terminal, terminals = pd.factorize(transactions["terminal_id"], sort=False)
    pair = card.astype(np.int64) * max(len(terminals), 1) + terminal
    timeline = _EntityTimeline(pd.Series(pair), times_ms, longest)
    sorted_times = times_ms[timeline.order]
    same = np.r_[False, timeline.codes[1:] == timeline.codes[:-1]]
    seen = same & (sorted_times - np.r_[0, sorted_times[:-1]] < longest)
    return _unsort_columns(
        timeline.order, {"customer_terminal_first_seen": (~seen).astype(np.float64)}
    )


def _terminal(
    terminal: pd.Series, times_ms: np.ndarray, labels: np.ndarray, settings: FeatureSettings
) -> dict[str, np.ndarray]:
    """Matured labels of the terminal's rows in (t - delay - longest, t - delay]."""
    delay = settings.label_delay_days * DAY_MS
    longest = max(settings.terminal_windows_days) * DAY_MS
    timeline = _EntityTimeline(terminal, times_ms, longest + delay)
    sorted_labels = labels[timeline.order]
    sorted_times = times_ms[timeline.order].astype(np.float64)
    n = len(sorted_labels)
    upper = timeline.bound(delay)
    lower = timeline.bound(delay + longest)
    fraud = np.nan_to_num(sorted_labels, nan=0.0)
    frauds = timeline.window_sum(fraud, lower, upper)
    last_fraud = np.maximum.accumulate(np.where(fraud > 0, np.arange(n), -1))
    latest = last_fraud[np.maximum(upper - 1, 0)]
    found = (upper > lower) & (latest >= lower)
    since = np.where(found, (sorted_times - sorted_times[np.maximum(latest, 0)]) / DAY_MS, np.nan)
    out = {
        "terminal_nb_frauds": frauds,
        "terminal_days_since_fraud": since,
    }
    return _unsort_columns(timeline.order, out)
