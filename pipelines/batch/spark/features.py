"""The point-in-time features of `pipelines.features.build_features`, with Spark windows.

The same definition, row for row (the parity test holds them equal to 1e-9):
- a card's windows cover (t - w, t] and, among transactions at the same millisecond, only those
  at or before this one in input order: a time-range window per card, less the card's later
  transactions at the same time (a window per card and millisecond, ordered by input order);
- the large-amount counts look at the card's earlier transactions (the current one excluded,
  earlier ties included) of the last `large_amount_window_days`, each judged by its own ratio to
  the card's spending before it;
- the amount quantiles sort the card's earlier amounts of its longest window (the same earlier
  rows as the large-amount counts: this one and later ties excluded);
- a terminal's windows cover (t - delay - w, t - delay]: transactions whose label had matured,
  whatever their order; a missing label counts as a transaction but not as labelled; the
  decayed risk weighs each matured label of the longest window by 2 ** (-age / half-life).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from pipelines.features import (
    DAY_MS,
    MIN_PRIOR_SPEND,
    RATIO_MARGIN,
    feature_names,
    quantile_names,
)
from pipelines.settings import LABEL_COLUMN, FeatureSettings

TIME_MS = "_t_ms"
ORDER = ("input_file", "input_row")


def col(name: str) -> Column:
    """A column by its exact name (feature names hold dots, e.g. `..._2.5x_14d`)."""
    return F.col(f"`{name}`")


def _range_sum(value: Column, window: Window) -> Column:
    return F.coalesce(F.sum(value).over(window), F.lit(0.0))


def spark_features(transactions: DataFrame, settings: FeatureSettings) -> DataFrame:
    """`transaction_id`, `tx_datetime` and every feature of `feature_names(settings)` (doubles;
    NaN where build_features gives NaN) for every row of `read.read_transactions`' frame."""
    frame = transactions.withColumn(TIME_MS, F.expr("unix_micros(tx_datetime) div 1000"))
    if LABEL_COLUMN not in frame.columns:
        frame = frame.withColumn(LABEL_COLUMN, F.lit(None).cast("double"))
    frame = _customer_features(frame, settings)
    frame = _terminal_features(frame, settings)
    frame = frame.withColumn(
        "tx_during_weekend", F.dayofweek("tx_datetime").isin(1, 7).cast("double")
    ).withColumn(
        "tx_during_night", (F.hour("tx_datetime") <= settings.night_last_hour).cast("double")
    )
    names = feature_names(settings)
    return frame.select(
        "transaction_id", "tx_datetime", *[col(n).cast("double").alias(n) for n in names]
    )


def _customer_features(frame: DataFrame, settings: FeatureSettings) -> DataFrame:
    by_time = Window.partitionBy("customer_id").orderBy(TIME_MS)
    # the card's transactions at this same millisecond that come later in input order
    later_ties = (
        Window.partitionBy("customer_id", TIME_MS)
        .orderBy(*ORDER)
        .rowsBetween(1, Window.unboundedFollowing)
    )
    amount = F.col("tx_amount")
    frame = frame.withColumn("_later_n", F.count(F.lit(1)).over(later_ties)).withColumn(
        "_later_sum", _range_sum(amount, later_ties)
    )
    longest = max(settings.customer_windows_days)
    for window in settings.customer_windows_days:
        span = by_time.rangeBetween(-(window * DAY_MS - 1), 0)
        count = F.count(F.lit(1)).over(span) - F.col("_later_n")
        total = _range_sum(amount, span) - F.col("_later_sum")
        frame = frame.withColumn(f"_n_{window}", count.cast("double")).withColumn(
            f"_sum_{window}", total
        )
        frame = frame.withColumn(f"customer_nb_tx_{window}d", F.col(f"_n_{window}")).withColumn(
            f"customer_avg_amount_{window}d", F.col(f"_sum_{window}") / F.col(f"_n_{window}")
        )
    prior_count = F.col(f"_n_{longest}") - 1
    prior_total = F.col(f"_sum_{longest}") - amount
    ratio = F.when(
        (prior_count > 0) & (prior_total > MIN_PRIOR_SPEND), amount * prior_count / prior_total
    )
    frame = frame.withColumn(f"amount_to_customer_avg_{longest}d", ratio)
    if settings.large_amount_ratios:
        frame = _large_amounts(frame, settings, f"amount_to_customer_avg_{longest}d")
    if settings.customer_amount_quantiles:
        frame = _amount_quantiles(frame, settings)
    return frame


def _earlier(rows: str) -> str:
    """SQL: the elements of `rows` (structs of time and input order) before this row."""
    t, file, row = TIME_MS, *ORDER
    return (
        f"filter({rows}, x -> x.{t} < {t} OR (x.{t} = {t} AND (x.{file} < {file}"
        f" OR (x.{file} = {file} AND x.{row} < {row}))))"
    )


def _amount_quantiles(frame: DataFrame, settings: FeatureSettings) -> DataFrame:
    """The amount against each quantile (linear interpolation) of the card's earlier amounts of
    its longest window, as `features.window_quantiles` computes it."""
    window_ms = max(settings.customer_windows_days) * DAY_MS
    span = Window.partitionBy("customer_id").orderBy(TIME_MS).rangeBetween(-(window_ms - 1), 0)
    rows = F.collect_list(F.struct(TIME_MS, *ORDER, "tx_amount")).over(span)
    frame = frame.withColumn("_card_rows", rows).withColumn(
        "_earlier", F.expr(f"array_sort(transform({_earlier('_card_rows')}, x -> x.tx_amount))")
    )
    count = F.size("_earlier")
    for q, name in zip(settings.customer_amount_quantiles, quantile_names(settings)):
        position = F.lit(q) * (count - 1)
        below = F.floor(position)
        above = F.least(below + 1, count - 1)
        # element_at counts from 1 and refuses 0, even for an empty list the ratio leaves out
        low = F.element_at("_earlier", F.greatest(below + 1, F.lit(1)).cast("int"))
        high = F.element_at("_earlier", F.greatest(above + 1, F.lit(1)).cast("int"))
        reference = low + (high - low) * (position - below)
        ratio = F.when((count > 0) & (reference > MIN_PRIOR_SPEND), F.col("tx_amount") / reference)
        frame = frame.withColumn(name, ratio)
    return frame.drop("_card_rows", "_earlier")


def _large_amounts(frame: DataFrame, settings: FeatureSettings, ratio_name: str) -> DataFrame:
    """Earlier transactions of the card in (t - W, t] (this one and later ties excluded) whose
    own ratio was above each threshold."""
    window_ms = settings.large_amount_window_days * DAY_MS
    span = Window.partitionBy("customer_id").orderBy(TIME_MS).rangeBetween(-(window_ms - 1), 0)
    self_and_later = (
        Window.partitionBy("customer_id", TIME_MS)
        .orderBy(*ORDER)
        .rowsBetween(0, Window.unboundedFollowing)
    )
    ratio = F.coalesce(F.col(ratio_name), F.lit(0.0))
    for threshold in settings.large_amount_ratios:
        name = f"customer_nb_large_amounts_{threshold:g}x_{settings.large_amount_window_days}d"
        hit = (ratio > threshold + RATIO_MARGIN).cast("double")
        frame = frame.withColumn(f"_hit_{name}", hit)
        frame = frame.withColumn(
            name,
            _range_sum(col(f"_hit_{name}"), span) - _range_sum(col(f"_hit_{name}"), self_and_later),
        )
    return frame


def _terminal_features(frame: DataFrame, settings: FeatureSettings) -> DataFrame:
    delay_ms = settings.label_delay_days * DAY_MS
    by_time = Window.partitionBy("terminal_id").orderBy(TIME_MS)
    label = F.col(LABEL_COLUMN)
    labelled = label.isNotNull().cast("double")
    fraud = F.coalesce(label, F.lit(0.0))
    for window in settings.terminal_windows_days:
        span = by_time.rangeBetween(-(delay_ms + window * DAY_MS) + 1, -delay_ms)
        known = _range_sum(labelled, span)
        frauds = _range_sum(fraud, span)
        frame = frame.withColumn(
            f"terminal_nb_tx_{window}d", F.count(F.lit(1)).over(span).cast("double")
        ).withColumn(
            f"terminal_risk_{window}d", F.when(known > 0, frauds / known).otherwise(F.lit(0.0))
        )
    half_life = settings.terminal_risk_half_life_days
    if half_life is not None:
        longest = max(settings.terminal_windows_days)
        span = by_time.rangeBetween(-(delay_ms + longest * DAY_MS) + 1, -delay_ms)
        matured = F.collect_list(F.struct(F.col(TIME_MS).alias("t"), label.alias("y"))).over(span)
        weight = f"pow(2D, -CAST({TIME_MS} - x.t AS DOUBLE) / {float(half_life * DAY_MS)!r})"
        sums = (
            "aggregate(filter(_matured, x -> x.y IS NOT NULL), named_struct('w', 0D, 'f', 0D),"
            f" (acc, x) -> named_struct('w', acc.w + {weight},"
            f" 'f', acc.f + {weight} * x.y))"
        )
        frame = frame.withColumn("_matured", matured).withColumn("_sums", F.expr(sums))
        frame = frame.withColumn(
            f"terminal_risk_half_life_{half_life:g}d",
            F.when(F.col("_sums.w") > 0, F.col("_sums.f") / F.col("_sums.w")).otherwise(0.0),
        ).drop("_matured", "_sums")
    return frame
