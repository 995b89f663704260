"""Delay-aware time split: the training side sees only labels that would have matured."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pandas as pd

from pipelines.settings import TrainingSettings


@dataclass(frozen=True)
class Period:
    """Half-open day range [start, end)."""

    start: pd.Timestamp
    end: pd.Timestamp

    def mask(self, tx_datetime: pd.Series) -> pd.Series:
        return (tx_datetime >= self.start) & (tx_datetime < self.end)

    def as_dict(self, prefix: str) -> dict[str, str]:
        return {
            f"{prefix}_start": self.start.date().isoformat(),
            f"{prefix}_end": self.end.date().isoformat(),
        }


@dataclass(frozen=True)
class TrainingWindows:
    train: Period
    validation: Period
    test: Period

    def as_dict(self) -> dict[str, str]:
        return {
            **self.train.as_dict("train"),
            **self.validation.as_dict("validation"),
            **self.test.as_dict("test"),
        }


def day_after_last(tx_datetime: pd.Series) -> pd.Timestamp:
    """The exclusive end of the data: midnight after its last transaction."""
    return tx_datetime.max().floor("D") + pd.Timedelta(days=1)


def layout_windows(
    data_start: pd.Timestamp, data_end: pd.Timestamp, settings: TrainingSettings, delay_days: int
) -> TrainingWindows:
    """[train][validation][delay][test], anchored at end_date, train_start or data_end.

    Validation follows training directly (its features use matured labels only); the delay
    gap before the test period is the one a deployed model lives with.
    """
    delay = pd.Timedelta(days=delay_days)
    lengths = (
        pd.Timedelta(days=settings.train_days),
        pd.Timedelta(days=settings.validation_days),
        pd.Timedelta(days=settings.test_days),
    )
    if settings.train_start is not None:
        start = _midnight(settings.train_start)
        end = start + lengths[0] + lengths[1] + delay + lengths[2]
    else:
        end = _midnight(settings.end_date) if settings.end_date is not None else data_end
        start = end - lengths[2] - delay - lengths[1] - lengths[0]
    train = Period(start, start + lengths[0])
    validation = Period(train.end, train.end + lengths[1])
    test = Period(validation.end + delay, validation.end + delay + lengths[2])
    if train.start < data_start.floor("D") or test.end > data_end:
        raise ValueError(
            f"training windows {train.start.date()}..{test.end.date()} do not fit the data "
            f"({data_start.date()}..{(data_end - pd.Timedelta(days=1)).date()}): need "
            f"{(test.end - train.start).days} days; shorten training.train_days or move the anchor"
        )
    return TrainingWindows(train, validation, test)


def _midnight(day: date) -> pd.Timestamp:
    return pd.Timestamp(day).floor("D")


def layout_folds(
    data_start: pd.Timestamp,
    data_end: pd.Timestamp,
    settings: TrainingSettings,
    delay_days: int,
    folds: int,
    step_days: int,
) -> list[TrainingWindows]:
    """`folds` layouts of `layout_windows`, newest first, each `step_days` before the next
    (the backtest's fold step), every one checked to fit the data."""
    newest = layout_windows(data_start, data_end, settings, delay_days)
    layouts = []
    for fold in range(folds):
        shift = pd.Timedelta(days=fold * step_days)
        anchor = newest.test.end - shift
        anchored = settings.model_copy(update={"end_date": anchor.date(), "train_start": None})
        try:
            layouts.append(layout_windows(data_start, data_end, anchored, delay_days))
        except ValueError as exc:
            raise ValueError(f"fold {fold} of {folds}, {step_days} days apart: {exc}") from None
    return layouts
