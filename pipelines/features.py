"""Point-in-time features: the one definition that training, serving and monitoring all call.

Every feature of a transaction depends only on that transaction, on transactions that came
before it (in time order; ties keep input order), and on labels that had matured by then: a
label becomes known `label_delay_days` after its transaction. Windows are half-open intervals
(start, end] on the timeline, compared at millisecond resolution.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from itertools import accumulate

import numpy as np
import pandas as pd

from pipelines.settings import FeatureSettings

DAY_MS = 86_400_000
MAX_INT64 = np.iinfo(np.int64).max
# below this prior spend the amount ratio is undefined (NaN), not a rounding-error blow-up
MIN_PRIOR_SPEND = 1e-6
EPOCH = datetime(1970, 1, 1)


def epoch_ms(stamp: datetime) -> int:
    """Milliseconds since the epoch of a naive (UTC) date-time, as the online state stores it."""
    delta = stamp - EPOCH
    return delta.days * DAY_MS + delta.seconds * 1000 + delta.microseconds // 1000


def feature_names(settings: FeatureSettings) -> list[str]:
    """The model's input columns, in order."""
    names = ["tx_amount", "tx_during_weekend", "tx_during_night"]
    for window in settings.customer_windows_days:
        names += [f"customer_nb_tx_{window}d", f"customer_avg_amount_{window}d"]
    names.append(f"amount_to_customer_avg_{max(settings.customer_windows_days)}d")
    names += quantile_names(settings)
    names += _large_amount_names(settings)
    for window in settings.terminal_windows_days:
        names += [f"terminal_nb_tx_{window}d", f"terminal_risk_{window}d"]
    if settings.terminal_risk_half_life_days is not None:
        names.append(f"terminal_risk_half_life_{settings.terminal_risk_half_life_days:g}d")
    return names


def quantile_names(settings: FeatureSettings) -> list[str]:
    """amount_to_customer_p90_30d, ..._max_30d: one per `customer_amount_quantiles`."""
    window = max(settings.customer_windows_days)
    return [
        f"amount_to_customer_{'max' if q == 1 else f'p{q * 100:g}'}_{window}d"
        for q in settings.customer_amount_quantiles
    ]


def _large_amount_names(settings: FeatureSettings) -> list[str]:
    window = settings.large_amount_window_days
    return [f"customer_nb_large_amounts_{r:g}x_{window}d" for r in settings.large_amount_ratios]


# window cells (rows x window length) the quantiles and the decayed risk hold at once
_BLOCK_CELLS = 4_000_000

# a ratio counts as large only above threshold + this margin, so the batch and the one-row path
# (whose sums round differently) cannot disagree on a ratio that lands exactly on a threshold
RATIO_MARGIN = 1e-9


def build_features(transactions: pd.DataFrame, settings: FeatureSettings) -> pd.DataFrame:
    """Compute every feature for every row of a raw-schema frame, aligned to its index.

    `tx_fraud` is optional; where present, NaN means "label not known" and such rows count
    neither as fraud nor as labelled in the terminal risk.
    """
    return build_features_carried(transactions, settings)[0]


def build_features_carried(
    transactions: pd.DataFrame,
    settings: FeatureSettings,
    spend_seed: pd.DataFrame | None = None,
    parallel: bool = False,
) -> tuple[pd.DataFrame, np.ndarray]:
    """`build_features`, continuing each card's running spend from `spend_seed`.

    The batch path streams its input in chunks and drops the history no window reaches; the
    windowed spend sums are differences of each card's running (Kahan) sum, so to stay equal
    to the one-shot result bit for bit a card's running sum must resume where the dropped rows
    left it. `spend_seed` (indexed by customer id, columns SPEND_STATE) gives that state, and
    the second result is the state after every row (rows in input order, columns as
    SPEND_STATE). With `parallel`, card and terminal features run on two threads.
    """
    times_ms, amounts, labels = raw_arrays(transactions)
    datetimes = pd.DatetimeIndex(transactions["tx_datetime"])

    columns: dict[str, np.ndarray] = {
        "tx_amount": amounts,
        "tx_during_weekend": (datetimes.dayofweek >= 5).astype(np.float64),
        "tx_during_night": (datetimes.hour <= settings.night_last_hour).astype(np.float64),
    }
    customer_args = (transactions["customer_id"], times_ms, amounts, settings, spend_seed)
    terminal_args = (transactions["terminal_id"], times_ms, labels, settings)
    if parallel:
        with ThreadPoolExecutor(1) as pool:
            terminal = pool.submit(_terminal_features, *terminal_args)
            customer, state = _customer_features(*customer_args)
            columns.update(customer)
            columns.update(terminal.result())
    else:
        customer, state = _customer_features(*customer_args)
        columns.update(customer)
        columns.update(_terminal_features(*terminal_args))
    frame = pd.DataFrame(columns, index=transactions.index)
    return frame[feature_names(settings)], state


def raw_arrays(transactions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Times (epoch ms), amounts and labels (NaN: not known, or no label column) of raw rows."""
    times_ms = _to_epoch_ms(transactions["tx_datetime"])
    amounts = transactions["tx_amount"].to_numpy(dtype=np.float64)
    if "tx_fraud" in transactions:
        labels = pd.to_numeric(transactions["tx_fraud"], errors="coerce").to_numpy(np.float64)
    else:
        labels = np.full(len(transactions), np.nan)
    return times_ms, amounts, labels


# a card's running spend: the Kahan sum and its compensation (pandas' grouped cumsum state)
SPEND_STATE = ("spend_sum", "spend_compensation")
# below this many cards still running, the grouped sum finishes card by card
_VECTOR_MIN_GROUPS = 32


def grouped_kahan_cumsum(
    values: np.ndarray, codes: np.ndarray, sum0: np.ndarray, compensation0: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Running Kahan sums of `values` per group, each group's rows contiguous in `codes`.

    The same operations in the same order as pandas' `groupby(...).cumsum()` (so the same
    bits, NaN skipped), but starting from a given (sum, compensation) per group code. Returns
    the running sum and the compensation after every row. Vectorized across groups, one rank
    at a time; the last few long groups finish in plain Python floats (IEEE doubles as in C).
    """
    n = len(values)
    running = np.empty(n)
    compensations = np.empty(n)
    if n == 0:
        return running, compensations
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    lengths = np.diff(np.r_[starts, n])
    by_length = np.argsort(-lengths, kind="stable")
    starts, lengths = starts[by_length], lengths[by_length]
    group = codes[starts]
    total = sum0[group].astype(np.float64)
    compensation = compensation0[group].astype(np.float64)
    descending = -lengths
    rank = 0
    while True:
        active = int(np.searchsorted(descending, -rank, side="left"))
        if active < _VECTOR_MIN_GROUPS:
            break
        rows = starts[:active] + rank
        value = values[rows]
        before, carried = total[:active], compensation[:active]
        y = value - carried
        t = before + y
        new_compensation = (t - before) - y
        missing = np.isnan(value)
        if missing.any():
            t = np.where(missing, before, t)
            new_compensation = np.where(missing, carried, new_compensation)
        total[:active] = t
        compensation[:active] = new_compensation
        running[rows] = np.where(missing, np.nan, t)
        compensations[rows] = new_compensation
        rank += 1
    for g in range(active):
        first, last = int(starts[g]) + rank, int(starts[g] + lengths[g])
        acc, comp = float(total[g]), float(compensation[g])
        sums, comps = [], []
        for value in values[first:last].tolist():
            if value != value:  # NaN: skipped, as pandas does
                sums.append(float("nan"))
            else:
                y = value - comp
                t = acc + y
                comp = (t - acc) - y
                acc = t
                sums.append(t)
            comps.append(comp)
        running[first:last] = sums
        compensations[first:last] = comps
    return running, compensations


def _to_epoch_ms(values: pd.Series) -> np.ndarray:
    stamps = pd.to_datetime(values)
    if getattr(stamps.dt, "tz", None) is not None:
        stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
    return stamps.to_numpy(dtype="datetime64[ms]").astype(np.int64)


class _EntityTimeline:
    """Rows sorted by (entity, time, input position) with a collision-free composite key."""

    def __init__(self, entity: pd.Series, times_ms: np.ndarray, horizon_ms: int) -> None:
        codes, self.uniques = pd.factorize(entity, sort=False)
        n = len(codes)
        if n > 1 and bool((times_ms[1:] >= times_ms[:-1]).all()):
            # already in time order (as loaded): a stable sort by entity gives the same order
            # as the three-key sort below, in a fraction of the time (a radix sort when the
            # codes fit in 16 bits)
            small = n and codes.min() >= 0 and codes.max() < 2**16
            self.order = np.argsort(codes.astype(np.uint16) if small else codes, kind="stable")
        else:
            self.order = np.lexsort((np.arange(n), times_ms, codes))
        start = int(times_ms.min()) if n else 0
        span = (int(times_ms.max()) - start if n else 0) + horizon_ms + 1
        if n and (int(codes.max()) + 1) * span >= MAX_INT64:
            raise ValueError("too many entities over too long a period for millisecond windows")
        self.codes = codes[self.order]
        self.key = self.codes.astype(np.int64) * span + (times_ms[self.order] - start)
        self.position = np.arange(n)

    def bound(self, offset_ms: int) -> np.ndarray:
        """Index of the first row of the same entity with time > (row time - offset)."""
        return np.searchsorted(self.key, self.key - offset_ms, side="right")

    def running_sum(self, values_sorted: np.ndarray) -> np.ndarray:
        """Each entity's running (Kahan) sum of values in timeline order."""
        return pd.Series(values_sorted).groupby(self.codes).cumsum().to_numpy()

    def window_sum(
        self,
        values_sorted: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        running: np.ndarray | None = None,
    ):
        """Sum of values over rows [lower, upper) of the same entity, via per-entity cumsums.

        Per-entity (not global) running sums keep the rounding error of a window proportional
        to that entity's own history, so online and offline results agree to 1e-9. `running`:
        those sums when already computed.
        """
        if running is None:
            running = self.running_sum(values_sorted)
        before = running - values_sorted
        empty = upper <= lower
        last = np.where(empty, lower, upper - 1).clip(max=len(values_sorted) - 1)
        total = running[last] - before[lower.clip(max=len(values_sorted) - 1)]
        return np.where(empty, 0.0, total)


def _unsort_columns(order: np.ndarray, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Columns in timeline order back to input order, in one row-wise scatter for all."""
    names = list(columns)
    stacked = np.column_stack([columns[name] for name in names])
    result = np.empty_like(stacked)
    result[order] = stacked
    return {name: result[:, i] for i, name in enumerate(names)}


def _customer_features(
    customer: pd.Series,
    times_ms: np.ndarray,
    amounts: np.ndarray,
    settings: FeatureSettings,
    spend_seed: pd.DataFrame | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Spending over (t - w, t], the current transaction included, as in the handbook; and
    each row's running spend state (see `build_features_carried`)."""
    if len(customer) == 0:
        return {name: np.empty(0) for name in _customer_names(settings)}, np.empty((0, 2))
    longest = max(settings.customer_windows_days)
    timeline = _EntityTimeline(customer, times_ms, settings.customer_history_days * DAY_MS)
    sorted_amounts = amounts[timeline.order]
    sum0, compensation0 = _seed_for(timeline.uniques, spend_seed)
    running, compensation = grouped_kahan_cumsum(
        sorted_amounts, timeline.codes, sum0, compensation0
    )
    upper = timeline.position + 1
    out: dict[str, np.ndarray] = {}
    for window in settings.customer_windows_days:
        lower = timeline.bound(window * DAY_MS)
        count = (upper - lower).astype(np.float64)
        total = timeline.window_sum(sorted_amounts, lower, upper, running)
        out[f"customer_nb_tx_{window}d"] = count
        out[f"customer_avg_amount_{window}d"] = total / count
        if window == longest:
            prior_count = count - 1
            prior_total = total - sorted_amounts
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(
                    (prior_count > 0) & (prior_total > MIN_PRIOR_SPEND),
                    sorted_amounts * prior_count / prior_total,
                    np.nan,
                )
            out[f"amount_to_customer_avg_{window}d"] = ratio
            large = np.nan_to_num(ratio, nan=0.0)
            longest_lower = lower
    if settings.large_amount_ratios:
        lower = timeline.bound(settings.large_amount_window_days * DAY_MS)
        for threshold, name in zip(settings.large_amount_ratios, _large_amount_names(settings)):
            hits = (large > threshold + RATIO_MARGIN).astype(np.float64)
            out[name] = timeline.window_sum(hits, lower, timeline.position)
    if settings.customer_amount_quantiles:
        references = window_quantiles(
            sorted_amounts, longest_lower, timeline.position, settings.customer_amount_quantiles
        )
        for name, reference in zip(quantile_names(settings), references):
            out[name] = amount_ratio(sorted_amounts, reference)
    out[SPEND_STATE[0]], out[SPEND_STATE[1]] = running, compensation
    out = _unsort_columns(timeline.order, out)
    state = np.column_stack([out.pop(SPEND_STATE[0]), out.pop(SPEND_STATE[1])])
    return out, state


def _row_blocks(count: np.ndarray) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges [start, stop) holding at most about _BLOCK_CELLS window cells."""
    ends = np.cumsum(count)
    start = 0
    while start < len(count):
        base = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, base + _BLOCK_CELLS, side="right"))
        stop = max(stop, start + 1)
        yield start, stop
        start = stop


def window_quantiles(
    values: np.ndarray, lower: np.ndarray, upper: np.ndarray, quantiles: Sequence[float]
) -> list[np.ndarray]:
    """Each quantile (linear interpolation, numpy's default) of values[lower[i]:upper[i]] per
    row, NaN for an empty window. Rows of the same window length are taken together: their
    order statistics sit at the same positions, which a partial sort finds."""
    n = len(values)
    count = upper - lower
    out = [np.full(n, np.nan) for _ in quantiles]
    by_count = np.argsort(count, kind="stable")
    sizes = np.bincount(count[by_count]) if n else np.zeros(1, np.int64)
    first = 0
    for size, rows_of_size in enumerate(sizes):
        rows = by_count[first : first + rows_of_size]
        first += rows_of_size
        if size == 0 or rows_of_size == 0:
            continue
        picks = []
        for q in quantiles:
            position = q * (size - 1)
            below = int(np.floor(position))
            picks.append((below, min(below + 1, size - 1), position - below))
        kth = sorted({k for below, above, _ in picks for k in (below, above)})
        # every window of this length, as a view: a row of it is values[i : i + size]
        windows = np.lib.stride_tricks.sliding_window_view(values, size)
        step = max(1, _BLOCK_CELLS // size)
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            window = np.partition(windows[lower[chunk]], kth, axis=1)
            for column, (below, above, fraction) in zip(out, picks):
                low, high = window[:, below], window[:, above]
                column[chunk] = low + (high - low) * fraction
    return out


def amount_ratio(amounts: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """amount / reference, NaN where the reference is missing or not above MIN_PRIOR_SPEND."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(reference > MIN_PRIOR_SPEND, amounts / reference, np.nan)


def _seed_for(uniques: pd.Index | np.ndarray, seed: pd.DataFrame | None):
    """Each entity code's starting (sum, compensation): from `seed` where known, else zero."""
    if seed is None or seed.empty:
        return np.zeros(len(uniques)), np.zeros(len(uniques))
    found = seed.index.get_indexer(pd.Index(uniques))
    known = found >= 0
    values = seed.loc[:, list(SPEND_STATE)].to_numpy(np.float64)
    sum0 = np.where(known, values[found, 0], 0.0)
    compensation0 = np.where(known, values[found, 1], 0.0)
    return sum0, compensation0


def _customer_names(settings: FeatureSettings) -> list[str]:
    return [n for n in feature_names(settings) if n.startswith(("customer_", "amount_to_"))]


def _terminal_features(
    terminal: pd.Series, times_ms: np.ndarray, labels: np.ndarray, settings: FeatureSettings
) -> dict[str, np.ndarray]:
    """Terminal activity and fraud risk over (t - delay - w, t - delay]: matured labels only."""
    names = [n for n in feature_names(settings) if n.startswith("terminal_")]
    if len(terminal) == 0:
        return {name: np.empty(0) for name in names}
    delay_ms = settings.label_delay_days * DAY_MS
    longest = max(settings.terminal_windows_days)
    timeline = _EntityTimeline(terminal, times_ms, longest * DAY_MS + delay_ms)
    sorted_labels = labels[timeline.order]
    labelled = (~np.isnan(sorted_labels)).astype(np.float64)
    frauds = np.nan_to_num(sorted_labels, nan=0.0)
    upper = timeline.bound(delay_ms)
    labelled_running = timeline.running_sum(labelled)
    frauds_running = timeline.running_sum(frauds)
    out: dict[str, np.ndarray] = {}
    for window in settings.terminal_windows_days:
        lower = timeline.bound(delay_ms + window * DAY_MS)
        count = (upper - lower).clip(min=0).astype(np.float64)
        known = timeline.window_sum(labelled, lower, upper, labelled_running)
        fraud = timeline.window_sum(frauds, lower, upper, frauds_running)
        with np.errstate(divide="ignore", invalid="ignore"):
            risk = np.where(known > 0, fraud / known, 0.0)
        out[f"terminal_nb_tx_{window}d"] = count
        out[f"terminal_risk_{window}d"] = risk
    half_life = settings.terminal_risk_half_life_days
    if half_life is not None:
        out[f"terminal_risk_half_life_{half_life:g}d"] = _decayed_risk(
            times_ms[timeline.order],
            sorted_labels,
            timeline.bound(delay_ms + longest * DAY_MS),
            upper,
            half_life * DAY_MS,
        )
    return _unsort_columns(timeline.order, out)


def _decayed_risk(
    times_ms: np.ndarray,
    labels: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    half_life_ms: float,
) -> np.ndarray:
    """Per row, the labelled rows [lower, upper) weighted by 2 ** (-age / half-life): the
    weighted share of frauds (0 with no label). Each row's weights are summed in row order from
    0.0, as `_decayed_risk_of` sums them (bincount adds in input order), so a streamed chunk
    gives the same bits."""
    times = times_ms.astype(np.float64)
    count = np.maximum(upper - lower, 0)
    risk = np.zeros(len(times))
    for start, stop in _row_blocks(count):
        block = count[start:stop]
        row = np.repeat(np.arange(stop - start), block)
        offsets = np.cumsum(block) - block
        other = np.repeat(lower[start:stop] - offsets, block) + np.arange(len(row))
        label = labels[other]
        known = ~np.isnan(label)
        row, other, label = row[known], other[known], label[known]
        weight = np.exp2(-(times[start + row] - times[other]) / half_life_ms)
        total = np.bincount(row, weight, minlength=stop - start)
        fraud = np.bincount(row, weight * label, minlength=stop - start)
        with np.errstate(divide="ignore", invalid="ignore"):
            risk[start:stop] = np.where(total > 0, fraud / total, 0.0)
    return risk


def features_from_history(
    tx_datetime: datetime,
    tx_amount: float,
    customer_times_ms: Sequence[int],
    customer_amounts: Sequence[float],
    terminal_times_ms: Sequence[int],
    terminal_labels: Sequence[float | None],
    settings: FeatureSettings,
) -> np.ndarray:
    """The same features for one transaction, from its card's and terminal's earlier history.

    The online path: `customer_*` are the card's earlier transactions in (time, arrival) order
    (time <= this one's, `settings.customer_history_days` back at most); `terminal_*` the
    terminal's transactions in time order, with their labels (None or NaN: unknown). Values
    follow `feature_names(settings)` and equal `build_features`. Plain Python on purpose: for one
    row of ~100 history values, numpy's per-call overhead costs more than the arithmetic.
    """
    stamp = tx_datetime
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(timezone.utc).replace(tzinfo=None)
    t = epoch_ms(stamp)
    amount = float(tx_amount)
    values = [amount, float(stamp.weekday() >= 5), float(stamp.hour <= settings.night_last_hour)]

    times = customer_times_ms
    n = len(times)
    running = list(accumulate(customer_amounts, initial=0.0))
    longest = max(settings.customer_windows_days)
    ratio = float("nan")
    for window in settings.customer_windows_days:
        first = bisect_right(times, t - window * DAY_MS)
        prior_total = running[n] - running[first]
        count = 1.0 + (n - first)
        values += [count, (amount + prior_total) / count]
        if window == longest:
            longest_first = first
            if count > 1 and prior_total > MIN_PRIOR_SPEND:
                ratio = amount * (count - 1) / prior_total
    values.append(ratio)
    if settings.customer_amount_quantiles:
        earlier = sorted(customer_amounts[longest_first:n])
        for q in settings.customer_amount_quantiles:
            reference = float("nan")
            if earlier:
                position = q * (len(earlier) - 1)
                below = int(position // 1)
                low, high = earlier[below], earlier[min(below + 1, len(earlier) - 1)]
                reference = low + (high - low) * (position - below)
            values.append(amount / reference if reference > MIN_PRIOR_SPEND else float("nan"))
    if settings.large_amount_ratios:
        hits = [0.0] * len(settings.large_amount_ratios)
        limits = [threshold + RATIO_MARGIN for threshold in settings.large_amount_ratios]
        window_ms = longest * DAY_MS
        for j in range(bisect_right(times, t - settings.large_amount_window_days * DAY_MS), n):
            # the earlier row's own amount_to_customer_avg, from the rows before it
            first = bisect_right(times, times[j] - window_ms, 0, j)
            total = running[j] - running[first]
            if j > first and total > MIN_PRIOR_SPEND:
                earlier = customer_amounts[j] * (j - first) / total
                for k, limit in enumerate(limits):
                    if earlier > limit:
                        hits[k] += 1.0
        values += hits

    # the terminal's rows in time order: a window is a slice, its sums prefix-sum differences
    known, frauds = [0], [0.0]
    for label in terminal_labels:
        if label is None or label != label:  # unknown (NaN != NaN)
            known.append(known[-1])
            frauds.append(frauds[-1])
        else:
            known.append(known[-1] + 1)
            frauds.append(frauds[-1] + float(label))
    matured_end = t - settings.label_delay_days * DAY_MS
    last = bisect_right(terminal_times_ms, matured_end)
    for window in settings.terminal_windows_days:
        first = bisect_right(terminal_times_ms, matured_end - window * DAY_MS, 0, last)
        labelled = known[last] - known[first]
        fraud = frauds[last] - frauds[first] if labelled else 0.0
        values += [float(last - first), fraud / labelled if labelled else 0.0]
    if settings.terminal_risk_half_life_days is not None:
        first = bisect_right(
            terminal_times_ms, matured_end - max(settings.terminal_windows_days) * DAY_MS, 0, last
        )
        half_life_ms = settings.terminal_risk_half_life_days * DAY_MS
        values.append(
            _decayed_risk_of(t, terminal_times_ms, terminal_labels, first, last, half_life_ms)
        )
    return np.array(values, dtype=np.float64)


def _decayed_risk_of(
    t: int,
    times_ms: Sequence[int],
    labels: Sequence[float | None],
    first: int,
    last: int,
    half_life_ms: float,
) -> float:
    """`_decayed_risk` of one row from the terminal's rows [first, last)."""
    total = fraud = 0.0
    for j in range(first, last):
        label = labels[j]
        if label is None or label != label:
            continue
        weight = 2.0 ** (-float(t - times_ms[j]) / half_life_ms)
        total += weight
        fraud += weight * float(label)
    return fraud / total if total > 0 else 0.0
